#include "vsock_fixture.hpp"

#include <fcntl.h>
#include <linux/sockios.h>
#include <poll.h>
#include <pthread.h>
#include <sys/ioctl.h>
#include <sys/un.h>
#include <time.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

#include <fmt/format.h>

namespace vusim::vsock_test {
namespace {

using vsock_guest::Conn;
using vsock_guest::Guest;
using vsock_guest::Packet;

Failure io_error(std::string_view what) { return Failure{Fault::io, fmt::format("{}: {}", what, std::strerror(errno))}; }

int left_ms(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  return static_cast<int>(std::max<std::int64_t>(left.count(), 0));
}

/// Waits for `events` on `fd` until `deadline`; false on timeout.
Result<bool> wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int n = ::poll(&p, 1, left_ms(deadline));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return io_error("poll");
    if (Clock::now() >= deadline) return false;
  }
}

sockaddr_un unix_address(const std::filesystem::path& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.native().size() >= sizeof addr.sun_path) throw std::runtime_error("socket path too long: " + path.native());
  std::memcpy(addr.sun_path, path.c_str(), path.native().size() + 1);
  return addr;
}

template <class T>
T must(Result<T> r, std::string_view what) {
  if (!r) throw std::runtime_error(fmt::format("{}: {}", what, r.error().message));
  return std::move(*r);
}

}  // namespace

// --- backend -------------------------------------------------------------------------------

VsockBackend::VsockBackend(const std::function<void(vsock::DeviceConfig&)>& tweak, const std::filesystem::path& dir,
                           vsock::Router* router)
    : work_(boost::asio::make_work_guard(io_)) {
  if (dir.empty()) {
    own_dir_.emplace();
    dir_ = own_dir_->path();
  } else {
    dir_ = dir;
  }
  socket_ = dir_ / "vhost.sock";
  config_.uds_path = dir_ / "vm.vsock";
  if (tweak) tweak(config_);
  // As app/vsockd/main.cpp: the device and the server on the same io_context's executor;
  // the host listeners are bound before any front-end connects.
  device_ = std::make_unique<vsock::VsockDevice>(io_.get_executor(), config_, router);
  if (auto ok = device_->listen(); !ok) {
    throw std::runtime_error("cannot listen on " + config_.uds_path.native() + ": " + ok.error().message());
  }
  auto server = vhostuser::Server::listen(io_.get_executor(), socket_, *device_);
  if (!server) throw std::runtime_error("cannot listen on " + socket_.native() + ": " + server.error().message());
  server_ = std::move(*server);
  server_->start();
  thread_ = std::thread([this] { io_.run(); });
}

VsockBackend::~VsockBackend() {
  on_backend([this] {
    close_server();
    if (device_) device_->close();
  });
  work_.reset();
  io_.stop();
  thread_.join();
  device_.reset();
}

void VsockBackend::close_server() {
  if (!server_) return;
  server_->close();
  server_.reset();
}

void VsockBackend::destroy_device() {
  if (!device_) return;
  device_->close();
  device_.reset();
}

std::chrono::nanoseconds VsockBackend::cpu_time() const {
  clockid_t clock;
  if (::pthread_getcpuclockid(const_cast<std::thread&>(thread_).native_handle(), &clock) != 0) {
    throw std::runtime_error("pthread_getcpuclockid failed");
  }
  timespec ts{};
  if (::clock_gettime(clock, &ts) != 0) throw std::runtime_error("clock_gettime failed");
  return std::chrono::seconds(ts.tv_sec) + std::chrono::nanoseconds(ts.tv_nsec);
}

Result<void> VsockBackend::expect_quiet(int fd, short events, std::chrono::milliseconds window,
                                        std::string_view what) const {
  // Not a synchronisation: the window is an observation period in which the test knows
  // nothing can legitimately happen; it measures, it does not wait for anything.
  const auto cpu_before = cpu_time();
  pollfd p{fd, events, 0};
  const int ready = ::poll(&p, 1, static_cast<int>(window.count()));
  const auto cpu = std::chrono::duration_cast<std::chrono::milliseconds>(cpu_time() - cpu_before);
  if (ready < 0) return Failure{Fault::io, fmt::format("poll: {}", std::strerror(errno))};
  if (ready > 0) return Failure{Fault::guest, std::string(what)};
  if (cpu > window / 2) {
    return Failure{Fault::guest, fmt::format("the daemon's thread used {} ms of CPU in {} ms in which it had "
                                             "nothing to do (a busy spin)",
                                             cpu.count(), window.count())};
  }
  return {};
}

