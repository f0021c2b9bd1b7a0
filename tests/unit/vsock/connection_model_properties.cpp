// One terminated connection on random sequences of events, checked against a small reference
// model of what the guest and the host application may observe (rapidcheck).
//
// The connection is driven the way HostSide drives it: guest packets as the device hands them
// over (already validated: right addresses and type, len within the chain and 64 KiB), RX
// buffers of any size >= 44, the socket watchers armed after every step from want_read() /
// want_write() and fired only when the socket really is ready, and the timer. The host
// application holds the other end of an AF_UNIX socket pair with small buffers, so the
// daemon's socket blocks and the connection's own buffer is used.
//
// The model relies on nothing inside the connection: it knows what the guest sent and heard,
// what the application wrote and read, and measures what reached the host socket from the
// application's side (bytes read + FIONREAD); the connection's public answers (state(),
// has_rx(), finished(), pending_tx_bytes(), credit().fwd_cnt()) are checked against that,
// after every step. The rules come from Linux
// net/vmw_vsock/virtio_transport_common.c (the guest's peer), the virtio spec 5.10.6 and the
// contracts in connection.hpp / credit.hpp; each check cites its rule. Where Linux and the
// daemon may both be right (e.g. an op Linux ignores and the daemon treats as a protocol
// error), the model allows both and follows what happened.
//
// Deterministic: no sleeps. Timeouts are 0 ms (due at once) or an hour (never due), so
// on_deadline's clock check has one answer.
#include <gtest/gtest.h>
#include <poll.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <numeric>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "guest_packets.hpp"
#include "vsock/connection.hpp"

namespace vsock {
namespace {

using namespace std::chrono_literals;
using vhostuser::UniqueFd;
using State = Connection::State;

constexpr Address host_end{cid_host, (1u << 30) + 7};
constexpr Address guest_end{3, 5000};
constexpr std::uint32_t header_size = sizeof(WireHeader);
constexpr std::uint32_t max_payload = 64 * 1024;  // the device refuses bigger tx packets
constexpr std::uint16_t op(Op o) { return static_cast<std::uint16_t>(o); }

// Position-dependent bytes: a byte delivered twice, out of order or from the other direction
// does not compare equal.
std::byte g2h_byte(std::uint64_t i) { return static_cast<std::byte>((i * 131 + (i >> 8) + 17) & 0xff); }
std::byte h2g_byte(std::uint64_t i) { return static_cast<std::byte>((i * 197 + (i >> 9) + 91) & 0xff); }

void expect(bool ok, const char* rule) {
  if (!ok) RC_FAIL(rule);
}

template <class T>
T pick(std::initializer_list<T> values) {
  return *rc::gen::elementOf(std::vector<T>(values));
}

/// What asio's reactor would report: readiness, or hang-up/error (which wake both waits).
bool ready(int fd, short events) {
  pollfd p{fd, events, 0};
  return ::poll(&p, 1, 0) == 1 && (p.revents & (events | POLLHUP | POLLERR)) != 0;
}

std::uint64_t unread_bytes(int fd) {
  int n = 0;
  RC_ASSERT(::ioctl(fd, FIONREAD, &n) == 0);  // AF_UNIX: every queued byte, stream or seqpacket
  return static_cast<std::uint64_t>(n);
}

struct Setup {
  bool from_host = false;
  Type type = Type::stream;
  std::uint32_t buf_alloc = 4096;        // the daemon's (--tx-buffer-size >= 4096), advertised
  std::uint32_t guest_buf_alloc = 4096;  // the guest's, advertised in its packets
  int sndbuf = 2048;                     // SO_SNDBUF/SO_RCVBUF of both ends (AF_UNIX: the sender's counts)
  bool zero_guest_ready = false;         // each timeout 0 ms (due at once) or 1 h (never)
  bool zero_connect = false;
  bool zero_shutdown = false;
};

Setup gen_setup(bool timeouts) {
  Setup s;
  s.from_host = *rc::gen::arbitrary<bool>();
  s.type = pick({Type::stream, Type::seqpacket});
  s.buf_alloc = *rc::gen::inRange<std::uint32_t>(4096, 24 * 1024);
  s.guest_buf_alloc = pick<std::uint32_t>({128, 1000, 4096, 16384, 65536});
  // A SOCK_SEQPACKET message larger than the sender's buffer fails with EMSGSIZE, so there
  // the buffer holds the largest guest message (buf_alloc); the socket still blocks after a
  // couple of unread messages.
  s.sndbuf = s.type == Type::stream ? *rc::gen::inRange(1024, 8192) : static_cast<int>(s.buf_alloc);
  if (timeouts) {  // mostly long: a due timeout ends the run early
    s.zero_guest_ready = *rc::gen::inRange(0, 4) == 0;
    s.zero_connect = *rc::gen::inRange(0, 4) == 0;
    s.zero_shutdown = *rc::gen::inRange(0, 3) == 0;
  }
  return s;
}

class World {
 public:
  enum class M { requesting, established, closed };

  explicit World(const Setup& s) : s_(s), guest_buf_(s.guest_buf_alloc) {
    int sv[2];
    RC_ASSERT(::socketpair(AF_UNIX, (seq() ? SOCK_SEQPACKET : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0);
    UniqueFd daemon_end{sv[0]};
    app_ = UniqueFd{sv[1]};
    for (int fd : sv) {
      RC_ASSERT(::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &s.sndbuf, sizeof s.sndbuf) == 0);
      RC_ASSERT(::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &s.sndbuf, sizeof s.sndbuf) == 0);
    }
    int effective = 0;
    socklen_t len = sizeof effective;
    RC_ASSERT(::getsockopt(sv[1], SOL_SOCKET, SO_SNDBUF, &effective, &len) == 0);
    max_app_message_ = static_cast<std::size_t>(effective) - 64;
    if (seq()) RC_ASSERT(max_app_message_ >= s.buf_alloc);

    const auto timeout = [](bool zero) { return zero ? std::chrono::milliseconds{0} : std::chrono::milliseconds{1h}; };
    const Connection::Limits limits{s.buf_alloc, timeout(s.zero_connect), timeout(s.zero_shutdown),
                                    timeout(s.zero_guest_ready)};
    const Connection::Endpoints ends{host_end, guest_end, s.type};
    RC_LOG() << (s.from_host ? "host" : "guest") << "-initiated " << (seq() ? "seqpacket" : "stream") << ", buf_alloc "
             << s.buf_alloc << ", guest buf_alloc " << s.guest_buf_alloc << ", sndbuf " << s.sndbuf
             << ", 0 ms timeouts: guest_ready " << s.zero_guest_ready << " connect " << s.zero_connect << " shutdown "
             << s.zero_shutdown << "\n";
    if (s.from_host) {
      conn_.emplace(Connection::from_host(ends, std::move(daemon_end), limits));
      m_ = M::requesting;
    } else {
      const Header request = guest_header(op(Op::request), 0, 0);
      conn_.emplace(Connection::from_guest(ends, std::move(daemon_end), limits, request));
      m_ = M::established;
      adv_buf_ = request.buf_alloc;
      adv_fwd_ = request.fwd_cnt;
    }
    sync();
    check();
  }

