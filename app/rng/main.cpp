// vhost-user-rng: serves a virtio-rng device to one QEMU (`-device vhost-user-rng-pci`).
//
// The smallest complete program on the vhostuser layer: parse the command line, build the
// device, listen, tell systemd we are ready, run until SIGINT/SIGTERM.
#include <csignal>
#include <cstdlib>
#include <string>

#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <spdlog/spdlog.h>

#include "common/logging.hpp"
#include "common/sd_notify.hpp"
#include "rng_device.hpp"
#include "vhostuser/server.hpp"

int main(int argc, char** argv) {
  CLI::App cli{"vhost-user-rng: a virtio-rng device back-end for QEMU's vhost-user-rng-pci"};
  std::string socket_path;
  std::string log_level = "info";
  cli.add_option("--socket", socket_path, "vhost-user socket to listen on (QEMU connects to it)")
      ->required();
  cli.add_option("--log-level", log_level, "log verbosity")
      ->check(CLI::IsMember(app::log_level_names()));
  CLI11_PARSE(cli, argc, argv);
  app::init_logging(log_level);

  boost::asio::io_context io;
  rng::RngDevice device;
  auto server = vhostuser::Server::listen(io.get_executor(), socket_path, device);
  if (!server) {
    spdlog::error("cannot listen on {}: {}", socket_path, server.error().message());
    return EXIT_FAILURE;
  }
  (*server)->start();

  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int signo) {
    if (ec) return;
    spdlog::info("signal {}: shutting down after serving {} bytes of entropy", signo, device.bytes_served());
    app::sd_notify("STOPPING=1");
    (*server)->close();
    io.stop();
  });

  spdlog::info("listening on {}", socket_path);
  if (!app::sd_notify("READY=1")) spdlog::warn("could not notify $NOTIFY_SOCKET");
  io.run();
  return EXIT_SUCCESS;
}