// --- VM --------------------------------------------------------------------------------------

VsockVm::VsockVm(VmOptions options)
    : options_(std::move(options)),
      backend(
          [this](vsock::DeviceConfig& c) {
            c.guest_cid = options_.cid;
            if (options_.tweak) options_.tweak(c);
          },
          options_.dir, options_.router),
      ram(must(GuestRam::contiguous(options_.region_mib << 20, options_.regions), "guest RAM")),
      dev(options_.model, ram) {}

VsockVm::~VsockVm() { test::dump_on_failure(log); }

Result<void> VsockVm::boot() {
  auto fe = Frontend::connect(backend.socket(), test::traced_options(log));
  if (!fe) return fe.error();
  fe_.emplace(std::move(*fe));
  if (auto ok = sequence().realize(*fe_, dev); !ok) return ok;
  if (auto ok = sequence().start(*fe_, dev, {}); !ok) return ok;
  const std::uint32_t size = options_.rx_buffer_size;
  guest_.emplace(dev, Guest::Options{.cid = options_.cid,
                                     .refill = [size] { return ChainLayout{.segments = {{.len = size}}}; }});
  if (options_.rx_buffers > 0) {
    if (auto ok = guest_->post_rx(options_.rx_buffers, ChainLayout{.segments = {{.len = size}}}); !ok) return ok;
  }
  return {};
}

Result<std::vector<std::uint16_t>> VsockVm::pause_resume() { return vusim::pause_resume(*fe_, dev, sequence()); }

// --- host sockets ------------------------------------------------------------------------------

Result<UniqueFd> listen_at(const std::filesystem::path& path, int type) {
  UniqueFd fd{::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)};
  if (!fd) return io_error("socket");
  const sockaddr_un addr = unix_address(path);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) return io_error("bind " + path.native());
  if (::listen(fd.get(), 16) != 0) return io_error("listen");
  return fd;
}

Result<UniqueFd> accept_within(int listener, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    UniqueFd fd{::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK)};
    if (fd) return fd;
    if (errno != EAGAIN && errno != EINTR) return io_error("accept");
    auto ready = wait_for(listener, POLLIN, deadline);
    if (!ready) return ready.error();
    if (!*ready) return Failure{Fault::timeout, fmt::format("no connection on the listener within {} ms", timeout.count())};
  }
}

Result<UniqueFd> connect_to(const std::filesystem::path& path, int type) {
  UniqueFd fd{::socket(AF_UNIX, type | SOCK_CLOEXEC, 0)};
  if (!fd) return io_error("socket");
  const sockaddr_un addr = unix_address(path);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    return io_error("connect " + path.native());
  }
  if (::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK) != 0) return io_error("fcntl");
  return fd;
}

Result<void> write_all(int fd, std::span<const std::byte> bytes, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::send(fd, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n < 0 && errno != EAGAIN && errno != EINTR) return io_error("send");
    auto ready = wait_for(fd, POLLOUT, deadline);
    if (!ready) return ready.error();
    if (!*ready) {
      return Failure{Fault::timeout, fmt::format("host socket took {} of {} bytes in {} ms", done, bytes.size(), timeout.count())};
    }
  }
  return {};
}

Result<void> write_all(int fd, std::string_view text, std::chrono::milliseconds timeout) {
  return write_all(fd, as_bytes(text), timeout);
}

Result<std::vector<std::byte>> read_exact(int fd, std::size_t count, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::vector<std::byte> out(count);
  std::size_t done = 0;
  while (done < count) {
    const ssize_t n = ::recv(fd, out.data() + done, count - done, MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<std::size_t>(n);
      continue;
    }
    if (n == 0) return Failure{Fault::closed, fmt::format("host socket: EOF after {} of {} bytes", done, count)};
    if (errno != EAGAIN && errno != EINTR) return io_error("recv");
    auto ready = wait_for(fd, POLLIN, deadline);
    if (!ready) return ready.error();
    if (!*ready) {
      return Failure{Fault::timeout, fmt::format("host socket: {} of {} bytes in {} ms", done, count, timeout.count())};
    }
  }
  return out;
}