  // --- what the test may ask --------------------------------------------------------------

  [[nodiscard]] const Setup& setup() const { return s_; }
  [[nodiscard]] bool seq() const { return s_.type == Type::seqpacket; }
  [[nodiscard]] bool aborted() const { return aborted_; }
  [[nodiscard]] bool request_seen() const { return request_seen_; }
  [[nodiscard]] M model() const { return m_; }
  /// The guest may exchange data: established, and (guest-initiated) it has the RESPONSE.
  [[nodiscard]] bool talking() const { return m_ == M::established && (s_.from_host || response_seen_); }
  [[nodiscard]] std::uint32_t guest_shut() const { return guest_shut_; }
  [[nodiscard]] bool partial_guest_message() const { return !g_partial_.empty(); }
  [[nodiscard]] std::size_t max_app_message() const { return max_app_message_; }
  [[nodiscard]] std::uint64_t unconsumed() const { return guest_received_ - guest_consumed_; }

  /// Guest -> host credit as the guest knows it from the daemon's packets (spec 5.10.6.3).
  [[nodiscard]] std::uint64_t view_credit() const {
    const std::uint64_t used = g_tx_ - seen_fwd_;
    return used >= seen_buf_ ? 0 : seen_buf_ - used;
  }

  // --- guest events -----------------------------------------------------------------------

  /// A guest packet as the device hands it over. `len` bytes of payload follow.
  void guest_packet(std::uint16_t raw_op, std::uint32_t len = 0, std::uint32_t flags = 0) {
    if (aborted_) return;
    const Header h = guest_header(raw_op, len, flags);
    std::vector<std::byte> payload(len);
    for (std::uint32_t i = 0; i < len; ++i) payload[i] = g2h_byte(g_tx_ + i);
    const std::uint64_t buffered = pending();  // before the packet: what the credit covers
    const bool was_closed = m_ == M::closed;
    RC_LOG() << "guest: " << describe(h) << "\n";
    {
      auto chain = guest_.tx(h, payload);
      virtio::ChainReader reader(chain);
      RC_ASSERT(static_cast<bool>(reader.skip(header_size)));
      conn_->on_guest_packet(h, reader);
    }
    if (was_closed) return settle(Allowed::stay, "a closed connection ignores the guest");
    adv_buf_ = h.buf_alloc;  // spec: buf_alloc and fwd_cnt are valid in every packet
    adv_fwd_ = h.fwd_cnt;

    if (m_ == M::requesting) {
      // Linux virtio_transport_recv_connecting.
      if (h.is(Op::response)) {
        if (app_closed_) return settle(Allowed::rst, "RESPONSE for a host client that went away: RST");
        // Nothing but the OK line is ever written to the socket while connecting.
        const std::string line = "OK " + std::to_string(host_end.port) + "\n";
        if (raw_reached() > 0) {
          expect(raw_reached() == line.size(), "the host client gets exactly \"OK <host port>\\n\"");
          ok_len_ = line.size();
          expect_app(std::as_bytes(std::span(line)), true);
        }
        m_ = M::established;
        if (request_seen_) {
          expect(ok_len_ > 0, "RESPONSE connects: the host client gets its OK line");
          return settle(Allowed::stay, "RESPONSE connects (virtio_transport_recv_connecting)");
        }
        // A RESPONSE to a REQUEST the guest never got (it guessed the host port): connecting
        // and calling it a protocol error are both fair; sending the REQUEST after it is not.
        if (conn_->state() != State::closed) expect(ok_len_ > 0, "RESPONSE connects: the host client gets its OK line");
        return settle(Allowed::stay_or_rst, "a RESPONSE before the REQUEST was delivered: connected or RST");
      }
      if (h.is(Op::rst)) {
        guest_reset_ = true;
        return settle(Allowed::quiet, "RST refuses the connection: closed, and no RST for an RST");
      }
      if (h.is(Op::invalid)) return settle(Allowed::stay_or_rst, "INVALID while connecting: Linux ignores it");
      return settle(Allowed::rst, "anything else while connecting is a protocol error: RST (EPROTO in Linux)");
    }

    switch (h.operation()) {
      case Op::rw: return guest_rw(h, payload, buffered);
      case Op::shutdown: {
        const std::uint32_t before = guest_shut_;
        guest_shut_ |= h.flags & shutdown_flag::both;  // flags accumulate (Linux: peer_shutdown |=)
        if ((before & shutdown_flag::send) == 0 && (guest_shut_ & shutdown_flag::send) != 0 && !g_partial_.empty()) {
          // A SEQPACKET message whose EOM can no longer come is delivered whole or not at
          // all: not at all. Its bytes count as consumed (the credit must not leak).
          dropped_ += g_partial_.size();
          g_partial_.clear();
        }
        return settle(Allowed::stay, "SHUTDOWN half-closes; both ways closed waits for the data");
      }
      case Op::rst:
        guest_reset_ = true;
        return settle(Allowed::quiet, "RST from the guest closes quietly (never answer an RST)");
      case Op::credit_update: return settle(Allowed::stay, "CREDIT_UPDATE only updates the credit");
      case Op::credit_request:
        credit_request_pending_ = true;
        return settle(Allowed::stay, "CREDIT_REQUEST is answered, not a reason to close");
      default:
        // Linux virtio_transport_recv_connected ignores REQUEST, RESPONSE, INVALID and unknown
        // ops on a connected socket; the daemon may also call them protocol errors.
        return settle(Allowed::stay_or_rst, "an unexpected op on an open connection: ignored or RST");
    }
  }

  /// The guest application reads `n` of the bytes it received: its fwd_cnt advances, and
  /// its next packet tells the daemon.
  void guest_consume(std::uint64_t n) {
    n = std::min(n, unconsumed());
    guest_consumed_ += n;
    RC_LOG() << "guest consumes " << n << "\n";
  }

