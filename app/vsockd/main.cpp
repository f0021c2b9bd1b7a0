// vhost-vsockd: the virtio-vsock device of QEMU VMs (`-device vhost-user-vsock-pci`) over
// vhost-user, with hybrid vsock to host applications over AF_UNIX.
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <string>

#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <spdlog/spdlog.h>

#include "common/logging.hpp"
#include "common/sd_notify.hpp"
#include "vhostuser/server.hpp"
#include "vsock/device.hpp"

int main(int argc, char** argv) {
  CLI::App cli{"vhost-vsockd: virtio-vsock device back-end for QEMU's vhost-user-vsock-pci"};
  vsock::DeviceConfig config;
  std::string socket_path;
  std::string uds_path;
  std::string log_level = "info";
  std::uint64_t connect_ms = 2000, shutdown_ms = 2000;
  cli.add_option("--guest-cid", config.guest_cid, "the guest's CID (3 .. 2^32-2)")
      ->default_val(3)
      ->check(CLI::Range(std::uint64_t{3}, std::uint64_t{0xfffffffe}));
  cli.add_option("--socket", socket_path, "vhost-user socket to listen on (QEMU connects to it)")->required();
  cli.add_option("--uds-path", uds_path, "host-side AF_UNIX socket of the VM (hybrid vsock)")->required();
  cli.add_option("--tx-buffer-size", config.tx_buffer_size, "per-connection guest->host buffer, bytes")
      ->default_val(64 * 1024)
      ->check(CLI::Range(std::uint32_t{4096}, std::uint32_t{1u << 30}));
  cli.add_option("--queue-size", config.queue_size, "largest virtqueue size accepted")
      ->default_val(1024)
      ->check(CLI::Range(1, 32768));
  cli.add_option("--connect-timeout-ms", connect_ms, "host-initiated connect timeout")->default_val(2000);
  cli.add_option("--shutdown-timeout-ms", shutdown_ms, "flush timeout after the guest closes")->default_val(2000);
  cli.add_option("--max-connections", config.max_connections, "connections at once")->default_val(1024);
  cli.add_option("--log-level", log_level, "log verbosity")->check(CLI::IsMember(app::log_level_names()));
  CLI11_PARSE(cli, argc, argv);
  app::init_logging(log_level);
  config.uds_path = uds_path;
  config.connect_timeout = std::chrono::milliseconds(connect_ms);
  config.shutdown_timeout = std::chrono::milliseconds(shutdown_ms);

  boost::asio::io_context io;
  vsock::VsockDevice device(io.get_executor(), config);
  if (auto ok = device.listen(); !ok) {
    spdlog::error("cannot listen on {}: {}", uds_path, ok.error().message());
    return EXIT_FAILURE;
  }
  auto server = vhostuser::Server::listen(io.get_executor(), socket_path, device);
  if (!server) {
    spdlog::error("cannot listen on {}: {}", socket_path, server.error().message());
    device.close();
    return EXIT_FAILURE;
  }
  (*server)->start();

  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int signo) {
    if (ec) return;
    spdlog::info("signal {}: shutting down", signo);
    app::sd_notify("STOPPING=1");
    (*server)->close();
    device.close();
    io.stop();
  });

  spdlog::info("cid {}: vhost-user {} host {}", config.guest_cid, socket_path, uds_path);
  if (!app::sd_notify("READY=1")) spdlog::warn("could not notify $NOTIFY_SOCKET");
  io.run();
  return EXIT_SUCCESS;
}
