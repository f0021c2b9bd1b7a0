// vhost-vsockd: the virtio-vsock device of QEMU VMs (`-device vhost-user-vsock-pci`) over
// vhost-user, with hybrid vsock to host applications over AF_UNIX.
//
// Every VM gets its own device and vhost-user server on a strand of one io_context, which a
// fixed pool of worker threads runs (--threads, default: the number of cores): a VM's work is
// serialised on its strand, VMs spread over the threads, and no VM holds a thread while it
// waits. All VMs join one sibling router (VMs sharing a group reach each other). The Daemon
// keeps the table of VMs and changes it at run time (the control socket, SIGHUP).
//
// Startup is all or nothing: the configuration and the paths are checked first, then the
// control socket and each VM are bound; if any cannot be, what was bound is closed again
// (removing its socket files) and the daemon exits with 1. READY=1 is sent once every socket
// listens; SIGINT/SIGTERM close every VM and remove every socket; SIGHUP reloads --config.
//
// `vhost-vsockd ctl ...` is the control socket's client (ctl.hpp).
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <spdlog/spdlog.h>

#include "common/logging.hpp"
#include "common/sd_notify.hpp"
#include "config/daemon_config.hpp"
#include "control_server.hpp"
#include "ctl.hpp"
#include "daemon.hpp"
#include "vsock/router.hpp"

namespace {

namespace config = vsockd::config;

/// SIGHUP and SIGINT/SIGTERM, for the life of the io_context.
void handle_signals(boost::asio::signal_set& signals, vsockd::Daemon& daemon, vsockd::ControlServer* control) {
  signals.async_wait([&signals, &daemon, control](const boost::system::error_code& ec, int signo) {
    if (ec) return;
    if (signo == SIGHUP) {
      spdlog::info("SIGHUP: reloading the configuration");
      daemon.reload([](const config::Result<std::string>&) {});  // the daemon logs the outcome
      return handle_signals(signals, daemon, control);
    }
    spdlog::info("signal {}: shutting down", signo);
    app::sd_notify("STOPPING=1");
    if (control != nullptr) control->close();
    daemon.shutdown();  // closes every VM, then stops the io_context
  });
}

}  // namespace

int main(int argc, char** argv) {
  const std::span<const char* const> args(argv, static_cast<std::size_t>(argc));
  if (args.size() >= 2 && std::strcmp(args[1], "ctl") == 0) return vsockd::run_ctl(args.subspan(1));

  auto parsed = config::parse_command_line(args);
  if (!parsed) {
    std::fprintf(stderr, "vhost-vsockd: %s\nRun with --help for more information.\n", parsed.error().message.c_str());
    return config::usage_exit_code;
  }
  if (const auto* help = std::get_if<config::Help>(&*parsed)) {
    std::fputs(help->text.c_str(), stdout);
    return EXIT_SUCCESS;
  }
  const auto& daemon_config = std::get<config::DaemonConfig>(*parsed);
  if (auto paths = config::check_filesystem(daemon_config); !paths) {
    std::fprintf(stderr, "vhost-vsockd: %s\n", paths.error().message.c_str());
    return config::usage_exit_code;
  }
  app::init_logging(daemon_config.log_level);

  // Declared in this order so that they are destroyed in reverse: a VM whose close is still
  // queued when the io_context stops is destroyed with the io_context, and leaves the router.
  vsock::Router router;
  boost::asio::io_context io;
  vsockd::Daemon daemon(io, router, daemon_config);
  // Caught from before the first bind: a SIGTERM during start-up waits for io.run() and
  // still removes every socket, instead of killing the process with its sockets left behind.
  boost::asio::signal_set signals(io, SIGINT, SIGTERM, SIGHUP);

  std::unique_ptr<vsockd::ControlServer> control;
  if (daemon_config.control_socket) {
    auto listening = vsockd::ControlServer::listen(io, *daemon_config.control_socket, daemon);
    if (!listening) {
      spdlog::error("{}", listening.error().message);
      return EXIT_FAILURE;
    }
    control = std::move(*listening);
  }
  if (auto started = daemon.start(); !started) {
    spdlog::error("{}", started.error().message);
    return EXIT_FAILURE;  // ~ControlServer removes its socket
  }
  if (control) control->start();
  handle_signals(signals, daemon, control.get());

  spdlog::info("serving {} VM(s) on {} thread(s){}", daemon_config.vms.size(), daemon_config.threads,
               control ? "; control socket " + daemon_config.control_socket->native() : std::string{});
  {
    // Joined at the end of this block, before anything is destroyed.
    std::vector<std::jthread> workers;
    for (unsigned i = 1; i < daemon_config.threads; ++i) workers.emplace_back([&io] { io.run(); });
    // Ready once every socket listens and the whole pool runs.
    if (!app::sd_notify("READY=1")) spdlog::warn("could not notify $NOTIFY_SOCKET");
    io.run();
  }
  return EXIT_SUCCESS;
}
