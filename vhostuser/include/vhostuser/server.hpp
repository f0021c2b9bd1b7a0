#pragma once
// Serves one device on one vhost-user socket, with Boost.Asio.
//
// The back-end listens and the front-end connects (QEMU's `-chardev socket,path=...`). One
// front-end is served at a time: a second connection while one is active is accepted and
// closed at once with a log line, so it fails clearly instead of hanging in the backlog.
// When the front-end goes away the session is reset and the next connection on the same
// socket starts from scratch, without restarting the process.
//
// All work of one server (socket, kicks, device callbacks) runs on the executor it is given;
// give each server its own strand to run many of them on a thread pool.
#include <sys/socket.h>

#include <filesystem>
#include <memory>
#include <string>

#include <boost/asio/any_io_executor.hpp>

#include "vhostuser/device.hpp"
#include "vhostuser/errors.hpp"

namespace vhostuser {

class Server {
 public:
  /// Binds and listens on `path`. An existing file there is replaced only if it is a socket
  /// nobody listens on (a stale socket of a dead process); anything else is an error.
  static Result<std::unique_ptr<Server>> listen(boost::asio::any_io_executor executor,
                                                std::filesystem::path path, Device& device);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  /// Starts accepting front-ends.
  void start();
  /// Stops accepting, drops the current front-end (resetting the device) and removes the
  /// socket file. Must be called on the server's executor.
  void close();

  [[nodiscard]] const std::filesystem::path& path() const;
  /// Number of front-ends served so far (connections that were not refused).
  [[nodiscard]] std::size_t connections_served() const;
  /// Whether a front-end is connected now.
  [[nodiscard]] bool frontend_connected() const;

  class Impl;

 private:
  explicit Server(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

/// Binds a listening, non-blocking AF_UNIX socket of `type` (SOCK_STREAM or SOCK_SEQPACKET)
/// at `path`, with the stale-socket rule above.
Result<UniqueFd> bind_unix_listener(const std::filesystem::path& path, int type = SOCK_STREAM);

}  // namespace vhostuser
