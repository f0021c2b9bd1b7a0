#include "vsock/host_side.hpp"

#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <boost/asio/post.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <spdlog/spdlog.h>

#include "vhostuser/liveness.hpp"
#include "vhostuser/server.hpp"
#include "vsock/connect_parser.hpp"

namespace vsock {
namespace {

namespace asio = boost::asio;
using vhostuser::UniqueFd;

constexpr const char* type_name(Type t) { return t == Type::stream ? "stream" : "seqpacket"; }

int socket_type(Type t) { return t == Type::stream ? SOCK_STREAM : SOCK_SEQPACKET; }

/// A descriptor watcher that borrows an fd owned elsewhere and never closes it.
class Watch {
 public:
  Watch(asio::any_io_executor ex, int fd) : desc_(ex, fd) {}
  ~Watch() {
    boost::system::error_code ignored;
    desc_.cancel(ignored);
    (void)desc_.release();
  }
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;
  asio::posix::stream_descriptor& operator*() { return desc_; }

 private:
  asio::posix::stream_descriptor desc_;
};

}  // namespace

// --- listeners -------------------------------------------------------------------------

class HostSide::Listener {
 public:
  Listener(HostSide& host, UniqueFd fd, std::filesystem::path path, Type type)
      : host_(host), fd_(std::move(fd)), watch_(host.executor_, fd_.get()), path_(std::move(path)), type_(type) {}
  ~Listener() {
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }

  void start() {
    (*watch_).async_wait(asio::posix::stream_descriptor::wait_read, live_.guard([this](boost::system::error_code ec) {
      if (ec) return;
      for (;;) {
        UniqueFd client{::accept4(fd_.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)};
        if (!client) {
          if (errno != EAGAIN && errno != EINTR) spdlog::warn("{}: accept: {}", path_.native(), std::strerror(errno));
          break;
        }
        host_.on_accepted(std::move(client), type_);
      }
      start();
    }));
  }

 private:
  vhostuser::Liveness live_;
  HostSide& host_;
  UniqueFd fd_;
  Watch watch_;
  std::filesystem::path path_;
  Type type_;
};

// --- the CONNECT handshake of a host client --------------------------------------------

class HostSide::Handshake {
 public:
  Handshake(HostSide& host, UniqueFd fd, Type type)
      : host_(host), fd_(std::move(fd)), type_(type), watch_(host.executor_, fd_.get()), timer_(host.executor_) {}

  void start() {
    // A client that never finishes its line would hold an fd and a connection slot.
    timer_.expires_after(host_.config_.connect_timeout);
    timer_.async_wait(live_.guard([this](boost::system::error_code ec) {
      if (ec) return;
      fail("no complete CONNECT line within the connect timeout");
    }));
    wait();
  }

  UniqueFd take_fd() { return std::move(fd_); }
  [[nodiscard]] Type type() const { return type_; }

 private:
  void wait() {
    (*watch_).async_wait(asio::posix::stream_descriptor::wait_read, live_.guard([this](boost::system::error_code ec) {
      if (ec) return;
      on_readable();
    }));
  }

  void on_readable() {
    std::byte buf[ConnectParser::max_line];
    if (type_ == Type::seqpacket) {
      // One message carries the whole command; anything after its newline is an error.
      const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) return wait();
      if (n <= 0) return fail("closed before CONNECT");
      if (static_cast<std::size_t>(n) > sizeof buf) return fail("CONNECT message too long");
      auto [used, outcome] = parser_.feed({buf, static_cast<std::size_t>(n)});
      if (used != static_cast<std::size_t>(n) && std::holds_alternative<ConnectParser::Done>(outcome)) {
        return fail("bytes after the CONNECT line in the same message");
      }
      return finish(outcome);
    }
    // Stream: peek, parse, then consume exactly the command; bytes after the newline stay
    // in the socket as the start of the payload.
    const ssize_t n = ::recv(fd_.get(), buf, parser_.budget(), MSG_DONTWAIT | MSG_PEEK);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return wait();
    if (n < 0) return fail(std::strerror(errno));
    if (n == 0) return fail("closed before the end of the CONNECT line");
    auto [used, outcome] = parser_.feed({buf, static_cast<std::size_t>(n)});
    if (::recv(fd_.get(), buf, used, MSG_DONTWAIT) != static_cast<ssize_t>(used)) {
      return fail("socket changed under a peek");
    }
    if (std::holds_alternative<ConnectParser::NeedMore>(outcome)) return wait();
    finish(outcome);
  }