Result<std::string> read_line(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::string line;
  while (line.empty() || line.back() != '\n') {
    char c;
    const ssize_t n = ::recv(fd, &c, 1, MSG_DONTWAIT);
    if (n == 1) {
      line.push_back(c);
      continue;
    }
    if (n == 0) return Failure{Fault::closed, fmt::format("host socket: EOF after \"{}\"", line)};
    if (errno != EAGAIN && errno != EINTR) return io_error("recv");
    auto ready = wait_for(fd, POLLIN, deadline);
    if (!ready) return ready.error();
    if (!*ready) return Failure{Fault::timeout, fmt::format("host socket: no full line in {} ms (got \"{}\")", timeout.count(), line)};
  }
  return line;
}

namespace {

/// read_to_eof() and read_until_closed(): all the data, up to EOF (or a reset, if it ends).
Result<std::vector<std::byte>> read_all(int fd, std::chrono::milliseconds timeout, bool reset_ends) {
  const auto deadline = Clock::now() + timeout;
  std::vector<std::byte> out;
  std::byte buf[65536];
  for (;;) {
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0) {
      out.insert(out.end(), buf, buf + n);
      continue;
    }
    if (n == 0 || (reset_ends && errno == ECONNRESET)) return out;
    if (errno != EAGAIN && errno != EINTR) return io_error("recv");
    auto ready = wait_for(fd, POLLIN, deadline);
    if (!ready) return ready.error();
    if (!*ready) return Failure{Fault::timeout, fmt::format("host socket: no EOF in {} ms ({} bytes read)", timeout.count(), out.size())};
  }
}

}  // namespace

Result<std::vector<std::byte>> read_to_eof(int fd, std::chrono::milliseconds timeout) {
  return read_all(fd, timeout, false);
}

Result<std::vector<std::byte>> read_until_closed(int fd, std::chrono::milliseconds timeout) {
  return read_all(fd, timeout, true);
}

Result<void> expect_eof(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    std::byte buf[4096];
    const ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0) return {};
    if (n > 0) return Failure{Fault::bad_reply, fmt::format("host socket: {} unexpected bytes before EOF", n)};
    if (errno == ECONNRESET) return {};
    if (errno != EAGAIN && errno != EINTR) return io_error("recv");
    auto ready = wait_for(fd, POLLIN, deadline);
    if (!ready) return ready.error();
    if (!*ready) return Failure{Fault::timeout, fmt::format("host socket still open after {} ms", timeout.count())};
  }
}

Result<std::vector<std::byte>> recv_message(int fd, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  std::vector<std::byte> buf(256 * 1024);
  for (;;) {
    const ssize_t n = ::recv(fd, buf.data(), buf.size(), MSG_DONTWAIT | MSG_TRUNC);
    if (n > static_cast<ssize_t>(buf.size())) return Failure{Fault::bad_reply, fmt::format("message of {} bytes", n)};
    if (n > 0) {
      buf.resize(static_cast<std::size_t>(n));
      return buf;
    }
    if (n == 0) return Failure{Fault::closed, "host seqpacket socket: EOF (or an empty message)"};
    if (errno != EAGAIN && errno != EINTR) return io_error("recv");
    auto ready = wait_for(fd, POLLIN, deadline);
    if (!ready) return ready.error();
    if (!*ready) return Failure{Fault::timeout, fmt::format("host socket: no message in {} ms", timeout.count())};
  }
}

Result<void> send_message(int fd, std::span<const std::byte> bytes, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    const ssize_t n = ::send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n == static_cast<ssize_t>(bytes.size())) return {};
    if (n >= 0) return Failure{Fault::io, fmt::format("seqpacket send took {} of {} bytes", n, bytes.size())};
    if (errno != EAGAIN && errno != EINTR) return io_error("send");
    auto ready = wait_for(fd, POLLOUT, deadline);
    if (!ready) return ready.error();
    if (!*ready) return Failure{Fault::timeout, "host seqpacket socket full"};
  }
}

Result<void> wait_peer_consumed(int fd, std::chrono::milliseconds timeout) {
  // There is no event for "the peer read it": poll the send queue, with a deadline (as
  // test::wait_drained does for eventfds).
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    int queued = 0;
    if (::ioctl(fd, SIOCOUTQ, &queued) != 0) return io_error("ioctl(SIOCOUTQ)");
    if (queued == 0) return {};
    if (Clock::now() >= deadline) {
      return Failure{Fault::timeout, fmt::format("the daemon left {} bytes unread for {} ms", queued, timeout.count())};
    }
    std::this_thread::yield();
  }
}

