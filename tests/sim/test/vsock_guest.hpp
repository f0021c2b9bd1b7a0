#pragma once
// The guest side of virtio-vsock (virtio 1.2, 5.10) for the simulator, enough to drive a
// vsock back-end through its rings the way Linux's net/vmw_vsock/virtio_transport*.c does:
//
//  - Packet: the 44-byte little-endian header (5.10.6), written here from the spec and not
//    taken from vsock/packet.hpp, so that the device and its tests cannot share a mistake.
//  - TxShape: how one tx packet lies in descriptors (header alone, header split, payload over
//    several buffers, an indirect table as Linux uses for every multi-buffer chain).
//  - Guest: the rx queue (device-writable buffers, refilled after use, every returned buffer
//    checked: used len is 0 for a buffer that cannot hold a header, else exactly 44 + hdr.len,
//    and dst_cid is the guest's), the tx queue (packets written into the chain's buffers
//    through the guest's own descriptor table), and a deadline-bounded wait on the interrupt
//    eventfds plus any host socket the test watches.
//  - Conn: one guest socket's ports and its credit bookkeeping both ways (5.10.6.3): what the
//    guest advertises (buf_alloc, fwd_cnt in every packet) and what the device advertised.
//    on_packet() checks that the device never sends more than the guest's credit.
//
// Single-threaded, like the rest of the simulator: the test thread drives everything.
#include <poll.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "vusim/driver.hpp"
#include "vusim/failure.hpp"
#include "vusim/guest_ram.hpp"
#include "vusim/vhost_dev.hpp"

namespace vusim::vsock_guest {

using Clock = std::chrono::steady_clock;

inline constexpr std::size_t header_size = 44;
inline constexpr std::uint64_t host_cid = 2;
/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE: the largest payload a Linux guest puts in one packet.
inline constexpr std::uint32_t max_payload = 64 * 1024;

inline constexpr std::uint16_t type_stream = 1;
inline constexpr std::uint16_t type_seqpacket = 2;

inline constexpr std::uint16_t op_invalid = 0;
inline constexpr std::uint16_t op_request = 1;
inline constexpr std::uint16_t op_response = 2;
inline constexpr std::uint16_t op_rst = 3;
inline constexpr std::uint16_t op_shutdown = 4;
inline constexpr std::uint16_t op_rw = 5;
inline constexpr std::uint16_t op_credit_update = 6;
inline constexpr std::uint16_t op_credit_request = 7;

inline constexpr std::uint32_t shutdown_rcv = 1;   ///< the sender will receive no more
inline constexpr std::uint32_t shutdown_send = 2;  ///< the sender will send no more
inline constexpr std::uint32_t flag_eom = 1;       ///< SEQPACKET: last fragment of a message
inline constexpr std::uint32_t flag_eor = 2;

/// Feature bit VIRTIO_VSOCK_F_SEQPACKET (5.10.3).
inline constexpr unsigned feature_seqpacket = 1;

struct Packet {
  std::uint64_t src_cid = 0;
  std::uint64_t dst_cid = 0;
  std::uint32_t src_port = 0;
  std::uint32_t dst_port = 0;
  std::uint32_t len = 0;  ///< the header field; send() does not fix it, so tests can lie
  std::uint16_t type = 0;
  std::uint16_t op = 0;
  std::uint32_t flags = 0;
  std::uint32_t buf_alloc = 0;
  std::uint32_t fwd_cnt = 0;
  std::vector<std::byte> payload;  ///< rx: the bytes after the header; tx: sent after it
};

std::array<std::byte, header_size> encode_header(const Packet& p);
Packet decode_header(std::span<const std::byte> bytes);  ///< the first 44 bytes
std::string op_name(std::uint16_t op);
std::string describe(const Packet& p);

/// The device-readable buffers one tx packet is written into, in chain order. Empty segments:
/// one buffer for the whole packet. The lengths must add up to 44 + payload size.
struct TxShape {
  std::vector<std::uint32_t> segments{};
  std::optional<std::size_t> indirect_from{};
  /// This segment lies across the boundary of two guest RAM regions (one at a time).
  std::optional<std::size_t> straddle{};
};

/// Header and payload in one buffer (Linux 6.3 and later for small packets, and crosvm).
TxShape one_buffer(std::size_t payload);
/// The header alone in its own descriptor, the payload in a second one (Linux before 6.3).
TxShape header_apart(std::size_t payload);
/// The header alone, then the payload in at most 32 KiB of linear buffer and 4 KiB page
/// fragments for the rest, all in an indirect table as Linux uses for any multi-buffer chain
/// once VIRTIO_F_INDIRECT_DESC is negotiated (6.12 non-linear skbs).
TxShape linux_paged(std::size_t payload);
/// The header cut in the middle (20 + 24 bytes), then the payload in two buffers with an
/// empty descriptor between them: a legal, if unusual, layout.
TxShape split_header(std::size_t payload);

/// One guest socket: its addresses and the credit state of both directions (5.10.6.3).
struct Conn {
  std::uint64_t cid = 3;
  std::uint32_t port = 0;       ///< the guest's port
  std::uint32_t peer_port = 0;  ///< the host's port
  std::uint64_t peer_cid = host_cid;  ///< the host, or a sibling VM
  std::uint16_t type = type_stream;