  void finish(const ConnectParser::Outcome& outcome) {
    if (const auto* invalid = std::get_if<ConnectParser::Invalid>(&outcome)) return fail(invalid->why);
    if (std::holds_alternative<ConnectParser::NeedMore>(outcome)) return fail("incomplete CONNECT message");
    timer_.cancel();
    host_.on_connect_line(*this, std::get<ConnectParser::Done>(outcome).port);  // destroys *this
  }

  void fail(const std::string& why) {
    spdlog::warn("{}: host client dropped: {}", host_.config_.uds_path.native(), why);
    host_.handshakes_.erase(this);  // destroys *this: nothing may follow
  }

  vhostuser::Liveness live_;
  HostSide& host_;
  UniqueFd fd_;
  Type type_;
  Watch watch_;
  asio::steady_timer timer_;
  ConnectParser parser_;
};

// --- connections -------------------------------------------------------------------------

struct HostSide::Entry {
  Entry(asio::any_io_executor ex, Connection c) : conn(std::move(c)), watch(ex, conn.fd()), timer(ex) {}
  vhostuser::Liveness live;  // handlers below run only while the entry exists
  Connection conn;
  Watch watch;  // declared after conn: released before conn closes the fd
  asio::steady_timer timer;
  bool read_armed = false;
  bool write_armed = false;
  std::optional<Connection::Clock::time_point> timer_at;
  bool queued = false;
};

HostSide::HostSide(asio::any_io_executor executor, const DeviceConfig& config, DeviceCounters& counters,
                   std::function<void()> rx_wanted)
    : executor_(std::move(executor)),
      config_(config),
      counters_(counters),
      limits_{config.tx_buffer_size, config.connect_timeout, config.shutdown_timeout, config.guest_ready_timeout},
      rx_wanted_(std::move(rx_wanted)) {}

HostSide::~HostSide() { close(); }

vhostuser::Result<void> HostSide::listen() {
  const std::filesystem::path seq_path = config_.uds_path.native() + "_seqpacket";
  auto stream = vhostuser::bind_unix_listener(config_.uds_path, SOCK_STREAM);
  if (!stream) return stream.error();
  auto seq = vhostuser::bind_unix_listener(seq_path, SOCK_SEQPACKET);
  if (!seq) {
    std::error_code ignored;
    std::filesystem::remove(config_.uds_path, ignored);
    return seq.error();
  }
  stream_listener_ = std::make_unique<Listener>(*this, std::move(*stream), config_.uds_path, Type::stream);
  seqpacket_listener_ = std::make_unique<Listener>(*this, std::move(*seq), seq_path, Type::seqpacket);
  stream_listener_->start();
  seqpacket_listener_->start();
  return {};
}

void HostSide::close() {
  stream_listener_.reset();
  seqpacket_listener_.reset();
  handshakes_.clear();
  drop_all_connections();
}

void HostSide::drop_all_connections() {
  for (const auto& [key, entry] : connections_) counters_.credit_stalls += entry->conn.counters().credit_stalls;
  connections_.clear();
  rx_ready_.clear();
}

std::vector<HostSide::ConnectionInfo> HostSide::connections() const {
  std::vector<ConnectionInfo> out;
  out.reserve(connections_.size());
  for (const auto& [key, entry] : connections_) {
    const Connection& c = entry->conn;
    out.push_back({c.endpoints(), c.state(), c.counters(), c.pending_tx_bytes()});
  }
  return out;
}

std::uint64_t HostSide::credit_stalls() const {
  std::uint64_t live = 0;
  for (const auto& [key, entry] : connections_) live += entry->conn.counters().credit_stalls;
  return counters_.credit_stalls + live;
}