std::vector<std::byte> pattern(std::size_t n, std::uint64_t seed) {
  std::vector<std::byte> out(n);
  std::uint64_t x = seed;
  for (std::size_t i = 0; i < n; i += 8) {
    x += 0x9e3779b97f4a7c15ull;
    std::uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    for (std::size_t k = 0; k < 8 && i + k < n; ++k) out[i + k] = static_cast<std::byte>(z >> (8 * k));
  }
  return out;
}

std::uint64_t checksum(std::span<const std::byte> bytes) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  for (std::byte b : bytes) {
    h ^= static_cast<std::uint8_t>(b);
    h *= 0x100000001b3ull;
  }
  return h;
}

std::span<const std::byte> as_bytes(std::string_view text) {
  return {reinterpret_cast<const std::byte*>(text.data()), text.size()};
}

std::string as_text(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// --- guest helpers -------------------------------------------------------------------------

Result<Packet> guest_connect(Guest& guest, Conn& conn, std::chrono::milliseconds timeout) {
  if (auto ok = guest.send(conn.make(vsock_guest::op_request)); !ok) return ok.error();
  const auto deadline = Clock::now() + timeout;
  std::deque<Packet> others;
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    auto p = guest.next(std::max(left, std::chrono::milliseconds(0)));
    if (!p) {
      for (auto it = others.rbegin(); it != others.rend(); ++it) guest.inbox().push_front(std::move(*it));
      return p.error();
    }
    if (!conn.matches(*p)) {
      others.push_back(std::move(*p));
      continue;
    }
    for (auto it = others.rbegin(); it != others.rend(); ++it) guest.inbox().push_front(std::move(*it));
    if (auto ok = conn.on_packet(*p); !ok) return ok.error();
    if (p->op != vsock_guest::op_response && p->op != vsock_guest::op_rst) {
      return Failure{Fault::guest, "answer to REQUEST is neither RESPONSE nor RST: " + vsock_guest::describe(*p)};
    }
    return p;
  }
}

std::string StreamPump::state() const {
  return fmt::format(
      "guest->host {}/{} sent, {}/{} read by the host; host->guest {}/{} written, {}/{} received by the guest; "
      "guest credit {} (tx_cnt {}, device buf_alloc {} fwd_cnt {}); device credit requests {}, updates {}",
      g2h_sent, g2h.size(), host_received.size(), g2h.size(), h2g_written, h2g.size(), guest_received.size(),
      h2g.size(), conn.peer_free(), conn.tx_cnt, conn.peer_buf_alloc, conn.peer_fwd_cnt, credit_requests_received,
      credit_updates_received);
}

Result<bool> StreamPump::handle_inbox() {
  using namespace vsock_guest;
  bool any = false;
  auto& inbox = guest.inbox();
  while (!inbox.empty()) {
    Packet p = std::move(inbox.front());
    inbox.pop_front();
    any = true;
    if (!conn.matches(p)) return Failure{Fault::guest, "packet for another socket: " + describe(p)};
    if (auto ok = conn.on_packet(p); !ok) return ok.error();
    switch (p.op) {
      case op_rw:
        guest_received.insert(guest_received.end(), p.payload.begin(), p.payload.end());
        if (guest_consumes) conn.consume(p.len);
        break;
      case op_credit_update: ++credit_updates_received; break;
      case op_credit_request:
        ++credit_requests_received;
        if (auto ok = guest.send(conn.make(op_credit_update)); !ok) return ok.error();
        break;
      default:
        return Failure{Fault::guest, fmt::format("unexpected {} in the middle of the streams ({})", describe(p), state())};
    }
  }
  if (conn.update_due()) {
    if (auto ok = guest.send(conn.make(op_credit_update)); !ok) return ok.error();
  }
  return any;
}

