// vhost-vsockd: the virtio-vsock device of QEMU VMs (`-device vhost-user-vsock-pci`) over
// vhost-user, with hybrid vsock to host applications over AF_UNIX.
//
// Every configured VM gets its own device and vhost-user server on a strand of one
// io_context, which a fixed pool of worker threads runs (--threads, default: the number of
// cores): a VM's work is serialised on its strand, VMs spread over the threads, and no VM
// holds a thread while it waits. All VMs join one sibling router (VMs sharing a group reach
// each other). Startup is all or nothing: the configuration and the paths are checked first, then
// each VM binds its host side and its vhost-user socket; if any VM cannot, the ones already
// bound are closed (removing their socket files) and the daemon exits with 1. READY=1 is
// sent once every socket listens; SIGINT/SIGTERM close every VM and remove every socket.
#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <thread>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/signal_set.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/logging.hpp"
#include "common/sd_notify.hpp"
#include "config/daemon_config.hpp"
#include "vhostuser/server.hpp"
#include "vsock/device.hpp"
#include "vsock/router.hpp"

namespace {

namespace config = vsockd::config;

/// One served VM. The server refers to the device, so it is declared after it and goes first.
struct Vm {
  explicit Vm(boost::asio::io_context& io) : strand(boost::asio::make_strand(io)) {}
  boost::asio::strand<boost::asio::io_context::executor_type> strand;  // everything of this VM runs here
  std::unique_ptr<vsock::VsockDevice> device;
  std::unique_ptr<vhostuser::Server> server;

  void close() {
    if (server) server->close();
    if (device) device->close();
  }
};

std::string bind_failure(const std::filesystem::path& path, const boost::system::error_code& ec) {
  // bind_unix_listener's EADDRINUSE means a live process answered on the socket file.
  if (ec == boost::system::errc::address_in_use) {
    return fmt::format("cannot listen on {}: another process listens on it", path.native());
  }
  return fmt::format("cannot listen on {}: {}", path.native(), ec.message());
}

/// Binds one VM's host side, then its vhost-user socket (QEMU may connect as soon as that
/// one listens, and the device must be ready by then).
std::unique_ptr<Vm> start_vm(boost::asio::io_context& io, vsock::Router& router, const config::VmConfig& vm_config) {
  auto vm = std::make_unique<Vm>(io);
  vm->device = std::make_unique<vsock::VsockDevice>(vm->strand, config::to_device_config(vm_config), &router);
  if (auto ok = vm->device->listen(); !ok) {
    spdlog::error("cid {}: {}", vm_config.guest_cid, bind_failure(vm_config.uds_path, ok.error()));
    return nullptr;
  }
  auto server = vhostuser::Server::listen(vm->strand, vm_config.socket, *vm->device);
  if (!server) {
    spdlog::error("cid {}: {}", vm_config.guest_cid, bind_failure(vm_config.socket, server.error()));
    vm->close();
    return nullptr;
  }
  vm->server = std::move(*server);
  vm->server->start();
  spdlog::info("cid {}: vhost-user {} host {} groups {}", vm_config.guest_cid, vm_config.socket.native(),
               vm_config.uds_path.native(), fmt::join(vm_config.groups, "+"));
  return vm;
}

}  // namespace

int main(int argc, char** argv) {
  auto parsed = config::parse_command_line(std::span<const char* const>(argv, static_cast<std::size_t>(argc)));
  if (!parsed) {
    std::fprintf(stderr, "vhost-vsockd: %s\nRun with --help for more information.\n", parsed.error().message.c_str());
    return config::usage_exit_code;
  }
  if (const auto* help = std::get_if<config::Help>(&*parsed)) {
    std::fputs(help->text.c_str(), stdout);
    return EXIT_SUCCESS;
  }
  const auto& daemon = std::get<config::DaemonConfig>(*parsed);
  if (auto paths = config::check_filesystem(daemon); !paths) {
    std::fprintf(stderr, "vhost-vsockd: %s\n", paths.error().message.c_str());
    return config::usage_exit_code;
  }
  app::init_logging(daemon.log_level);

  boost::asio::io_context io;
  vsock::Router router;  // outlives the VMs, which leave it when they close
  std::vector<std::unique_ptr<Vm>> vms;
  // Caught from before the first bind: a SIGTERM during start-up waits for io.run() and
  // still removes every socket, instead of killing the process with its sockets left behind.
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&](const boost::system::error_code& ec, int signo) {
    if (ec) return;
    spdlog::info("signal {}: shutting down", signo);
    app::sd_notify("STOPPING=1");
    if (vms.empty()) return io.stop();
    // Each VM closes on its own strand (its handlers may be running on another thread right
    // now); the last one to finish stops the pool.
    auto left = std::make_shared<std::atomic<std::size_t>>(vms.size());
    for (auto& vm : vms) {
      boost::asio::post(vm->strand, [&io, vm = vm.get(), left] {
        vm->close();
        if (left->fetch_sub(1) == 1) io.stop();
      });
    }
  });

  for (const config::VmConfig& vm_config : daemon.vms) {
    auto vm = start_vm(io, router, vm_config);
    if (!vm) {
      for (auto& started : vms) started->close();
      return EXIT_FAILURE;
    }
    vms.push_back(std::move(vm));
  }

  spdlog::info("serving {} VM(s) on {} thread(s){}", vms.size(), daemon.threads,
               daemon.control_socket
                   ? fmt::format("; control socket {} not served yet", daemon.control_socket->native())
                   : std::string{});
  if (!app::sd_notify("READY=1")) spdlog::warn("could not notify $NOTIFY_SOCKET");
  {
    // Joined at the end of this block, before the VMs are destroyed.
    std::vector<std::jthread> workers;
    for (unsigned i = 1; i < daemon.threads; ++i) workers.emplace_back([&io] { io.run(); });
    io.run();
  }
  return EXIT_SUCCESS;
}