  // The guest as receiver.
  std::uint32_t buf_alloc = 256 * 1024;    ///< advertised in every packet
  std::uint32_t rx_cnt = 0;                ///< payload bytes received
  std::uint32_t fwd_cnt = 0;               ///< payload bytes the application consumed
  std::uint32_t advertised_fwd_cnt = 0;    ///< fwd_cnt of the last packet sent

  // The guest as sender.
  std::uint32_t tx_cnt = 0;
  std::uint32_t peer_buf_alloc = 0;
  std::uint32_t peer_fwd_cnt = 0;

  std::uint32_t peer_shutdown = 0;  ///< SHUTDOWN flags the device sent
  bool reset = false;               ///< the device sent RST

  /// Bytes the guest may send now: peer_buf_alloc - (tx_cnt - peer_fwd_cnt), 0 if the device
  /// claims more was forwarded than was sent.
  [[nodiscard]] std::uint32_t peer_free() const;
  /// Bytes received and not yet consumed.
  [[nodiscard]] std::uint32_t unconsumed() const { return rx_cnt - fwd_cnt; }
  /// Whether `p` (from the device) belongs to this socket.
  [[nodiscard]] bool matches(const Packet& p) const;

  /// A packet from this socket: addresses, type, len = payload size, and the guest's current
  /// buf_alloc and fwd_cnt (which counts as advertised). RW payload counts into tx_cnt.
  Packet make(std::uint16_t op, std::span<const std::byte> payload = {}, std::uint32_t flags = 0);
  /// Takes a device packet for this socket into account: its credit fields, RW bytes (which
  /// must fit the credit the guest advertised, or the result is the broken rule), SHUTDOWN
  /// flags, RST.
  Result<void> on_packet(const Packet& p);
  /// The application consumed `n` bytes.
  void consume(std::uint32_t n) { fwd_cnt += n; }
  /// Linux's rule (virtio_transport_do_dequeue): after a read, send a CREDIT_UPDATE when the
  /// free space the device knows of is below one maximum packet.
  [[nodiscard]] bool update_due() const;
};

class Guest {
 public:
  struct Options {
    std::uint64_t cid = 3;
    /// Device-writable layout of the buffer posted after each used rx buffer (Linux refills at
    /// once); empty function: no refill.
    std::function<ChainLayout()> refill = [] { return ChainLayout{.segments = {{.len = 4096}}}; };
  };

  /// `dev` must be started (its drivers exist): drivers[0] is rx, drivers[1] tx.
  Guest(VhostDev& dev, Options options);

  [[nodiscard]] Driver& rx() { return dev_.drivers.at(0); }
  [[nodiscard]] Driver& tx() { return dev_.drivers.at(1); }
  [[nodiscard]] std::uint64_t cid() const { return options_.cid; }
  void set_refill(std::function<ChainLayout()> refill) { options_.refill = std::move(refill); }

  /// Adds `count` rx chains of `layout` and kicks.
  Result<void> post_rx(std::size_t count, const ChainLayout& layout);
  /// Posts `count` single 4 KiB buffers.
  Result<void> post_rx(std::size_t count) { return post_rx(count, ChainLayout{.segments = {{.len = 4096}}}); }

  /// Sends one packet (header encoded from `p`, then p.payload) in the buffers of `shape`,
  /// waiting (up to `timeout`) for tx descriptors if the ring is full.
  Result<void> send(const Packet& p, const TxShape& shape = {},
                    std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));
  /// As send(), but returns false at once if the tx ring has no room.
  Result<bool> try_send(const Packet& p, const TxShape& shape = {});

  /// Waits until the device has returned every tx chain (their buffers are freed).
  Result<void> drain_tx(std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));
  /// Takes what the device returned: rx buffers are checked, parsed into the inbox and
  /// refilled; tx chains are reclaimed. True if anything came back.
  Result<bool> collect();
  /// Sleeps until an interrupt, an event on `extra`, or `deadline` (whichever is first),
  /// re-arming interrupts first as Linux does. Call after collect() found nothing to do.
  Result<void> wait(std::span<pollfd> extra, Clock::time_point deadline);
  /// The next packet from the device; Fault::timeout after `timeout`.
  Result<Packet> next(std::chrono::milliseconds timeout = std::chrono::milliseconds(10000));

  std::deque<Packet>& inbox() { return inbox_; }
  [[nodiscard]] std::uint64_t tx_completed() const { return tx_completed_; }
  [[nodiscard]] std::uint64_t rx_received() const { return rx_received_; }
  /// rx buffers returned unused (too small for a header).
  [[nodiscard]] std::uint64_t rx_small_returned() const { return rx_small_; }

 private:
  Result<bool> add_tx(const Packet& p, const TxShape& shape);
  Result<void> fill_chain(std::uint16_t head, std::span<const std::byte> bytes);

  VhostDev& dev_;
  GuestRam ram_;
  Options options_;
  std::deque<Packet> inbox_;
  std::uint64_t tx_completed_ = 0;
  std::uint64_t rx_received_ = 0;
  std::uint64_t rx_small_ = 0;
};

}  // namespace vusim::vsock_guest
