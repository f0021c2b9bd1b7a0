#pragma once
// One vsock connection the daemon terminates: a guest socket on one side, a host AF_UNIX
// socket on the other (hybrid vsock).
//
// The state machine follows Linux's virtio_transport_common.c, seen from the host end:
//
//   requesting_guest --RESPONSE--> established          (host-initiated: CONNECT <port>)
//   (guest REQUEST, host connect() succeeded) -> established, RESPONSE owed
//   established: RW both ways under credit; SHUTDOWN flags accumulate per direction
//   any state --RST from guest, socket error, timeout--> closed (RST owed unless the guest sent it)
//
// Half-close maps one to one: the guest's SHUTDOWN(SEND) becomes shutdown(SHUT_WR) on the host
// socket once the buffered data is written; the host's EOF becomes SHUTDOWN(SEND) to the
// guest, and the other direction keeps working. Both directions closed ends in RST (spec
// 5.10.6.6: the clean end of a connection is SHUTDOWN then RST).
//
// The connection does its own socket I/O (non-blocking, straight between guest memory and
// the socket), but no event-loop work: it says what it wants (want_read/want_write,
// has_rx, deadline) and the owner arms watchers and timers accordingly.
#include <chrono>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "vhostuser/unique_fd.hpp"
#include "virtio/chain_io.hpp"
#include "virtio/descriptor_chain.hpp"
#include "vsock/counters.hpp"
#include "vsock/credit.hpp"
#include "vsock/packet.hpp"
#include "vsock/tx_buffer.hpp"

namespace vsock {

class Connection {
 public:
  using Clock = std::chrono::steady_clock;

  enum class State {
    requesting_guest,  ///< host-initiated: REQUEST owed or sent, waiting for RESPONSE
    established,
    closed,            ///< nothing more happens; the owner removes it once no RST is owed
  };

  /// `local` is the host end (cid 2), `peer` the guest end.
  struct Endpoints {
    Address local;
    Address peer;
    Type type;
  };

  /// Per-connection limits and timeouts (from DeviceConfig).
  struct Limits {
    std::uint32_t buf_alloc;                       ///< guest -> host buffer, advertised
    std::chrono::milliseconds connect_timeout;     ///< REQUEST delivered -> RESPONSE
    std::chrono::milliseconds shutdown_timeout;    ///< guest closed -> buffered data flushed
    std::chrono::milliseconds guest_ready_timeout; ///< host client waits for the guest driver
  };

  /// A host-initiated connection: the host client's socket after its CONNECT line.
  static Connection from_host(Endpoints ends, vhostuser::UniqueFd socket, const Limits& limits);
  /// A guest-initiated connection: `socket` is connected to "<uds>_<port>"; a RESPONSE is owed.
  static Connection from_guest(Endpoints ends, vhostuser::UniqueFd socket, const Limits& limits,
                               const Header& request);

  Connection(Connection&&) noexcept = default;
  Connection& operator=(Connection&&) noexcept = default;

  [[nodiscard]] const Endpoints& endpoints() const { return ends_; }
  [[nodiscard]] State state() const { return state_; }
  [[nodiscard]] int fd() const { return socket_.get(); }
  [[nodiscard]] const Credit& credit() const { return credit_; }
  /// Packets of this connection (those that reached it: a packet refused before it found
  /// the connection is counted by the device only).
  [[nodiscard]] const ConnectionCounters& counters() const { return counters_; }

  /// A packet of the guest for this connection; `payload` reads its hdr.len bytes.
  void on_guest_packet(const Header& packet, virtio::ChainReader& payload);

  /// The host socket has data (or EOF) to read: the next RX buffer may carry it.
  void on_host_readable() { host_readable_ = true; }
  /// The host socket accepts data again: flush what is buffered.
  void on_host_writable();
  /// A deadline passed (see deadline()).
  void on_deadline();
  /// The device goes away (front-end gone, guest driver reset): close the host socket.
  void abort(const char* why);
  /// The guest broke the protocol on this connection (e.g. a malformed packet the device
  /// refused): close the host socket and owe the guest an RST.
  void reset(std::string why);

