#include "vsock/connection.hpp"

#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include <boost/container/small_vector.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace vsock {
namespace {

constexpr bool would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK; }

/// sendmsg on a non-blocking socket without SIGPIPE; returns bytes sent, 0 if it would
/// block, or -errno.
ssize_t send_iov(int fd, const iovec* iov, std::size_t count) {
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov);
  msg.msg_iovlen = count;
  for (;;) {
    const ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return n;
    if (errno == EINTR) continue;
    return would_block(errno) ? 0 : -errno;
  }
}

}  // namespace

Connection::Connection(Endpoints ends, vhostuser::UniqueFd socket, const Limits& limits, State state)
    : ends_(ends),
      socket_(std::move(socket)),
      limits_(limits),
      state_(state),
      credit_(limits.buf_alloc),
      tx_(limits.buf_alloc) {}

Connection Connection::from_host(Endpoints ends, vhostuser::UniqueFd socket, const Limits& limits) {
  Connection c(ends, std::move(socket), limits, State::requesting_guest);
  c.owe_request_ = true;
  // Until the REQUEST reaches the guest (the driver may not be up yet) the client waits,
  // but not forever; the connect timeout proper starts when the REQUEST is delivered.
  c.deadline_ = Clock::now() + limits.guest_ready_timeout;
  return c;
}

Connection Connection::from_guest(Endpoints ends, vhostuser::UniqueFd socket, const Limits& limits,
                                  const Header& request) {
  Connection c(ends, std::move(socket), limits, State::established);
  c.credit_.on_peer_credit(request.buf_alloc, request.fwd_cnt);
  c.owe_response_ = true;
  return c;
}

std::size_t Connection::pending_tx_bytes() const { return flushable_tx_bytes() + g2h_message_.size(); }

std::size_t Connection::flushable_tx_bytes() const {
  std::size_t n = tx_.size();
  for (const auto& m : g2h_complete_) n += m.size();
  return n;
}

Header Connection::reply_header(Op op, std::uint32_t len, std::uint32_t flags) const {
  Header h;
  h.src = ends_.local;
  h.dst = ends_.peer;
  h.len = len;
  h.type = static_cast<std::uint16_t>(ends_.type);
  h.op = static_cast<std::uint16_t>(op);
  h.flags = flags;
  h.buf_alloc = credit_.buf_alloc();
  h.fwd_cnt = credit_.fwd_cnt();
  return h;
}

std::uint32_t Connection::emit(const virtio::DescriptorChain& rx, const Header& h) {
  virtio::ChainWriter writer(rx);
  (void)writer.write_obj(encode(h));  // the caller checked the chain holds a header
  counters_.to_guest.count(h);
  credit_.on_advertised();
  owe_credit_update_ = false;
  return static_cast<std::uint32_t>(sizeof(WireHeader)) + h.len;
}

void Connection::close_with_rst(std::string why) {
  // Only a connection that closes now owes an RST: one already closed (by the guest's own
  // RST, say) must never get one after it.
  if (state_ == State::closed) return;
  close_quietly(std::move(why));
  owe_rst_ = true;
}

void Connection::close_quietly(std::string why) {
  if (state_ == State::closed) return;
  state_ = State::closed;
  close_reason_ = std::move(why);
  // The host application sees EOF. The fd itself is closed with the connection, after the
  // owner stopped watching it: closing a watched fd would let its number be reused under
  // the watcher's feet.
  ::shutdown(socket_.get(), SHUT_RDWR);
  owe_request_ = owe_response_ = owe_credit_request_ = owe_credit_update_ = false;
  owe_shutdown_ = 0;
  tx_.consume(tx_.size());
  g2h_message_.clear();
  g2h_complete_.clear();
  h2g_message_.clear();
  deadline_.reset();
}

void Connection::abort(const char* why) { close_quietly(why); }

void Connection::reset(std::string why) { close_with_rst(std::move(why)); }

// --- guest -> host ---------------------------------------------------------------------

