#include "vhostuser/server.hpp"

#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <spdlog/spdlog.h>

#include "vhostuser/session.hpp"
#include "vhostuser/transport.hpp"

namespace vhostuser {
namespace {

namespace asio = boost::asio;
using local_stream = asio::local::stream_protocol;

boost::system::error_code errno_code(int e) { return {e, boost::system::system_category()}; }

Result<sockaddr_un> unix_address(const std::filesystem::path& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string& s = path.native();
  if (s.empty() || s.size() >= sizeof addr.sun_path) return errno_code(ENAMETOOLONG);
  std::memcpy(addr.sun_path, s.c_str(), s.size() + 1);
  return addr;
}

/// One front-end connection: frames messages for the session, sends replies, watches kicks.
class Connection final : public std::enable_shared_from_this<Connection>, public KickWatcher {
 public:
  Connection(local_stream::socket socket, std::string name, Device& device,
             std::function<void()> on_closed)
      : socket_(std::move(socket)),
        name_(std::move(name)),
        session_(name_, device, *this),
        on_closed_(std::move(on_closed)) {}

  void start() { wait_readable(); }

  /// Drops the front-end: the session resets (device back to initial state).
  void close() {
    if (closed_) return;
    closed_ = true;
    session_.reset();
    boost::system::error_code ignored;
    socket_.close(ignored);
    if (on_closed_) std::exchange(on_closed_, nullptr)();
  }

  void watch_kick(std::uint16_t index, int fd) override {
    unwatch_kick(index);
    if (kicks_.size() <= index) kicks_.resize(index + 1);
    // The session owns the fd; the descriptor only borrows it and releases it unclosed.
    kicks_[index] = std::make_unique<asio::posix::stream_descriptor>(socket_.get_executor(), fd);
    wait_kick(index, kicks_[index].get());
  }

  void unwatch_kick(std::uint16_t index) override {
    if (index >= kicks_.size() || !kicks_[index]) return;
    boost::system::error_code ignored;
    kicks_[index]->cancel(ignored);
    (void)kicks_[index]->release();
    kicks_[index].reset();
  }

 private:
  void wait_readable() {
    socket_.async_wait(local_stream::socket::wait_read,
                       [self = shared_from_this()](boost::system::error_code ec) {
                         if (ec || self->closed_) return;
                         self->on_readable();
                       });
  }

  void on_readable() {
    for (;;) {
      auto msg = reader_.read(socket_.native_handle());
      if (!msg) {
        if (msg.error() == Errc::peer_closed) {
          spdlog::info("{}: front-end disconnected", name_);
        } else {
          spdlog::warn("{}: dropping front-end: {}", name_, msg.error().message());
        }
        close();
        return;
      }
      if (!*msg) break;  // would block: wait for more
      auto reply = session_.handle(std::move(**msg));
      if (!reply) {
        spdlog::warn("{}: dropping front-end after refused request", name_);
        close();
        return;
      }
      if (!reply->empty()) {
        if (auto sent = send_message(socket_.native_handle(), *reply); !sent) {
          spdlog::warn("{}: dropping front-end: reply not sent: {}", name_, sent.error().message());
          close();
          return;
        }
      }
    }
    wait_readable();
  }

  void wait_kick(std::uint16_t index, asio::posix::stream_descriptor* desc) {
    desc->async_wait(asio::posix::stream_descriptor::wait_read,
                     [self = shared_from_this(), index, desc](boost::system::error_code ec) {
                       // A replaced or removed watch completes with operation_aborted; the
                       // pointer check also catches a watch replaced in the same turn.
                       if (ec || self->closed_ || index >= self->kicks_.size() ||
                           self->kicks_[index].get() != desc) {
                         return;
                       }
                       self->on_kick(index, desc);
                     });
  }

