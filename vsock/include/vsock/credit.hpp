#pragma once
// Credit-based flow control of one connection the daemon terminates (virtio spec 5.10.6.3
// "Buffer Space Management"; Linux net/vmw_vsock/virtio_transport_common.c).
//
// Both directions, from the daemon's side:
//  - guest -> host, the daemon receives: it advertises buf_alloc (the connection's tx
//    buffer size) and fwd_cnt, the free-running count of guest bytes that have reached the
//    host socket. The guest may have at most buf_alloc - (its tx_cnt - fwd_cnt) bytes in
//    flight; a guest that sends more breaks the protocol.
//  - host -> guest, the daemon sends: it may send at most
//    peer_buf_alloc - (tx_cnt - peer_fwd_cnt) bytes, from the guest's latest advertisement.
// All counters are u32 and wrap; differences are taken mod 2^32 as the spec does.
#include <cstdint>

namespace vsock {

class Credit {
 public:
  explicit Credit(std::uint32_t buf_alloc) : buf_alloc_(buf_alloc) {}

  // --- guest -> host: the daemon is the receiver -----------------------------------------

  [[nodiscard]] std::uint32_t buf_alloc() const { return buf_alloc_; }
  [[nodiscard]] std::uint32_t fwd_cnt() const { return fwd_cnt_; }
  /// Guest bytes received and not yet forwarded to the host socket.
  [[nodiscard]] std::uint32_t buffered() const { return rx_cnt_ - fwd_cnt_; }

  /// Whether `n` more guest bytes fit the credit the guest was given. A guest that sends
  /// beyond it violates the spec ("MUST NOT send more than peer_free"); Linux drops such
  /// data silently, the daemon resets the connection instead of corrupting the stream.
  [[nodiscard]] bool fits(std::uint32_t n) const { return n <= buf_alloc_ - buffered(); }
  void on_received(std::uint32_t n) { rx_cnt_ += n; }
  void on_forwarded(std::uint32_t n) { fwd_cnt_ += n; }

  /// A packet carrying fwd_cnt went to the guest: its view of our credit is now current.
  void on_advertised() { advertised_fwd_cnt_ = fwd_cnt_; }

  /// Whether to send a CREDIT_UPDATE now. Not after every forward (Linux optimised this
  /// away, and vhost-device-vsock measured the gain, rust-vmm/vhost-device#317), but as soon
  /// as the guest's view of the free space falls below a quarter of the buffer while newer
  /// progress exists: the guest learns of new room before it runs out.
  [[nodiscard]] bool update_due() const {
    const std::uint32_t unadvertised = fwd_cnt_ - advertised_fwd_cnt_;
    const std::uint32_t guest_view_used = rx_cnt_ - advertised_fwd_cnt_;
    const std::uint32_t guest_view_free = guest_view_used >= buf_alloc_ ? 0 : buf_alloc_ - guest_view_used;
    return unadvertised > 0 && guest_view_free < buf_alloc_ / 4;
  }

  // --- host -> guest: the daemon is the sender -------------------------------------------

  /// From every packet of the guest on this connection (spec: buf_alloc and fwd_cnt are
  /// valid in every packet).
  void on_peer_credit(std::uint32_t buf_alloc, std::uint32_t fwd_cnt) {
    peer_buf_alloc_ = buf_alloc;
    peer_fwd_cnt_ = fwd_cnt;
  }

  /// Bytes the daemon may send now. A fwd_cnt ahead of what was sent (a broken or hostile
  /// guest) makes the in-flight difference wrap beyond buf_alloc: that yields no credit
  /// rather than a huge one (Linux clamps the same way since "TX credit bounds").
  [[nodiscard]] std::uint32_t peer_free() const {
    const std::uint32_t in_flight = tx_cnt_ - peer_fwd_cnt_;
    return in_flight >= peer_buf_alloc_ ? 0 : peer_buf_alloc_ - in_flight;
  }
  void on_sent(std::uint32_t n) { tx_cnt_ += n; }
  [[nodiscard]] std::uint32_t peer_buf_alloc() const { return peer_buf_alloc_; }
  [[nodiscard]] std::uint32_t tx_cnt() const { return tx_cnt_; }

 private:
  std::uint32_t buf_alloc_;
  std::uint32_t rx_cnt_ = 0;
  std::uint32_t fwd_cnt_ = 0;
  std::uint32_t advertised_fwd_cnt_ = 0;
  std::uint32_t peer_buf_alloc_ = 0;
  std::uint32_t peer_fwd_cnt_ = 0;
  std::uint32_t tx_cnt_ = 0;
};

}  // namespace vsock