Result<bool> StreamPump::step() {
  using namespace vsock_guest;
  bool progress = false;
  auto got = guest.collect();
  if (!got) return got.error();
  progress |= *got;
  auto handled = handle_inbox();
  if (!handled) return handled.error();
  progress |= *handled;

  // The guest sends what its credit allows (5.10.6.3), then waits for a CREDIT_UPDATE.
  bool blocked = false;
  while (g2h_sent < g2h.size()) {
    const std::uint32_t credit = conn.peer_free();
    if (credit == 0) {
      blocked = true;
      break;
    }
    const std::size_t n = std::min<std::size_t>({credit, max_packet, g2h.size() - g2h_sent});
    const Conn before = conn;
    Packet p = conn.make(op_rw, std::span(g2h).subspan(g2h_sent, n));
    auto sent = guest.try_send(p, shape(n, packets_sent));
    if (!sent) return sent.error();
    if (!*sent) {
      conn = before;  // the tx ring is full: try again after it drained
      break;
    }
    g2h_sent += n;
    ++packets_sent;
    progress = true;
  }
  if (blocked && !out_of_credit) ++credit_waits;
  out_of_credit = blocked;

  // The host application.
  while (h2g_written < h2g.size()) {
    const std::size_t n = std::min(host_chunk, h2g.size() - h2g_written);
    const ssize_t w = ::send(host_fd, h2g.data() + h2g_written, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (w > 0) {
      h2g_written += static_cast<std::size_t>(w);
      progress = true;
      continue;
    }
    if (w < 0 && errno != EAGAIN && errno != EINTR) return io_error("host send");
    break;
  }
  if (host_reads && (host_reads_eagerly || blocked)) {
    std::byte buf[65536];
    for (;;) {
      const ssize_t r = ::recv(host_fd, buf, sizeof buf, MSG_DONTWAIT);
      if (r > 0) {
        host_received.insert(host_received.end(), buf, buf + r);
        progress = true;
        continue;
      }
      if (r == 0) return Failure{Fault::closed, "host socket: EOF in the middle of the stream (" + state() + ")"};
      if (errno != EAGAIN && errno != EINTR) return io_error("host recv");
      break;
    }
  }
  return progress;
}

Result<void> StreamPump::run(std::chrono::milliseconds timeout) {
  return run_until([this] { return done(); }, timeout);
}

Result<void> StreamPump::run_until(const std::function<bool()>& until, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (!until()) {
    auto progress = step();
    if (!progress) return progress.error();
    if (*progress || until()) continue;
    if (Clock::now() >= deadline) {
      return Failure{Fault::timeout, fmt::format("streams incomplete after {} ms: {}", timeout.count(), state())};
    }
    const bool reading = host_reads && (host_reads_eagerly || (g2h_sent < g2h.size() && conn.peer_free() == 0));
    const auto events = static_cast<short>((reading ? POLLIN : 0) | (h2g_written < h2g.size() ? POLLOUT : 0));
    pollfd host{events != 0 ? host_fd : -1, events, 0};  // -1: not watched (a HUP would wake us for nothing)
    if (auto ok = guest.wait(std::span(&host, 1), deadline); !ok) return ok;
  }
  return {};
}

Result<std::vector<std::byte>> guest_receive(Guest& guest, Conn& conn, std::size_t n, std::chrono::milliseconds timeout) {
  using namespace vsock_guest;
  const auto deadline = Clock::now() + timeout;
  std::vector<std::byte> out;
  for (;;) {
    if (auto got = guest.collect(); !got) return got.error();
    auto& inbox = guest.inbox();
    while (out.size() < n && !inbox.empty()) {
      Packet p = std::move(inbox.front());
      inbox.pop_front();
      if (!conn.matches(p)) return Failure{Fault::guest, "packet for another socket: " + describe(p)};
      if (auto ok = conn.on_packet(p); !ok) return ok.error();
      switch (p.op) {
        case op_rw:
          if (out.size() + p.len > n) {
            return Failure{Fault::guest, fmt::format("{} bytes beyond the {} expected: {}", out.size() + p.len - n, n, describe(p))};
          }
          out.insert(out.end(), p.payload.begin(), p.payload.end());
          conn.consume(p.len);
          break;
        case op_credit_update: break;
        case op_credit_request:
          if (auto ok = guest.send(conn.make(op_credit_update)); !ok) return ok.error();
          break;
        default:
          return Failure{Fault::guest, fmt::format("{} after {} of {} bytes", describe(p), out.size(), n)};
      }
    }
    if (conn.update_due()) {
      if (auto ok = guest.send(conn.make(op_credit_update)); !ok) return ok.error();
    }
    if (out.size() >= n) return out;
    if (Clock::now() >= deadline) {
      return Failure{Fault::timeout, fmt::format("guest received {} of {} bytes in {} ms", out.size(), n, timeout.count())};
    }
    if (auto ok = guest.wait({}, deadline); !ok) return ok.error();
  }
}

Result<Packet> guest_expect(Guest& guest, Conn& conn, std::chrono::milliseconds timeout) {
  using namespace vsock_guest;
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    auto p = guest.next(std::max(left, std::chrono::milliseconds(0)));
    if (!p) return p.error();
    if (!conn.matches(*p)) return Failure{Fault::guest, "packet for another socket: " + describe(*p)};
    if (auto ok = conn.on_packet(*p); !ok) return ok.error();
    if (p->op == op_credit_update) continue;
    if (p->op == op_credit_request) {
      if (auto ok = guest.send(conn.make(op_credit_update)); !ok) return ok.error();
      continue;
    }
    return p;
  }
}