void Connection::on_guest_packet(const Header& packet, virtio::ChainReader& payload) {
  if (state_ == State::closed) return;
  counters_.from_guest.count(packet);
  credit_.on_peer_credit(packet.buf_alloc, packet.fwd_cnt);
  const Op op = packet.operation();

  if (state_ == State::requesting_guest) {
    // Linux virtio_transport_recv_connecting: RESPONSE connects, RST refuses, anything
    // else is a protocol error answered with RST.
    if (op == Op::response && owe_request_) {
      // The REQUEST has not reached the guest yet: it answered a connection it cannot know
      // of (a guessed port). Accepting it would also leave the REQUEST owed on an open
      // connection.
      close_with_rst("RESPONSE before the REQUEST reached the guest");
    } else if (op == Op::response) {
      state_ = State::established;
      deadline_.reset();
      const std::string ok = fmt::format("OK {}\n", ends_.local.port);
      const iovec iov{const_cast<char*>(ok.data()), ok.size()};
      // The host socket's buffer is empty at this point, so the line is written whole or
      // the client is gone.
      if (send_iov(socket_.get(), &iov, 1) != static_cast<ssize_t>(ok.size())) {
        close_with_rst("host client went away before the guest accepted");
      }
    } else if (op == Op::rst) {
      close_quietly("guest refused the connection");
    } else {
      close_with_rst(fmt::format("unexpected {} while connecting", describe(packet)));
    }
    return;
  }

  switch (op) {
    case Op::rw: on_rw(packet, payload); break;
    case Op::shutdown: on_shutdown(packet.flags); break;
    case Op::rst: close_quietly("reset by the guest"); break;
    case Op::credit_update:
      // Only new room ends the wait: an update that still leaves no credit would otherwise
      // be answered by another CREDIT_REQUEST, and Linux answers each with an update.
      if (credit_.peer_free() > 0) credit_requested_ = false;
      break;
    case Op::credit_request: owe_credit_update_ = true; break;
    case Op::request:
    case Op::response:
    case Op::invalid:
    default: close_with_rst(fmt::format("unexpected {} on an open connection", describe(packet))); break;
  }
}

void Connection::on_rw(const Header& packet, virtio::ChainReader& payload) {
  if ((guest_shutdown_ & shutdown_flag::send) != 0) {
    close_with_rst("data after the guest's SHUTDOWN(SEND)");
    return;
  }
  if (!credit_.fits(packet.len)) {
    close_with_rst(fmt::format("guest sent {} bytes beyond its credit", packet.len));
    return;
  }
  credit_.on_received(packet.len);
  if (ends_.type == Type::stream) {
    if (packet.len > 0) forward(payload, packet.len);
    return;
  }
  // SEQPACKET: fragments of one message collect until EOM (spec 5.10.6.4.1 / Linux
  // virtio_transport_seqpacket_enqueue); the host socket gets it as one message.
  boost::container::small_vector<iovec, 8> iovecs;
  if (!payload.peek_iovecs(packet.len, iovecs)) {
    close_with_rst("payload outside guest memory");
    return;
  }
  for (const iovec& v : iovecs) {
    const auto* p = static_cast<const std::byte*>(v.iov_base);
    g2h_message_.insert(g2h_message_.end(), p, p + v.iov_len);
  }
  if ((packet.flags & seqpacket_flag::eom) != 0) {
    g2h_complete_.push_back(std::move(g2h_message_));
    g2h_message_.clear();
    send_seqpacket_messages();
  }
}