  /// Linux answers a CREDIT_REQUEST at once with a CREDIT_UPDATE.
  void answer_credit_request() {
    if (!daemon_asked_credit_ || !talking()) return;
    daemon_asked_credit_ = false;
    guest_packet(op(Op::credit_update));
  }

  /// A broken or hostile guest claims to have consumed `ahead` bytes more than it was sent.
  /// The credit stays what the spec's u32 formula says (credit.hpp: no huge credit).
  void guest_overstates_fwd_cnt(std::uint32_t ahead) {
    fwd_lie_ = static_cast<std::uint32_t>(guest_received_ - guest_consumed_) + ahead;
    guest_packet(op(Op::credit_update));
    fwd_lie_ = 0;
  }

  /// The guest changes its buffer size (SO_VM_SOCKETS_BUFFER_SIZE); its next packet says so.
  void set_guest_buf_alloc(std::uint32_t v) {
    guest_buf_ = v;
    RC_LOG() << "guest buf_alloc " << v << "\n";
  }

  /// An RX buffer of `sizes` descriptors the guest posted. Returns whether a packet came.
  bool produce(const std::vector<std::uint32_t>& sizes) {
    if (aborted_) return false;
    const bool had_rx = conn_->has_rx();
    // Reasons the connection may close while producing: socket errors once the application
    // closed, a host message the guest's whole buffer could not hold.
    const bool may_close = app_closed_ || oversized_host_message();
    auto chain = guest_.rx(sizes);
    const auto used = conn_->produce_rx(chain);
    if (!used) {
      settle(may_close ? Allowed::stay_or_rst : Allowed::stay, "produce_rx without a packet changes no state");
      return false;
    }
    expect(had_rx, "produce_rx wrote a packet while has_rx() said none was owed: the owner would never ask");
    const auto capacity = std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0});
    expect(*used >= header_size && *used <= capacity, "used length within the buffer, at least a header");
    auto [h, payload] = guest_.read_rx(chain, *used);
    RC_LOG() << "  -> " << describe(h) << "\n";
    expect(*used == header_size + h.len, "used length is 44 + hdr.len");
    on_packet(h, payload, may_close);
    settle(Allowed::stay, "the state after a packet is what the packet said");
    return true;
  }

  // --- host application events ------------------------------------------------------------