bool HostSide::admit(const char* who) const {
  const std::size_t live = connections_.size() + handshakes_.size();
  const std::uint64_t reserved = std::uint64_t{live + 1} * config_.tx_buffer_size;
  if (live >= config_.max_connections || reserved > config_.max_buffered_bytes) {
    counters_.count(Drop::connection_limit);
    spdlog::warn("{}: {} refused: {} connections (max {}), {} buffer bytes reserved (max {})",
                 config_.uds_path.native(), who, live, config_.max_connections, reserved - config_.tx_buffer_size,
                 config_.max_buffered_bytes);
    return false;
  }
  return true;
}

void HostSide::on_accepted(UniqueFd fd, Type type) {
  if (!admit("host client")) return;  // fd closes: the client reads EOF at once
  auto handshake = std::make_unique<Handshake>(*this, std::move(fd), type);
  Handshake* raw = handshake.get();
  handshakes_.emplace(raw, std::move(handshake));
  raw->start();
}

void HostSide::on_connect_line(Handshake& handshake, std::uint32_t port) {
  const Type type = handshake.type();
  UniqueFd fd = handshake.take_fd();
  handshakes_.erase(&handshake);
  const Key key{allocate_port(port), port};
  const Connection::Endpoints ends{{cid_host, key.local_port}, {config_.guest_cid, port}, type};
  spdlog::debug("{}: host client connects to guest port {} ({}) as host port {}", config_.uds_path.native(), port,
                type_name(type), key.local_port);
  add(key, Connection::from_host(ends, std::move(fd), limits_));
}

std::uint32_t HostSide::allocate_port(std::uint32_t peer_port) {
  // Host-side ports of host-initiated connections come from [2^30, 2^31), round robin, as
  // in Firecracker and Cloud Hypervisor; a port is skipped while a live connection to the
  // same guest port uses it.
  for (;;) {
    const std::uint32_t port = next_port_;
    next_port_ = next_port_ + 1 == (1u << 31) ? (1u << 30) : next_port_ + 1;
    if (!connections_.contains(Key{port, peer_port})) return port;
  }
}

std::optional<Header> HostSide::connect_to_host(const Header& request) {
  const Type type = static_cast<Type>(request.type);
  const std::string path = config_.uds_path.native() + "_" + std::to_string(request.dst.port);
  if (!admit("guest connection")) return reset_reply(request);
  UniqueFd fd{::socket(AF_UNIX, socket_type(type) | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)};
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (!fd || path.size() >= sizeof addr.sun_path) {
    counters_.count(Drop::host_unreachable);
    return reset_reply(request);
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  // AF_UNIX connect() completes at once: it succeeds, or fails with ENOENT / ECONNREFUSED /
  // EPROTOTYPE (a listener of the other type) / EAGAIN (backlog full). Each failure is an
  // RST now, so the guest's connect() fails in microseconds instead of timing out.
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    spdlog::info("{}: guest port {} -> host {} ({}): {}", config_.uds_path.native(), request.src.port, path,
                 type_name(type), std::strerror(errno));
    counters_.count(Drop::host_unreachable);
    return reset_reply(request);
  }
  const Key key{request.dst.port, request.src.port};
  const Connection::Endpoints ends{request.dst, request.src, type};
  add(key, Connection::from_guest(ends, std::move(fd), limits_, request));
  return std::nullopt;
}

void HostSide::add(Key key, Connection conn) {
  auto [it, inserted] = connections_.try_emplace(key, std::make_unique<Entry>(executor_, std::move(conn)));
  if (!inserted) return;  // cannot happen: keys are checked by the callers
  sync(key);
}

std::optional<Header> HostSide::on_guest_packet(const Header& packet, virtio::ChainReader& payload) {
  const Key key{packet.dst.port, packet.src.port};
  auto it = connections_.find(key);
  if (it == connections_.end() || it->second->conn.endpoints().type != static_cast<Type>(packet.type)) {
    if (packet.is(Op::request) && it == connections_.end()) return connect_to_host(packet);
    // No such connection: answer with RST, but never an RST with an RST (that storm killed
    // reused port pairs in Cloud Hypervisor, PR #8692).
    counters_.count(Drop::no_connection);
    if (packet.is(Op::rst)) return std::nullopt;
    return reset_reply(packet);
  }
  it->second->conn.on_guest_packet(packet, payload);
  sync(key);
  return std::nullopt;
}