bool Connection::forward(virtio::ChainReader& payload, std::uint32_t len) {
  boost::container::small_vector<iovec, 8> iovecs;
  if (!payload.peek_iovecs(len, iovecs)) {
    close_with_rst("payload outside guest memory");
    return false;
  }
  std::size_t written = 0;
  if (tx_.empty() && !host_write_shut_) {
    // The common case: straight from guest memory to the socket, no copy.
    const ssize_t n = send_iov(socket_.get(), iovecs.data(), iovecs.size());
    if (n < 0) {
      close_with_rst(fmt::format("host socket: {}", std::strerror(static_cast<int>(-n))));
      return false;
    }
    written = static_cast<std::size_t>(n);
    credit_.on_forwarded(static_cast<std::uint32_t>(written));
  }
  // What the socket did not take waits in the connection's buffer (fits: credit checked).
  std::size_t skip = written;
  for (const iovec& v : iovecs) {
    if (skip >= v.iov_len) {
      skip -= v.iov_len;
      continue;
    }
    tx_.append({static_cast<const std::byte*>(v.iov_base) + skip, v.iov_len - skip});
    skip = 0;
  }
  return true;
}

void Connection::send_seqpacket_messages() {
  while (!g2h_complete_.empty()) {
    auto& m = g2h_complete_.front();
    const iovec iov{m.data(), m.size()};
    const ssize_t n = send_iov(socket_.get(), &iov, 1);
    if (n < 0) {
      close_with_rst(fmt::format("host socket: {}", std::strerror(static_cast<int>(-n))));
      return;
    }
    if (n == 0 && !m.empty()) return;  // would block: wait for writable
    credit_.on_forwarded(static_cast<std::uint32_t>(m.size()));
    g2h_complete_.pop_front();
  }
  maybe_finish_host_write_side();
}

bool Connection::flush() {
  std::array<iovec, 2> iov;
  while (!tx_.empty()) {
    const std::size_t count = tx_.iovecs(iov);
    const ssize_t n = send_iov(socket_.get(), iov.data(), count);
    if (n < 0) {
      close_with_rst(fmt::format("host socket: {}", std::strerror(static_cast<int>(-n))));
      return false;
    }
    if (n == 0) return true;
    tx_.consume(static_cast<std::size_t>(n));
    credit_.on_forwarded(static_cast<std::uint32_t>(n));
  }
  return true;
}

void Connection::on_host_writable() {
  if (state_ == State::closed) return;
  if (!flush()) return;
  send_seqpacket_messages();
  maybe_finish_host_write_side();
}

void Connection::on_shutdown(std::uint32_t flags) {
  guest_shutdown_ |= flags & shutdown_flag::both;
  if ((guest_shutdown_ & shutdown_flag::send) != 0 && !g2h_message_.empty()) {
    // SEQPACKET: the guest stopped sending in the middle of a message, whose EOM can no
    // longer come (RW after SHUTDOWN(SEND) is a reset). A message is delivered whole or not
    // at all, so the fragments are dropped; they count as consumed for the credit.
    spdlog::debug("guest port {}: {} bytes of an unfinished message dropped at SHUTDOWN(SEND)", ends_.peer.port,
                  g2h_message_.size());
    credit_.on_forwarded(static_cast<std::uint32_t>(g2h_message_.size()));
    g2h_message_.clear();
  }
  if ((guest_shutdown_ & shutdown_flag::rcv) != 0) {
    // The guest reads no more: what the host still sends has nowhere to go.
    host_readable_ = false;
    h2g_message_.clear();
    h2g_offset_ = 0;
  }
  if (guest_shutdown_ == shutdown_flag::both && pending_tx_bytes() > 0) {
    deadline_ = Clock::now() + limits_.shutdown_timeout;  // flush, but not forever
  }
  maybe_finish_host_write_side();
}

void Connection::maybe_finish_host_write_side() {
  if (state_ == State::closed || pending_tx_bytes() > 0) return;
  if (guest_shutdown_ == shutdown_flag::both) {
    // The guest closed its socket; everything it sent has reached the host. Linux answers
    // a peer's full SHUTDOWN with RST once no data is left; so does the daemon.
    close_with_rst("closed by the guest");
    return;
  }
  if ((guest_shutdown_ & shutdown_flag::send) != 0 && !host_write_shut_) {
    // Half-close: the host application reads EOF after the last byte.
    ::shutdown(socket_.get(), SHUT_WR);
    host_write_shut_ = true;
  }
}