  void on_kick(std::uint16_t index, asio::posix::stream_descriptor* desc) {
    eventfd_t value;
    if (::eventfd_read(desc->native_handle(), &value) != 0 && errno != EAGAIN) {
      // Not an eventfd, or a closed pipe that would stay readable forever: stop watching
      // rather than spin. The ring keeps working on the kicks that still reach it.
      spdlog::warn("{}: vring {}: kick fd unreadable ({}), no longer watched", name_, index,
                   std::strerror(errno));
      unwatch_kick(index);
      return;
    }
    session_.kick(index);
    if (index < kicks_.size() && kicks_[index].get() == desc) wait_kick(index, desc);
  }

  local_stream::socket socket_;
  std::string name_;
  MessageReader reader_;
  std::vector<std::unique_ptr<asio::posix::stream_descriptor>> kicks_;  // before session_:
  Session session_;  // its destructor unwatches kicks
  std::function<void()> on_closed_;
  bool closed_ = false;
};

}  // namespace

class Server::Impl : public std::enable_shared_from_this<Server::Impl> {
 public:
  Impl(asio::any_io_executor executor, std::filesystem::path path, Device& device, UniqueFd fd)
      : acceptor_(executor), path_(std::move(path)), device_(device) {
    acceptor_.assign(local_stream(), fd.release());
  }

  void accept() {
    acceptor_.async_accept([self = shared_from_this()](boost::system::error_code ec,
                                                       local_stream::socket socket) {
      if (ec == asio::error::operation_aborted || !self->acceptor_.is_open()) return;
      if (ec) {
        spdlog::warn("{}: accept failed: {}", self->path_.native(), ec.message());
      } else {
        self->on_accepted(std::move(socket));
      }
      self->accept();
    });
  }

  void on_accepted(local_stream::socket socket) {
    if (active_) {
      spdlog::warn("{}: refusing a second front-end while one is connected", path_.native());
      return;  // socket closes as it goes out of scope
    }
    ++served_;
    spdlog::info("{}: front-end connected", path_.native());
    active_ = std::make_shared<Connection>(std::move(socket), path_.native(), device_,
                                           [weak = weak_from_this()] {
                                             if (auto self = weak.lock()) self->active_.reset();
                                           });
    active_->start();
  }

  void close() {
    boost::system::error_code ignored;
    acceptor_.close(ignored);
    if (active_) active_->close();  // resets active_ through its callback
    std::filesystem::remove(path_, ignored);
  }

  local_stream::acceptor acceptor_;
  std::filesystem::path path_;
  Device& device_;
  std::shared_ptr<Connection> active_;
  std::size_t served_ = 0;
};

Result<UniqueFd> bind_unix_listener(const std::filesystem::path& path, int type) {
  auto addr = unix_address(path);
  if (!addr) return addr.error();

  std::error_code ec;
  const auto status = std::filesystem::symlink_status(path, ec);
  if (std::filesystem::exists(status)) {
    if (!std::filesystem::is_socket(status)) return errno_code(EEXIST);
    // A socket file: live if somebody accepts connections on it, stale if refused.
    UniqueFd probe{::socket(AF_UNIX, type | SOCK_CLOEXEC, 0)};
    if (!probe) return errno_code(errno);
    if (::connect(probe.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) == 0) {
      return errno_code(EADDRINUSE);
    }
    if (errno != ECONNREFUSED) return errno_code(errno);
    if (::unlink(path.c_str()) != 0) return errno_code(errno);
  }

  UniqueFd fd{::socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)};
  if (!fd) return errno_code(errno);
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0) {
    return errno_code(errno);
  }
  if (::listen(fd.get(), SOMAXCONN) != 0) return errno_code(errno);
  return fd;
}

Result<std::unique_ptr<Server>> Server::listen(asio::any_io_executor executor,
                                               std::filesystem::path path, Device& device) {
  auto fd = bind_unix_listener(path);
  if (!fd) return fd.error();
  auto impl = std::make_shared<Impl>(std::move(executor), std::move(path), device, std::move(*fd));
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

Server::Server(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() { impl_->close(); }
void Server::start() { impl_->accept(); }
void Server::close() { impl_->close(); }
const std::filesystem::path& Server::path() const { return impl_->path_; }
std::size_t Server::connections_served() const { return impl_->served_; }
bool Server::frontend_connected() const { return impl_->active_ != nullptr; }

}  // namespace vhostuser