std::optional<Header> HostSide::on_bad_packet(const Header& packet, const std::string& why) {
  auto it = connections_.find(Key{packet.dst.port, packet.src.port});
  if (it == connections_.end() || it->second->conn.endpoints().type != static_cast<Type>(packet.type)) {
    return packet.is(Op::rst) ? std::nullopt : std::optional{reset_reply(packet)};
  }
  // The guest broke this connection: the host application must see it end too, not wait
  // for data that will never come.
  if (packet.is(Op::rst)) {
    it->second->conn.abort("malformed RST from the guest");
  } else {
    it->second->conn.reset(why);
  }
  sync(it->first);
  return std::nullopt;
}

std::optional<std::uint32_t> HostSide::produce_rx(const virtio::DescriptorChain& rx) {
  // Round robin: each connection writes one packet, then goes to the back of the line if it
  // has more; no connection starves the others.
  for (std::size_t tries = rx_ready_.size(); tries > 0 && !rx_ready_.empty(); --tries) {
    const Key key = rx_ready_.front();
    rx_ready_.pop_front();
    auto it = connections_.find(key);
    if (it == connections_.end()) continue;
    Entry& e = *it->second;
    e.queued = false;
    const auto written = e.conn.produce_rx(rx);
    sync(key);  // may queue it again, or drop it if finished
    if (written) return written;
  }
  return std::nullopt;
}

void HostSide::guest_reset(const char* why) {
  if (!connections_.empty()) {
    spdlog::info("{}: closing {} connections: {}", config_.uds_path.native(), connections_.size(), why);
  }
  drop_all_connections();
}

void HostSide::sync(const Key& key) {
  auto it = connections_.find(key);
  if (it == connections_.end()) return;
  Entry& e = *it->second;
  Connection& c = e.conn;
  if (c.finished()) {
    if (!c.close_reason().empty()) {
      spdlog::debug("{}: connection {}:{} closed: {}", config_.uds_path.native(), key.local_port, key.peer_port,
                    c.close_reason());
    }
    counters_.credit_stalls += c.counters().credit_stalls;
    connections_.erase(it);  // stale rx_ready_ keys are skipped
    return;
  }
  if (c.want_read() && !e.read_armed) arm_read(key, e);
  if (c.want_write() && !e.write_armed) arm_write(key, e);
  if (c.deadline() != e.timer_at) arm_timer(key, e);
  if (c.has_rx() && !e.queued) {
    e.queued = true;
    rx_ready_.push_back(key);
    asio::post(executor_, live_.guard(rx_wanted_));
  }
}

void HostSide::arm_read(const Key& key, Entry& e) {
  e.read_armed = true;
  (*e.watch).async_wait(asio::posix::stream_descriptor::wait_read,
                        e.live.guard([this, key, &e](boost::system::error_code ec) {
                          if (ec) return;
                          e.read_armed = false;
                          e.conn.on_host_readable();
                          sync(key);
                        }));
}

void HostSide::arm_write(const Key& key, Entry& e) {
  e.write_armed = true;
  (*e.watch).async_wait(asio::posix::stream_descriptor::wait_write,
                        e.live.guard([this, key, &e](boost::system::error_code ec) {
                          if (ec) return;
                          e.write_armed = false;
                          e.conn.on_host_writable();
                          sync(key);
                        }));
}

void HostSide::arm_timer(const Key& key, Entry& e) {
  e.timer_at = e.conn.deadline();
  e.timer.cancel();
  if (!e.timer_at) return;
  e.timer.expires_at(*e.timer_at);
  // A handler of an earlier deadline may still run after this re-arm (it had expired):
  // Connection::on_deadline checks the clock, so it does nothing early.
  e.timer.async_wait(e.live.guard([this, key, &e](boost::system::error_code ec) {
    if (ec) return;
    e.timer_at.reset();
    e.conn.on_deadline();
    sync(key);
  }));
}

}  // namespace vsock
