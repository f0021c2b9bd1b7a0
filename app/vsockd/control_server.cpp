#include "control_server.hpp"

#include <sys/stat.h>

#include <atomic>
#include <string>

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/json/serialize.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "control_protocol.hpp"
#include "vhostuser/server.hpp"

namespace vsockd {
namespace asio = boost::asio;
using local_stream = asio::local::stream_protocol;

namespace {

/// One client: read the request line, answer, close.
class Client : public std::enable_shared_from_this<Client> {
 public:
  Client(local_stream::socket socket, Daemon& daemon, std::shared_ptr<std::atomic<std::size_t>> clients)
      : socket_(std::move(socket)), timer_(socket_.get_executor()), daemon_(daemon), clients_(std::move(clients)) {}
  ~Client() { release_slot(); }

  void start() {
    timer_.expires_after(ControlServer::request_timeout);
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (!ec) self->socket_.close(ec);  // cancels the read
    });
    asio::async_read_until(socket_, asio::dynamic_buffer(line_, control::max_request + 1), '\n',
                           [self = shared_from_this()](boost::system::error_code ec, std::size_t n) {
                             self->timer_.cancel();
                             if (ec == asio::error::not_found) return self->answer(control::error_reply("request too long"));
                             if (ec) return;  // the client went away, or timed out
                             self->line_.resize(n - 1);
                             self->dispatch();
                           });
  }

 private:
  void dispatch() {
    auto request = control::parse_request(line_);
    if (!request) return answer(control::error_reply(request.error().message));
    // Changes are worth a line in the log; reports (scraped every few seconds) are not.
    const bool report = request->command == control::Command::list || request->command == control::Command::stats ||
                        request->command == control::Command::metrics;
    spdlog::log(report ? spdlog::level::debug : spdlog::level::info, "control: {}", line_);
    auto self = shared_from_this();
    // Answers come on the daemon's strand; the write goes back to this client's executor.
    auto reply_void = [self](const config::Result<void>& r) {
      self->answer(r ? control::ok_reply("") : control::error_reply(r.error().message));
    };
    const auto& args = request->args;
    std::uint64_t cid = 0;
    if (request->command == control::Command::stats || request->command == control::Command::remove ||
        request->command == control::Command::groups) {
      auto parsed = control::parse_cid(args[0]);
      if (!parsed) return answer(control::error_reply(parsed.error().message));
      cid = *parsed;
    }
    switch (request->command) {
      case control::Command::list:
        return daemon_.list(false, [self](std::vector<VmSnapshot> vms) { self->answer(control::ok_reply(list_json(vms))); });
      case control::Command::metrics:
        return daemon_.list(false, [self](std::vector<VmSnapshot> vms) { self->answer(control::ok_reply(to_prometheus(vms))); });
      case control::Command::stats:
        return daemon_.stats(cid, [self](config::Result<VmSnapshot> vm) {
          self->answer(vm ? control::ok_reply(boost::json::serialize(to_json(*vm, true)) + "\n")
                          : control::error_reply(vm.error().message));
        });
      case control::Command::add: return daemon_.add(args[0], reply_void);
      case control::Command::remove: return daemon_.remove(cid, reply_void);
      case control::Command::groups: return daemon_.set_groups(cid, args[1], reply_void);
      case control::Command::reload:
        return daemon_.reload([self](config::Result<std::string> r) {
          self->answer(r ? control::ok_reply(*r) : control::error_reply(r.error().message));
        });
    }
  }

  /// Any thread: the write runs on the client's own executor.
  void answer(std::string reply) {
    asio::post(socket_.get_executor(), [self = shared_from_this(), reply = std::move(reply)]() mutable {
      self->reply_ = std::move(reply);
      asio::async_write(self->socket_, asio::buffer(self->reply_),
                        [self](boost::system::error_code, std::size_t) {
                          // Before the client can see EOF: a client that got its answer
                          // may connect again at once and must find its slot free.
                          self->release_slot();
                          boost::system::error_code ignored;
                          self->socket_.shutdown(local_stream::socket::shutdown_both, ignored);
                        });
    });
  }

  void release_slot() {
    if (!released_.exchange(true)) clients_->fetch_sub(1);
  }

  local_stream::socket socket_;
  asio::steady_timer timer_;
  Daemon& daemon_;
  std::shared_ptr<std::atomic<std::size_t>> clients_;
  std::string line_;
  std::string reply_;
  std::atomic<bool> released_{false};
};

}  // namespace

class ControlServer::Impl : public std::enable_shared_from_this<Impl> {
 public:
  Impl(asio::io_context& io, std::filesystem::path path, Daemon& daemon, vhostuser::UniqueFd fd)
      : io_(io), acceptor_(asio::make_strand(io)), path_(std::move(path)), daemon_(daemon) {
    acceptor_.assign(local_stream(), fd.release());
  }

  void accept() {
    // Each client on a strand of its own: its timer and its socket never race.
    acceptor_.async_accept(asio::make_strand(io_), [self = shared_from_this()](boost::system::error_code ec,
                                                                                local_stream::socket socket) {
      if (ec == asio::error::operation_aborted || !self->acceptor_.is_open()) return;
      if (!ec) {
        if (self->clients_->fetch_add(1) >= max_clients) {
          self->clients_->fetch_sub(1);
          spdlog::warn("control: {} clients at once, refusing one more", max_clients);
        } else {
          std::make_shared<Client>(std::move(socket), self->daemon_, self->clients_)->start();
        }
      } else {
        spdlog::warn("control: accept failed: {}", ec.message());
      }
      self->accept();
    });
  }

  void close() {
    asio::post(acceptor_.get_executor(), [self = shared_from_this()] {
      if (!self->acceptor_.is_open()) return;
      boost::system::error_code ignored;
      self->acceptor_.close(ignored);
      std::filesystem::remove(self->path_, ignored);
    });
  }

  asio::io_context& io_;
  local_stream::acceptor acceptor_;
  std::filesystem::path path_;
  Daemon& daemon_;
  std::shared_ptr<std::atomic<std::size_t>> clients_ = std::make_shared<std::atomic<std::size_t>>(0);
};

config::Result<std::unique_ptr<ControlServer>> ControlServer::listen(asio::io_context& io, std::filesystem::path path,
                                                                    Daemon& daemon) {
  // The file gets its mode at bind(): with this umask, 0600. Before the worker threads
  // exist, nothing else creates files meanwhile.
  const mode_t old_mask = ::umask(0177);
  auto fd = vhostuser::bind_unix_listener(path);
  ::umask(old_mask);
  if (!fd) {
    if (fd.error() == boost::system::errc::address_in_use) {
      return config::Error{fmt::format("control socket {}: another process listens on it", path.native())};
    }
    return config::Error{fmt::format("control socket {}: {}", path.native(), fd.error().message())};
  }
  return std::unique_ptr<ControlServer>(
      new ControlServer(std::make_shared<Impl>(io, std::move(path), daemon, std::move(*fd))));
}

ControlServer::ControlServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}
ControlServer::~ControlServer() {
  // The io_context has stopped by now (or never ran): close directly.
  boost::system::error_code ignored;
  impl_->acceptor_.close(ignored);
  std::filesystem::remove(impl_->path_, ignored);
}
void ControlServer::start() { impl_->accept(); }
void ControlServer::close() { impl_->close(); }

}  // namespace vsockd