Result<void> guest_send(Guest& guest, Conn& conn, std::span<const std::byte> payload, std::uint32_t last_flags,
                        std::size_t fragment, std::chrono::milliseconds timeout) {
  using namespace vsock_guest;
  const auto deadline = Clock::now() + timeout;
  std::size_t sent = 0;
  while (sent < payload.size()) {
    if (auto got = guest.collect(); !got) return got.error();
    auto& inbox = guest.inbox();
    while (!inbox.empty()) {
      Packet p = std::move(inbox.front());
      inbox.pop_front();
      if (!conn.matches(p)) return Failure{Fault::guest, "packet for another socket: " + describe(p)};
      if (auto ok = conn.on_packet(p); !ok) return ok.error();
      if (p.op == op_credit_request) {
        if (auto ok = guest.send(conn.make(op_credit_update)); !ok) return ok.error();
      } else if (p.op != op_credit_update) {
        return Failure{Fault::guest, fmt::format("{} while sending ({} of {} bytes sent)", describe(p), sent, payload.size())};
      }
    }
    const std::uint32_t credit = conn.peer_free();
    if (credit > 0) {
      const std::size_t n = std::min<std::size_t>({credit, fragment, payload.size() - sent});
      const bool last = sent + n == payload.size();
      if (auto ok = guest.send(conn.make(op_rw, payload.subspan(sent, n), last ? last_flags : 0)); !ok) return ok;
      sent += n;
      continue;
    }
    if (Clock::now() >= deadline) {
      return Failure{Fault::timeout, fmt::format("guest out of credit for {} ms with {} of {} bytes sent (device "
                                                 "buf_alloc {}, fwd_cnt {}, guest tx_cnt {})",
                                                 timeout.count(), sent, payload.size(), conn.peer_buf_alloc,
                                                 conn.peer_fwd_cnt, conn.tx_cnt)};
    }
    if (auto ok = guest.wait({}, deadline); !ok) return ok;
  }
  return {};
}

vsock_guest::TxShape rotating_shape(std::size_t payload, std::size_t n) {
  switch (n % 4) {
    case 0: return vsock_guest::one_buffer(payload);
    case 1: return vsock_guest::header_apart(payload);
    case 2: return vsock_guest::linux_paged(payload);
    default: return vsock_guest::split_header(payload);
  }
}

Result<Established> establish(VsockVm& vm, std::uint32_t host_port, std::uint32_t guest_port, std::uint32_t buf_alloc,
                              int type) {
  return establish_at(vm.guest(), vm.options_.cid, vm.backend.port_path(host_port), host_port, guest_port, buf_alloc,
                      type);
}

Result<Established> establish_at(vsock_guest::Guest& guest, std::uint64_t cid, const std::filesystem::path& path,
                                 std::uint32_t host_port, std::uint32_t guest_port, std::uint32_t buf_alloc, int type) {
  Established e;
  auto listener = listen_at(path, type);
  if (!listener) return listener.error();
  e.listener = std::move(*listener);
  e.conn = Conn{.cid = cid,
                .port = guest_port,
                .peer_port = host_port,
                .type = type == SOCK_STREAM ? vsock_guest::type_stream : vsock_guest::type_seqpacket,
                .buf_alloc = buf_alloc};
  auto answer = guest_connect(guest, e.conn);
  if (!answer) return answer.error();
  if (answer->op != vsock_guest::op_response) {
    return Failure{Fault::guest, "connect refused: " + vsock_guest::describe(*answer)};
  }
  auto host = accept_within(e.listener.get());
  if (!host) return host.error();
  e.host = std::move(*host);
  return e;
}

}  // namespace vusim::vsock_test