void Connection::on_deadline() {
  if (state_ == State::closed || !deadline_ || Clock::now() < *deadline_) return;
  deadline_.reset();
  if (state_ == State::requesting_guest) {
    close_with_rst(owe_request_ ? "the guest driver never took the REQUEST" : "the guest did not answer the REQUEST");
  } else {
    close_with_rst("could not flush to the host before the shutdown timeout");
  }
}

// --- host -> guest ---------------------------------------------------------------------

bool Connection::data_ready() const {
  if (state_ != State::established || (guest_shutdown_ & shutdown_flag::rcv) != 0) return false;
  const bool have_bytes = host_readable_ || h2g_offset_ < h2g_message_.size();
  if (!have_bytes) return false;
  // Without credit the only thing to send is one CREDIT_REQUEST; then wait for an update
  // instead of spinning on a readable socket.
  return credit_.peer_free() > 0 || !credit_requested_;
}

bool Connection::want_read() const {
  return state_ == State::established && !host_readable_ && !host_eof_ &&
         (guest_shutdown_ & shutdown_flag::rcv) == 0 && h2g_offset_ >= h2g_message_.size();
}

bool Connection::has_rx() const {
  if (owe_rst_) return true;
  if (state_ == State::closed) return false;
  return owe_request_ || owe_response_ || owe_shutdown_ != 0 || owe_credit_request_ || owe_credit_update_ ||
         credit_.update_due() || data_ready();
}

std::optional<std::uint32_t> Connection::produce_rx(const virtio::DescriptorChain& rx) {
  if (owe_rst_) {
    owe_rst_ = false;
    return emit(rx, reply_header(Op::rst));
  }
  if (state_ == State::closed) return std::nullopt;
  if (owe_request_) {
    owe_request_ = false;
    deadline_ = Clock::now() + limits_.connect_timeout;  // the guest has it now
    return emit(rx, reply_header(Op::request));
  }
  if (owe_response_) {
    owe_response_ = false;
    return emit(rx, reply_header(Op::response));
  }
  if (data_ready()) {
    if (credit_.peer_free() > 0 && rx.writable_bytes() <= sizeof(WireHeader)) {
      // A buffer that holds a header and nothing more. Leaving it in the ring would block
      // every packet behind it, and an RW of length 0 is no packet Linux ever sends; a
      // CREDIT_UPDATE uses it for something true and the data goes in the next buffer.
      return emit(rx, reply_header(Op::credit_update));
    }
    if (auto sent = ends_.type == Type::stream ? produce_data(rx) : produce_seqpacket_data(rx)) return sent;
    if (state_ == State::closed) return produce_rx(rx);  // the socket failed: the RST goes now
  }
  if (owe_shutdown_ != 0) {
    const std::uint32_t flags = std::exchange(owe_shutdown_, 0);
    return emit(rx, reply_header(Op::shutdown, 0, flags));
  }
  if (owe_credit_request_) {
    owe_credit_request_ = false;
    credit_requested_ = true;
    return emit(rx, reply_header(Op::credit_request));
  }
  if (owe_credit_update_ || credit_.update_due()) return emit(rx, reply_header(Op::credit_update));
  return std::nullopt;
}