  /// Whether an RX packet is owed now (control packet, or host data with credit).
  [[nodiscard]] bool has_rx() const;
  /// Writes one packet into the device-writable buffers of `rx` (header, then payload cut to
  /// what the buffers hold: never more than the chain's real writable size). Returns the
  /// bytes written (the used length, 44 + hdr.len), or nothing if there was nothing to send
  /// after all (the socket had no data): the caller may use the buffer for someone else.
  /// The chain must have room for a header.
  std::optional<std::uint32_t> produce_rx(const virtio::DescriptorChain& rx);

  [[nodiscard]] bool want_read() const;
  /// Only bytes that can go now count: an unfinished SEQPACKET message waits for its EOM,
  /// not for the socket, and watching for writability meanwhile would spin.
  [[nodiscard]] bool want_write() const { return state_ != State::closed && flushable_tx_bytes() > 0; }
  [[nodiscard]] std::optional<Clock::time_point> deadline() const { return deadline_; }
  /// Done: closed, nothing owed to the guest. The owner may drop it.
  [[nodiscard]] bool finished() const { return state_ == State::closed && !owe_rst_; }

  /// Bytes held for the host socket (stream ring buffer or seqpacket messages, including
  /// the fragments of an unfinished message).
  [[nodiscard]] std::size_t pending_tx_bytes() const;
  /// Of those, the bytes the socket could take now (stream bytes, whole messages).
  [[nodiscard]] std::size_t flushable_tx_bytes() const;

  /// Last reason the connection closed, for logs.
  [[nodiscard]] const std::string& close_reason() const { return close_reason_; }

 private:
  Connection(Endpoints ends, vhostuser::UniqueFd socket, const Limits& limits, State state);

  Header reply_header(Op op, std::uint32_t len = 0, std::uint32_t flags = 0) const;
  /// Writes `h` at the start of `rx`; every packet carries fwd_cnt, so it also advertises.
  std::uint32_t emit(const virtio::DescriptorChain& rx, const Header& h);
  void on_rw(const Header& packet, virtio::ChainReader& payload);
  void on_shutdown(std::uint32_t flags);
  /// Writes guest bytes to the host socket, buffering what it does not take.
  bool forward(virtio::ChainReader& payload, std::uint32_t len);
  bool flush();
  void send_seqpacket_messages();
  void maybe_finish_host_write_side();
  [[nodiscard]] bool data_ready() const;
  std::optional<std::uint32_t> produce_data(const virtio::DescriptorChain& rx);
  std::optional<std::uint32_t> produce_seqpacket_data(const virtio::DescriptorChain& rx);
  void close_with_rst(std::string why);
  void close_quietly(std::string why);

  Endpoints ends_;
  vhostuser::UniqueFd socket_;
  Limits limits_;
  State state_;
  Credit credit_;
  TxBuffer tx_;
  ConnectionCounters counters_;

  // Control packets owed to the guest, each at most once (Cloud Hypervisor's PendingRx idea).
  bool owe_request_ = false;
  bool owe_response_ = false;
  bool owe_rst_ = false;
  bool owe_credit_request_ = false;
  bool owe_credit_update_ = false;
  std::uint32_t owe_shutdown_ = 0;     // SHUTDOWN flags not yet sent
  bool credit_requested_ = false;      // a CREDIT_REQUEST is outstanding

  // Half-close state per direction.
  std::uint32_t guest_shutdown_ = 0;   // flags the guest sent (accumulated)
  bool host_eof_ = false;              // the host socket read EOF
  bool host_write_shut_ = false;       // shutdown(SHUT_WR) done on the host socket
  bool host_readable_ = false;

  // SEQPACKET: messages in both directions keep their boundaries.
  std::vector<std::byte> g2h_message_;                // fragments of the guest's current message
  std::deque<std::vector<std::byte>> g2h_complete_;   // whole messages waiting for the socket
  std::vector<std::byte> h2g_message_;                // host message being sent in fragments
  std::size_t h2g_offset_ = 0;

  std::optional<Clock::time_point> deadline_;
  std::string close_reason_;
};

}  // namespace vsock