  void app_write(std::size_t n) {
    if (aborted_ || app_closed_ || app_shut_wr_ || n == 0) return;
    std::vector<std::byte> bytes(n);
    for (std::size_t i = 0; i < n; ++i) bytes[i] = h2g_byte(h2g_written_ + i);
    const ssize_t r = ::send(app_.get(), bytes.data(), n, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (r < 0) {
      RC_LOG() << "app write " << n << ": " << std::strerror(errno) << "\n";
      expect(errno == EAGAIN || (errno == EPIPE && m_ == M::closed),
             "the host app's writes fail only once the connection closed (else they wait)");
      return;
    }
    RC_LOG() << "app writes " << r << " of " << n << "\n";
    const auto got = static_cast<std::size_t>(r);
    h2g_written_ += got;
    if (seq()) {
      expect(got == n, "a SEQPACKET message is sent whole");
      app_msgs_.push_back(std::move(bytes));
    } else {
      app_bytes_.insert(app_bytes_.end(), bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(got));
    }
    sync();
    check();
  }

  /// The host application reads up to `max` bytes (one message for SEQPACKET). Returns
  /// whether data came.
  bool app_read(std::size_t max) {
    if (aborted_ || app_closed_) return false;
    std::vector<std::byte> buf(seq() ? 256 * 1024 : max);
    const ssize_t r = ::recv(app_.get(), buf.data(), buf.size(), MSG_DONTWAIT | (seq() ? MSG_TRUNC : 0));
    if (r < 0) {
      expect(errno == EAGAIN, "the host app's reads only ever wait (no error)");
      return false;
    }
    if (r == 0) {
      if (!app_eof_) RC_LOG() << "app reads EOF\n";
      expect(m_ == M::closed || ((guest_shut_ & shutdown_flag::send) != 0 && app_has_all()),
             "EOF for the host app only after the guest's SHUTDOWN(SEND) and its last byte, or once closed");
      app_eof_ = true;
      return false;
    }
    RC_LOG() << "app reads " << r << "\n";
    expect(!app_eof_, "no data after EOF");
    const auto n = static_cast<std::size_t>(r);
    if (seq()) {
      expect(app_msgs_got_ < app_expect_msgs_.size(), "the host app gets only messages the guest completed (EOM)");
      const auto& m = app_expect_msgs_[app_msgs_got_++];
      expect(n == m.size() && std::equal(m.begin(), m.end(), buf.begin()),
             "each host message is one whole guest message, in order (spec 5.10.6.4.1)");
    } else {
      expect(app_got_ + n <= app_expect_.size() &&
                 std::equal(buf.begin(), buf.begin() + r, app_expect_.begin() + static_cast<std::ptrdiff_t>(app_got_)),
             "the host app reads the guest's bytes in order, once (after the OK line)");
      app_got_ += n;
    }
    app_raw_got_ += n;
    sync();
    check();
    return true;
  }

  void app_shutdown_write() {
    if (aborted_ || app_closed_ || app_shut_wr_) return;
    RC_LOG() << "app shutdown(SHUT_WR)\n";
    RC_ASSERT(::shutdown(app_.get(), SHUT_WR) == 0);
    app_shut_wr_ = true;
    sync();
    check();
  }

  void app_close() {
    if (aborted_ || app_closed_) return;
    RC_LOG() << "app close\n";
    raw_at_app_close_ = raw_reached();
    app_.reset();
    app_closed_ = true;
    sync();
    check();
  }

  // --- the owner (HostSide): watchers, timer, reset, abort --------------------------------

  /// The read watcher fires, if armed and the socket is readable. Returns whether it fired.
  bool fire_readable() {
    if (aborted_ || conn_->finished() || !read_armed_ || !ready(conn_->fd(), POLLIN)) return false;
    RC_LOG() << "host socket readable\n";
    read_armed_ = false;
    conn_->on_host_readable();
    settle(Allowed::stay, "on_host_readable only takes note");
    return true;
  }

  bool fire_writable() {
    if (aborted_ || conn_->finished() || !write_armed_ || !ready(conn_->fd(), POLLOUT)) return false;
    RC_LOG() << "host socket writable\n";
    write_armed_ = false;
    conn_->on_host_writable();
    settle(Allowed::stay, "flushing to a socket that takes data is no reason to close");
    return true;
  }

  /// The timer fires; on_deadline checks the clock itself, so it may come early too.
  void deadline_passes() {
    if (aborted_ || conn_->finished()) return;
    bool due = false;
    if (m_ == M::requesting) {
      // Until the REQUEST reached the guest the guest-ready timeout runs, then the connect one.
      due = request_seen_ ? s_.zero_connect : s_.zero_guest_ready;
    } else if (m_ == M::established && guest_shut_ == shutdown_flag::both && pending() > 0) {
      due = s_.zero_shutdown;  // the guest closed; flushing the rest may take this long
    }
    RC_LOG() << "deadline" << (due ? " (due)" : "") << "\n";
    conn_->on_deadline();
    settle(due ? Allowed::rst : Allowed::stay,
           due ? "a due timeout resets the connection" : "no timeout is due: on_deadline changes nothing");
  }

  void owner_reset() {
    if (aborted_ || conn_->finished()) return;  // the owner drops finished connections
    RC_LOG() << "owner reset()\n";
    conn_->reset("test: the device refused a packet of this connection");
    settle(m_ == M::closed ? Allowed::stay : Allowed::rst, "reset() closes and owes the guest one RST");
  }

  /// The device goes away: the connection closes, and the owner drops it at once.
  void owner_abort() {
    if (aborted_) return;
    RC_LOG() << "owner abort()\n";
    conn_->abort("test: device gone");
    expect(conn_->state() == State::closed, "abort() closes");
    aborted_ = true;
    if (!app_closed_) {
      std::vector<std::byte> buf(256 * 1024);
      ssize_t r;
      while ((r = ::recv(app_.get(), buf.data(), buf.size(), MSG_DONTWAIT)) > 0) {
      }
      expect(r == 0, "after abort() the host app reads EOF");
    }
  }

  // --- quiescence ---------------------------------------------------------------------------

  /// Everybody does what is due until nothing moves: the application reads all, the guest
  /// consumes all and tells (answering a CREDIT_REQUEST as Linux does), watchers fire,
  /// owed packets go into 4 KiB buffers.
  void drain() {
    guest_buf_ = s_.guest_buf_alloc;  // a buffer shrunk to nothing would starve the host data forever
    for (int round = 0; round < 20000; ++round) {
      if (aborted_) return;
      bool progress = false;
      while (app_read(1 << 16)) progress = true;
      if (talking()) {
        guest_consume(unconsumed());
        if (adv_fwd_ != static_cast<std::uint32_t>(guest_consumed_) || adv_buf_ != guest_buf_ || daemon_asked_credit_) {
          daemon_asked_credit_ = false;
          guest_packet(op(Op::credit_update));
          progress = true;
        }
      }
      progress |= fire_readable();
      progress |= fire_writable();
      for (int i = 0; i < 64 && !aborted_ && conn_->has_rx(); ++i) {
        if (!produce({4096 + header_size})) break;
        progress = true;
      }
      if (!progress) return;
    }
    RC_FAIL("the connection never settles");
  }

  /// After drain(): nothing is stuck anywhere (liveness).
  void check_drained() {
    if (aborted_) return;
    expect(!rst_owed_, "an owed RST goes out");
    if (m_ == M::established && !app_closed_) {
      // (An unfinished SEQPACKET message waits for its EOM, not for the socket.)
      expect(pending() == g_partial_.size(),
             "guest data reaches the host app once it reads: nothing stuck in the connection");
      expect(app_has_all(), "the host app has every byte the guest sent");
      if ((guest_shut_ & shutdown_flag::send) != 0)
        expect(app_eof_, "the guest's SHUTDOWN(SEND) becomes EOF for the host app");
    }
    if (talking() && (guest_shut_ & shutdown_flag::rcv) == 0) {
      expect(guest_has_all(), "the guest gets every byte the host app wrote");
      if (app_shut_wr_ || app_closed_) {
        expect((shutdown_seen_ & shutdown_flag::send) != 0, "the host app's EOF reaches the guest as SHUTDOWN(SEND)");
      }
    }
    if (m_ == M::closed && closed_by_guest_close_ && !app_closed_) {
      expect(app_has_all(), "a guest that closed gracefully loses no data: RST only once the host has it all");
    }
  }

  /// The guest closes its socket (or gives up connecting); the connection must end, with
  /// exactly one RST unless the guest reset it (spec 5.10.6.6: SHUTDOWN, then RST).
  void finish() {
    if (aborted_) return;
    drain();
    check_drained();
    if (m_ == M::requesting) guest_packet(op(Op::rst));
    if (m_ == M::established) guest_packet(op(Op::shutdown), 0, shutdown_flag::both);
    drain();
    if (aborted_) return;
    expect(conn_->finished(), "once the guest closed, the connection ends");
    expect(guest_reset_ != rst_seen_, "a connection ends with exactly one RST, unless the guest sent it");
    if (!app_closed_) {
      while (app_read(1 << 16)) {
      }
      expect(app_eof_, "the host app sees the end");
    }
  }

  [[nodiscard]] bool app_has_all() const {
    return seq() ? app_msgs_got_ == app_expect_msgs_.size() : app_got_ == app_expect_.size();
  }
  [[nodiscard]] bool guest_has_all() const {
    return seq() ? guest_msgs_got_ == app_msgs_.size() && guest_partial_.empty() : guest_got_ == app_bytes_.size();
  }

 private:
  enum class Allowed { stay, rst, quiet, stay_or_rst };

  [[nodiscard]] State model_state() const {
    return m_ == M::requesting ? State::requesting_guest : m_ == M::established ? State::established : State::closed;
  }

  Header guest_header(std::uint16_t raw_op, std::uint32_t len, std::uint32_t flags) const {
    Header h;
    h.src = guest_end;
    h.dst = host_end;
    h.len = len;
    h.type = static_cast<std::uint16_t>(s_.type);
    h.op = raw_op;
    h.flags = flags;
    h.buf_alloc = guest_buf_;
    h.fwd_cnt = static_cast<std::uint32_t>(guest_consumed_) + fwd_lie_;  // else honest: what the guest app read
    return h;
  }

  /// Bytes that reached the host socket, seen from the application's end.
  [[nodiscard]] std::uint64_t raw_reached() const {
    return app_closed_ ? raw_at_app_close_ : app_raw_got_ + unread_bytes(app_.get());
  }
  [[nodiscard]] std::uint64_t reached_guest_bytes() const { return raw_reached() - ok_len_; }
  /// Guest bytes the connection accepted and the host socket has not taken yet.
  [[nodiscard]] std::uint64_t pending() const { return g_tx_ - reached_guest_bytes() - dropped_; }
  /// Host -> guest credit by the guest's latest packet: peer_buf_alloc - (tx_cnt -
  /// peer_fwd_cnt), mod 2^32 as in the spec (5.10.6.3); an in-flight count beyond the
  /// buffer (a fwd_cnt ahead of what was sent) gives none.
  [[nodiscard]] std::uint32_t peer_credit() const {
    const auto used = static_cast<std::uint32_t>(static_cast<std::uint32_t>(guest_received_) - adv_fwd_);
    return used >= adv_buf_ ? 0 : adv_buf_ - used;
  }
  [[nodiscard]] bool oversized_host_message() const {
    return seq() && guest_partial_.empty() && guest_msgs_got_ < app_msgs_.size() &&
           app_msgs_[guest_msgs_got_].size() > adv_buf_;
  }

  void expect_app(std::span<const std::byte> bytes, bool whole_message) {
    if (seq()) {
      if (whole_message) app_expect_msgs_.emplace_back(bytes.begin(), bytes.end());
    } else {
      app_expect_.insert(app_expect_.end(), bytes.begin(), bytes.end());
    }
  }

  void guest_rw(const Header& h, const std::vector<std::byte>& payload, std::uint64_t buffered) {
    if ((guest_shut_ & shutdown_flag::send) != 0) {
      return settle(Allowed::rst, "RW after the guest's own SHUTDOWN(SEND) is a protocol error: RST");
    }
    if (h.len > s_.buf_alloc - buffered) {
      return settle(Allowed::rst, "RW beyond the credit the daemon gave: RST (credit.hpp)");
    }
    // Within the receiver's real free space: Linux takes it (virtio_transport_inc_rx_pkt).
    g_tx_ += h.len;
    if (seq()) {
      g_partial_.insert(g_partial_.end(), payload.begin(), payload.end());
      if ((h.flags & seqpacket_flag::eom) != 0) {
        expect_app(g_partial_, true);
        g_partial_.clear();
      }
    } else {
      expect_app(payload, false);
    }
    settle(Allowed::stay, "RW within credit is taken");
  }

  /// A packet the guest received.
  void on_packet(const Header& h, const std::vector<std::byte>& payload, bool may_close) {
    expect(!guest_reset_, "nothing goes to the guest after its RST");
    expect(!rst_seen_, "nothing goes to the guest after our RST");
    expect(h.src == host_end && h.dst == guest_end, "the connection's addresses");
    expect(h.type == static_cast<std::uint16_t>(s_.type), "the connection's type");
    expect(h.buf_alloc == s_.buf_alloc, "buf_alloc advertises the connection's buffer");
    expect(h.fwd_cnt >= last_fwd_, "fwd_cnt never goes back");
    expect(h.fwd_cnt <= reached_guest_bytes() + dropped_,
           "fwd_cnt counts only guest bytes that reached the host socket");
    expect(h.fwd_cnt <= g_tx_, "fwd_cnt never exceeds the bytes received");
    last_fwd_ = h.fwd_cnt;
    const bool first = packets_++ == 0;
    if (!h.is(Op::rw)) expect(h.len == 0 && payload.empty(), "control packets carry no payload");
    switch (h.operation()) {
      case Op::request:
        expect(s_.from_host && first && m_ == M::requesting, "REQUEST: host-initiated, once, first, while connecting");
        request_seen_ = true;
        break;
      case Op::response:
        expect(!s_.from_host && first && m_ == M::established,
               "RESPONSE: once, first, only to the guest's REQUEST of a guest-initiated connection");
        response_seen_ = true;
        break;
      case Op::rst:
        if (m_ != M::closed) {
          expect(may_close, "an RST needs a reason");
          close_model(true);
        }
        expect(rst_owed_, "an RST only when one is owed (not after a quiet close)");
        rst_owed_ = false;
        rst_seen_ = true;
        break;
      case Op::shutdown:
        expect(talking(), "SHUTDOWN only on an established connection");
        expect(h.flags == shutdown_flag::send,
               "SHUTDOWN flags the host caused: its EOF is SEND, and it never stops reading (no RCV)");
        expect(app_shut_wr_ || app_closed_, "SHUTDOWN(SEND) only once the host app stopped sending");
        expect((shutdown_seen_ & h.flags) == 0, "each SHUTDOWN flag once");
        if ((guest_shut_ & shutdown_flag::rcv) == 0)
          expect(guest_has_all(), "SHUTDOWN(SEND) comes after the last byte");
        shutdown_seen_ |= h.flags;
        break;
      case Op::rw: on_rw(h, payload); break;
      case Op::credit_update: expect(talking(), "CREDIT_UPDATE only on an established connection"); break;
      case Op::credit_request:
        expect(talking(), "CREDIT_REQUEST only on an established connection");
        daemon_asked_credit_ = true;
        break;
      case Op::invalid:
      default: RC_FAIL("the daemon sent an op that does not exist");
    }
    seen_buf_ = h.buf_alloc;  // every packet advertises
    seen_fwd_ = h.fwd_cnt;
    credit_request_pending_ = false;
  }

  void on_rw(const Header& h, const std::vector<std::byte>& payload) {
    expect(talking(), "RW only on an established connection, after the handshake");
    expect(h.len > 0, "no zero-length RW (Linux never sends one)");
    expect((guest_shut_ & shutdown_flag::rcv) == 0, "no data after the guest's SHUTDOWN(RCV)");
    expect((shutdown_seen_ & shutdown_flag::send) == 0, "no data after our own SHUTDOWN(SEND)");
    expect(h.len <= peer_credit(),
           "RW within the guest's advertised credit (peer_buf_alloc - (tx_cnt - peer_fwd_cnt))");
    if (seq()) {
      expect(guest_msgs_got_ < app_msgs_.size(), "RW carries only messages the host app sent");
      const auto& m = app_msgs_[guest_msgs_got_];
      if (guest_partial_.empty()) expect(m.size() <= adv_buf_, "a host message must fit the guest's whole buffer");
      expect(guest_partial_.size() + h.len <= m.size() &&
                 std::equal(payload.begin(), payload.end(),
                            m.begin() + static_cast<std::ptrdiff_t>(guest_partial_.size())),
             "fragments carry the host message's bytes in order");
      guest_partial_.insert(guest_partial_.end(), payload.begin(), payload.end());
      const bool last = guest_partial_.size() == m.size();
      expect(h.flags == (last ? seqpacket_flag::eom : 0u),
             "EOM exactly on a message's last fragment (no EOR: AF_UNIX has none)");
      if (last) {
        ++guest_msgs_got_;
        guest_partial_.clear();
      }
    } else {
      expect(h.flags == 0, "stream RW has no flags");
      expect(
          guest_got_ + h.len <= app_bytes_.size() &&
              std::equal(payload.begin(), payload.end(), app_bytes_.begin() + static_cast<std::ptrdiff_t>(guest_got_)),
          "the guest gets the host app's bytes in order, once");
      guest_got_ += h.len;
    }
    guest_received_ += h.len;
  }

  void close_model(bool rst) {
    if (m_ == M::closed) return;
    m_ = M::closed;
    rst_owed_ = rst;
    raw_at_close_ = raw_reached();
  }

  /// After a step: the connection's state is one the rules allow; a permitted close is
  /// adopted by the model.
  void settle(Allowed allowed, const char* rule) {
    if (m_ != M::closed && allowed == Allowed::stay) {
      if (m_ == M::established && guest_shut_ == shutdown_flag::both && pending() == 0) {
        // Linux: a peer's full SHUTDOWN with nothing left to read is answered with RST.
        allowed = Allowed::rst;
        rule = "the guest closed both ways and the host has everything: RST";
        closed_by_guest_close_ = true;
      } else if (app_closed_) {
        allowed = Allowed::stay_or_rst;  // EPIPE / ECONNRESET from the host socket
      }
    }
    const bool closed = conn_->state() == State::closed;
    switch (allowed) {
      case Allowed::stay: expect(conn_->state() == model_state(), rule); break;
      case Allowed::rst:
        expect(closed, rule);
        close_model(true);
        break;
      case Allowed::quiet:
        expect(closed, rule);
        close_model(false);
        break;
      case Allowed::stay_or_rst:
        if (closed) {
          close_model(true);
        } else {
          expect(conn_->state() == model_state(), rule);
        }
        break;
    }
    sync();
    check();
  }

  /// HostSide::sync: arm the watchers the connection asks for (an armed one stays armed).
  void sync() {
    if (aborted_ || conn_->finished()) return;
    if (conn_->want_read()) read_armed_ = true;
    if (conn_->want_write()) write_armed_ = true;
  }

  /// Invariants after every step.
  void check() {
    if (aborted_) return;
    const Connection& c = *conn_;
    expect(c.state() == model_state(), "state() agrees with the model");
    expect(c.finished() == (m_ == M::closed && !rst_owed_), "finished() exactly when closed with nothing owed");
    expect(c.credit().fwd_cnt() == reached_guest_bytes() + dropped_,
           "fwd_cnt counts exactly the guest bytes that reached the host socket (credit.hpp)");
    if (m_ == M::closed) {
      expect(c.has_rx() == rst_owed_, "closed: the owed RST and nothing else");
      expect(!c.want_read() && !c.want_write(), "closed: no socket watching");
      expect(raw_reached() <= raw_at_close_, "nothing reaches the host app after the connection closed");
      return;
    }
    expect(c.pending_tx_bytes() == pending(), "pending_tx_bytes(): taken from the guest, not yet on the host socket");
    if (m_ == M::requesting && !request_seen_) expect(c.has_rx(), "the owed REQUEST is announced");
    if (m_ == M::established && !s_.from_host && !response_seen_) expect(c.has_rx(), "the owed RESPONSE is announced");
    if (!talking()) return;
    if (credit_request_pending_) expect(c.has_rx(), "a CREDIT_REQUEST is answered (Linux: CREDIT_UPDATE)");
    const std::uint64_t fwd = reached_guest_bytes() + dropped_;
    // (Only once the guest heard the daemon's buffer at all: a guest that answered a REQUEST
    // it never got has no view of the credit to be starved in.)
    if (packets_ > 0 && (guest_shut_ & shutdown_flag::send) == 0 && view_credit() == 0 && fwd > seen_fwd_) {
      expect(c.has_rx(), "a guest out of credit learns of the room made since (no stall, credit.hpp update_due)");
    }
    if ((guest_shut_ & shutdown_flag::rcv) == 0 && (shutdown_seen_ & shutdown_flag::send) == 0 && peer_credit() > 0) {
      if (ready(c.fd(), POLLIN)) {
        expect(read_armed_ || c.has_rx(), "host data (or EOF) with guest credit is watched for or owed (no stall)");
      }
      if (!guest_partial_.empty()) expect(c.has_rx(), "the rest of a host message, with credit, is owed");
    }
  }

  Setup s_;
  test::GuestPackets guest_;
  UniqueFd app_;
  std::optional<Connection> conn_;
  std::size_t max_app_message_ = 0;

  // The model.
  M m_ = M::requesting;
  bool rst_owed_ = false;  // closed by the daemon: exactly one RST must follow
  bool rst_seen_ = false;
  bool guest_reset_ = false;  // the connection took the guest's RST
  bool aborted_ = false;
  bool closed_by_guest_close_ = false;
  bool request_seen_ = false;
  bool response_seen_ = false;
  std::uint64_t packets_ = 0;
  std::uint32_t shutdown_seen_ = 0;      // SHUTDOWN flags the guest received
  std::uint32_t guest_shut_ = 0;         // SHUTDOWN flags the guest sent (accumulated)
  bool credit_request_pending_ = false;  // the guest asked, no packet since
  bool daemon_asked_credit_ = false;     // the daemon sent CREDIT_REQUEST, not answered yet

  // Guest -> host.
  std::uint32_t guest_buf_;           // the guest's buffer, advertised in its next packet
  std::uint32_t fwd_lie_ = 0;         // added to the guest's fwd_cnt in guest_overstates_fwd_cnt
  std::uint64_t g_tx_ = 0;            // RW bytes the connection took
  std::uint64_t dropped_ = 0;         // of those, an unfinished message dropped at SHUTDOWN(SEND)
  std::vector<std::byte> g_partial_;  // SEQPACKET: the guest's message without EOM yet
  std::uint32_t seen_buf_ = 0;        // the daemon's credit as the guest last heard it
  std::uint32_t seen_fwd_ = 0;
  std::uint32_t last_fwd_ = 0;
  std::vector<std::byte> app_expect_;                    // stream: what the host app must read (OK line, guest bytes)
  std::vector<std::vector<std::byte>> app_expect_msgs_;  // SEQPACKET: likewise, as messages
  std::size_t app_got_ = 0;                              // stream: bytes read of app_expect_
  std::size_t app_msgs_got_ = 0;
  std::uint64_t app_raw_got_ = 0;  // every byte the host app read
  std::uint64_t ok_len_ = 0;       // host-initiated: the "OK <port>\n" line
  bool app_eof_ = false;
  std::uint64_t raw_at_app_close_ = 0;
  std::uint64_t raw_at_close_ = 0;

  // Host -> guest.
  std::uint32_t adv_buf_ = 0;  // the guest's credit as the connection last heard it
  std::uint32_t adv_fwd_ = 0;
  std::uint64_t guest_received_ = 0;
  std::uint64_t guest_consumed_ = 0;
  std::uint64_t h2g_written_ = 0;
  std::vector<std::byte> app_bytes_;              // stream: what the host app wrote
  std::vector<std::vector<std::byte>> app_msgs_;  // SEQPACKET: likewise, as messages
  std::size_t guest_got_ = 0;
  std::size_t guest_msgs_got_ = 0;
  std::vector<std::byte> guest_partial_;
  bool app_shut_wr_ = false;
  bool app_closed_ = false;

  // The owner's watchers.
  bool read_armed_ = false;
  bool write_armed_ = false;
};

/// RX buffers the guest may post: a header alone, small, Linux-sized, split over descriptors.
std::vector<std::uint32_t> gen_rx_sizes() {
  switch (*rc::gen::inRange(0, 5)) {
    case 0: return {header_size};
    case 1: return {*rc::gen::inRange<std::uint32_t>(header_size + 1, 400)};
    case 2: return {4096};
    case 3: return {header_size, 4096};
    default: {
      std::vector<std::uint32_t> sizes{*rc::gen::inRange<std::uint32_t>(1, 100)};
      for (int extra = *rc::gen::inRange(1, 3); extra > 0; --extra)
        sizes.push_back(*rc::gen::inRange<std::uint32_t>(1, 3000));
      const auto total = std::accumulate(sizes.begin(), sizes.end(), std::uint32_t{0});
      if (total < header_size) sizes.push_back(header_size - total);
      return sizes;
    }
  }
}

/// SEQPACKET flags of a guest RW; an empty message is not generated (AF_UNIX would show the
/// host app an empty message as EOF, and Linux never sends a zero-length RW).
std::uint32_t gen_rw_flags(const World& w, std::uint32_t len) {
  if (!w.seq()) return pick<std::uint32_t>({0, 0, 0, 1, 0xdead});  // stream ignores flags
  std::uint32_t flags = pick<std::uint32_t>({0, seqpacket_flag::eom, seqpacket_flag::eom | seqpacket_flag::eor});
  if (len == 0 && !w.partial_guest_message()) flags = 0;
  return flags;
}

enum class Event {
  produce,
  guest_rw_in_credit,
  guest_rw_any,
  guest_half_close,
  guest_close,
  guest_credit_update,
  guest_credit_request,
  guest_response,
  guest_protocol_error,
  guest_consume,
  guest_buf_change,
  app_write,
  app_read,
  readable,
  writable,
  deadline,
  app_shut_wr,
  app_close,
  guest_rst,
  owner_reset,
  owner_abort,
};

// --- Property 1 ------------------------------------------------------------------------------

// The state machine, checked against the reference model on random event sequences: it
// never crashes and always answers by the rules (World::on_packet, settle and check list
// them), and in the end it settles and ends with SHUTDOWN then exactly one RST.
RC_GTEST_PROP(ConnectionModel, StateMachineAnswersByTheRules, ()) {
  World w(gen_setup(true));
  // Events that end the connection (resets, protocol errors, the guest's close) come at a
  // rate of its own per run, from never to often: long runs in every state, and every way
  // to end them.
  const std::size_t chaos = *rc::gen::inRange<std::size_t>(0, 4);
  const int steps = *rc::gen::inRange(1, 300);
  for (int i = 0; i < steps && !w.aborted(); ++i) {
    const auto e = *rc::gen::weightedElement<Event>({
        {100, Event::produce},
        {80, Event::guest_rw_in_credit},
        {8, Event::guest_half_close},
        {20, Event::guest_credit_update},
        {20, Event::guest_credit_request},
        {30, Event::guest_response},
        {30, Event::guest_consume},
        {5, Event::guest_buf_change},
        {60, Event::app_write},
        {60, Event::app_read},
        {40, Event::readable},
        {40, Event::writable},
        {15, Event::deadline},
        {5, Event::app_shut_wr},
        {chaos * 3, Event::guest_rw_any},
        {chaos * 2, Event::guest_close},
        {chaos * 2, Event::guest_protocol_error},
        {chaos * 2, Event::app_close},
        {chaos * 2, Event::guest_rst},
        {chaos, Event::owner_reset},
        {chaos / 2, Event::owner_abort},
    });
    switch (e) {
      case Event::produce: w.produce(gen_rx_sizes()); break;
      case Event::guest_rw_in_credit: {
        // No data before the handshake or after the guest's own SHUTDOWN(SEND): a guest socket
        // cannot (guest_rw_any breaks these rules).
        if (w.model() == World::M::requesting || (w.guest_shut() & shutdown_flag::send) != 0) break;
        const auto credit = std::min<std::uint64_t>(w.view_credit(), 8192);
        const auto len = *rc::gen::inRange<std::uint32_t>(0, static_cast<std::uint32_t>(credit) + 1);
        w.guest_packet(op(Op::rw), len, gen_rw_flags(w, len));
        break;
      }
      case Event::guest_rw_any: {  // possibly beyond credit, or before the handshake
        const auto len = *rc::gen::inRange<std::uint32_t>(0, std::min(2 * w.setup().buf_alloc + 64, max_payload) + 1);
        w.guest_packet(op(Op::rw), len, gen_rw_flags(w, len));
        break;
      }
      case Event::guest_half_close:
        if (w.model() == World::M::requesting) break;
        w.guest_packet(op(Op::shutdown), 0, pick<std::uint32_t>({shutdown_flag::send, shutdown_flag::rcv, 0}));
        break;
      case Event::guest_close:  // both ways, or with flags beyond the two defined
        w.guest_packet(op(Op::shutdown), 0,
                       pick<std::uint32_t>({shutdown_flag::both, 0xfffffff0 | shutdown_flag::send}));
        break;
      case Event::guest_credit_update:
        if (w.model() != World::M::requesting) w.guest_packet(op(Op::credit_update));
        break;
      case Event::guest_credit_request:
        if (w.model() != World::M::requesting) w.guest_packet(op(Op::credit_request));
        break;
      case Event::guest_response:
        // A connecting guest socket answers the REQUEST it got; with chaos, now and then a
        // guest answers one it never got (it guessed the host port).
        if (w.model() != World::M::requesting) break;
        if (w.request_seen() || (chaos > 0 && *rc::gen::inRange(0, 4) == 0)) w.guest_packet(op(Op::response));
        break;
      case Event::guest_protocol_error:
        // REQUEST/RESPONSE/ops that do not exist on an open connection; anything but
        // RESPONSE or RST while connecting.
        w.guest_packet(pick<std::uint16_t>(
            {op(Op::request), op(Op::response), op(Op::invalid), 8, 0xffff, op(Op::credit_update), op(Op::shutdown)}));
        break;
      case Event::guest_consume: w.guest_consume(*rc::gen::inRange<std::uint64_t>(0, w.unconsumed() + 1)); break;
      case Event::guest_buf_change:
        if (w.seq()) break;  // constant there: whether a host message fits is then known
        if (*rc::gen::inRange(0, 4) == 0) {
          if (w.talking()) w.guest_overstates_fwd_cnt(*rc::gen::inRange<std::uint32_t>(1, 100000));
        } else {
          w.set_guest_buf_alloc(pick<std::uint32_t>({0, 64, 4096, 100000, 0xffffffff}));
        }
        break;
      case Event::app_write: {
        const auto cap = w.seq() ? std::min<std::size_t>(w.max_app_message(), w.setup().guest_buf_alloc + 512) : 20000;
        w.app_write(*rc::gen::inRange<std::size_t>(1, cap + 1));
        break;
      }
      case Event::app_read: w.app_read(*rc::gen::inRange<std::size_t>(1, 20000)); break;
      case Event::readable: w.fire_readable(); break;
      case Event::writable: w.fire_writable(); break;
      case Event::deadline: w.deadline_passes(); break;
      case Event::app_shut_wr: w.app_shutdown_write(); break;
      case Event::app_close: w.app_close(); break;
      case Event::guest_rst: w.guest_packet(op(Op::rst)); break;
      case Event::owner_reset: w.owner_reset(); break;
      case Event::owner_abort: w.owner_abort(); break;
      default: break;
    }
  }
  w.finish();
}

// --- Property 2 ------------------------------------------------------------------------------

// Bytes are conserved end to end: a well-behaved guest (within credit, answering
// CREDIT_REQUESTs, whole SEQPACKET messages) and host app exchange data under random
// interleavings with small socket buffers, half-close both ways, and now and then reset.
// Until a reset, each side receives exactly a prefix of what the other sent (World checks
// every delivery), and after the drain all of it; after a reset nothing more arrives.
RC_GTEST_PROP(ConnectionModel, BytesAreConservedEndToEnd, ()) {
  World w(gen_setup(false));  // no timeouts: nothing may be lost to a deadline
  if (w.setup().from_host) {
    w.produce({4096});  // REQUEST
    w.guest_packet(op(Op::response));
  } else {
    w.produce({4096});  // RESPONSE
  }
  RC_ASSERT(w.talking());
  bool reset = false;
  const int steps = *rc::gen::inRange(1, 300);
  for (int i = 0; i < steps; ++i) {
    const auto e = *rc::gen::weightedElement<Event>({
        {10, Event::produce},
        {8, Event::guest_rw_in_credit},
        {4, Event::guest_consume},
        {8, Event::app_write},
        {8, Event::app_read},
        {5, Event::readable},
        {5, Event::writable},
        {1, Event::guest_half_close},
        {1, Event::app_shut_wr},
        {1, Event::guest_rst},
    });
    switch (e) {
      case Event::produce: w.produce(gen_rx_sizes()); break;
      case Event::guest_rw_in_credit: {
        if (!w.talking() || (w.guest_shut() & shutdown_flag::send) != 0) break;
        const auto credit = std::min<std::uint64_t>(w.view_credit(), 16384);
        if (credit == 0) break;
        const auto len = *rc::gen::inRange<std::uint32_t>(1, static_cast<std::uint32_t>(credit) + 1);
        w.guest_packet(op(Op::rw), len, w.seq() && *rc::gen::inRange(0, 3) == 0 ? seqpacket_flag::eom : 0);
        break;
      }
      case Event::guest_consume:
        if (!w.talking()) break;
        w.guest_consume(*rc::gen::inRange<std::uint64_t>(0, w.unconsumed() + 1));
        w.guest_packet(op(Op::credit_update));
        break;
      case Event::app_write: {
        const auto cap = w.seq() ? std::min<std::size_t>(w.max_app_message(), w.setup().guest_buf_alloc) : 16384;
        w.app_write(*rc::gen::inRange<std::size_t>(1, cap + 1));
        break;
      }
      case Event::app_read: w.app_read(*rc::gen::inRange<std::size_t>(1, 16384)); break;
      case Event::readable: w.fire_readable(); break;
      case Event::writable: w.fire_writable(); break;
      case Event::guest_half_close:  // the guest half-closes its sending side, or closes for good
        if (!w.talking()) break;
        if (w.partial_guest_message()) w.guest_packet(op(Op::rw), 0, seqpacket_flag::eom);  // whole messages only
        w.guest_packet(op(Op::shutdown), 0, *rc::gen::inRange(0, 4) == 0 ? shutdown_flag::both : shutdown_flag::send);
        break;
      case Event::app_shut_wr: w.app_shutdown_write(); break;
      case Event::guest_rst:                      // a reset, from one side or the other
        if (*rc::gen::inRange(0, 2) == 0) break;  // rarer than the other events
        reset = true;
        switch (*rc::gen::inRange(0, 3)) {
          case 0: w.guest_packet(op(Op::rst)); break;
          case 1: w.owner_reset(); break;
          default: w.app_close(); break;
        }
        break;
      default: break;
    }
    w.answer_credit_request();
  }
  w.drain();
  w.check_drained();
  if (!reset && w.model() == World::M::established) {
    // Drained and no reset: all of it, both ways (the half-closes lose nothing).
    RC_ASSERT(w.app_has_all());
    if ((w.guest_shut() & shutdown_flag::rcv) == 0) RC_ASSERT(w.guest_has_all());
  }
  w.finish();
}

}  // namespace
}  // namespace vsock