std::optional<std::uint32_t> Connection::produce_data(const virtio::DescriptorChain& rx) {
  const std::uint32_t credit = credit_.peer_free();
  if (credit == 0) {
    // The guest's receive buffer is full: the host's data waits for its CREDIT_UPDATE.
    ++counters_.credit_stalls;
    owe_credit_request_ = true;
    return std::nullopt;
  }
  virtio::ChainWriter payload(rx);
  (void)payload.commit(sizeof(WireHeader));  // the header goes in last, once len is known
  const std::size_t room = std::min<std::size_t>({payload.remaining(), credit, max_packet_payload});
  if (room == 0) return std::nullopt;  // cannot happen: produce_rx checked the buffer and credit
  boost::container::small_vector<iovec, 8> iovecs;
  if (!payload.peek_iovecs(room, iovecs)) return std::nullopt;

  // Straight from the socket into the guest's buffers.
  ssize_t n;
  do {
    n = ::readv(socket_.get(), iovecs.data(), static_cast<int>(iovecs.size()));
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (would_block(errno)) {
      host_readable_ = false;
      return std::nullopt;
    }
    close_with_rst(fmt::format("host socket: {}", std::strerror(errno)));
    return std::nullopt;
  }
  if (n == 0) {
    // Host EOF: the host will send no more, but may still read (half-close). Tell the
    // guest SEND only; the connection stays open for guest -> host data.
    host_eof_ = true;
    host_readable_ = false;
    owe_shutdown_ |= shutdown_flag::send;
    return std::nullopt;
  }
  if (static_cast<std::size_t>(n) < room) host_readable_ = false;  // drained: watch again
  credit_.on_sent(static_cast<std::uint32_t>(n));
  return emit(rx, reply_header(Op::rw, static_cast<std::uint32_t>(n)));
}

std::optional<std::uint32_t> Connection::produce_seqpacket_data(const virtio::DescriptorChain& rx) {
  if (h2g_offset_ >= h2g_message_.size()) {
    // Next whole message from the host socket; its size first, so it is read in one piece
    // (a short read of a SOCK_SEQPACKET message discards the rest of it).
    ssize_t size;
    do {
      size = ::recv(socket_.get(), nullptr, 0, MSG_PEEK | MSG_TRUNC | MSG_DONTWAIT);
    } while (size < 0 && errno == EINTR);
    if (size < 0) {
      if (would_block(errno)) {
        host_readable_ = false;
        return std::nullopt;
      }
      close_with_rst(fmt::format("host socket: {}", std::strerror(errno)));
      return std::nullopt;
    }
    if (size == 0) {  // EOF (AF_UNIX cannot tell an empty message from EOF; both end here)
      host_eof_ = true;
      host_readable_ = false;
      owe_shutdown_ |= shutdown_flag::send;
      return std::nullopt;
    }
    // The guest buffers a message until its last fragment: one larger than the guest's
    // whole receive buffer could never be delivered.
    if (static_cast<std::size_t>(size) > credit_.peer_buf_alloc()) {
      close_with_rst(fmt::format("host message of {} bytes exceeds the guest's buffer", size));
      return std::nullopt;
    }
    h2g_message_.resize(static_cast<std::size_t>(size));
    const ssize_t got = ::recv(socket_.get(), h2g_message_.data(), h2g_message_.size(), MSG_DONTWAIT);
    if (got != size) {
      close_with_rst("host message changed between peek and read");
      return std::nullopt;
    }
    h2g_offset_ = 0;
    host_readable_ = false;  // one message at a time; watch again after this one
  }
  const std::uint32_t credit = credit_.peer_free();
  if (credit == 0) {
    // The guest's receive buffer is full: the host's data waits for its CREDIT_UPDATE.
    ++counters_.credit_stalls;
    owe_credit_request_ = true;
    return std::nullopt;
  }
  virtio::ChainWriter payload(rx);
  (void)payload.commit(sizeof(WireHeader));
  const std::size_t n = std::min<std::size_t>(
      {payload.remaining(), credit, max_packet_payload, h2g_message_.size() - h2g_offset_});
  if (n == 0 || !payload.write({h2g_message_.data() + h2g_offset_, n})) return std::nullopt;
  h2g_offset_ += n;
  credit_.on_sent(static_cast<std::uint32_t>(n));
  // EOM only on the last fragment (spec 5.10.6.4.1). No EOR: AF_UNIX has no MSG_EOR to map.
  const bool last = h2g_offset_ == h2g_message_.size();
  if (last) {
    h2g_message_.clear();
    h2g_offset_ = 0;
  }
  return emit(rx, reply_header(Op::rw, static_cast<std::uint32_t>(n), last ? seqpacket_flag::eom : 0));
}

}  // namespace vsock
