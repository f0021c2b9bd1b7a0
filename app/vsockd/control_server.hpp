#pragma once
// The control socket: an AF_UNIX stream socket speaking control_protocol.hpp, answered by a
// Daemon.
//
// The socket file is created with mode 0600, so only the daemon's user (and root) may
// control it; an operator who wants a group to have access changes the file's group and
// mode after start-up. A stale socket file of a dead daemon is replaced, a live one is not
// (vhostuser::bind_unix_listener's rule).
//
// A client that does not finish its request line within request_timeout is disconnected,
// and at most max_clients are served at once (more are closed at once), so a stuck or
// hostile client cannot hold the daemon's control or its memory.
#include <chrono>
#include <filesystem>
#include <memory>

#include <boost/asio/io_context.hpp>

#include "config/daemon_config.hpp"
#include "daemon.hpp"

namespace vsockd {

class ControlServer {
 public:
  static constexpr std::chrono::seconds request_timeout{10};
  static constexpr std::size_t max_clients = 16;

  /// Binds and listens at `path`; call before the worker threads run (the socket's mode is
  /// set through the process umask).
  static config::Result<std::unique_ptr<ControlServer>> listen(boost::asio::io_context& io,
                                                               std::filesystem::path path, Daemon& daemon);
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  void start();
  /// Stops accepting and removes the socket file (clients being answered finish). Any thread.
  void close();

  class Impl;

 private:
  explicit ControlServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace vsockd
