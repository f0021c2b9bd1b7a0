#include "served_vm.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace vsockd {
namespace {

std::string bind_failure(const std::filesystem::path& path, const boost::system::error_code& ec) {
  // bind_unix_listener's EADDRINUSE means a live process answered on the socket file.
  if (ec == boost::system::errc::address_in_use) {
    return fmt::format("cannot listen on {}: another process listens on it", path.native());
  }
  return fmt::format("cannot listen on {}: {}", path.native(), ec.message());
}

}  // namespace

ServedVm::ServedVm(boost::asio::io_context& io, vsock::Router& router, const config::VmConfig& config)
    : strand_(boost::asio::make_strand(io)), router_(router), device_(strand_, config::to_device_config(config), &router) {}

ServedVm::~ServedVm() = default;

config::Result<std::unique_ptr<ServedVm>> ServedVm::start(boost::asio::io_context& io, vsock::Router& router,
                                                          const config::VmConfig& config) {
  std::unique_ptr<ServedVm> vm(new ServedVm(io, router, config));
  const std::uint64_t cid = config.guest_cid;
  if (auto ok = vm->device_.listen(); !ok) {
    return config::Error{fmt::format("cid {}: {}", cid, bind_failure(config.uds_path, ok.error()))};
  }
  auto server = vhostuser::Server::listen(vm->strand_, config.socket, vm->device_);
  if (!server) {
    vm->device_.close();
    return config::Error{fmt::format("cid {}: {}", cid, bind_failure(config.socket, server.error()))};
  }
  vm->server_ = std::move(*server);
  vm->server_->start();
  spdlog::info("cid {}: vhost-user {} host {} groups {}", cid, config.socket.native(), config.uds_path.native(),
               fmt::join(config.groups, "+"));
  return vm;
}

void ServedVm::close() {
  if (server_) server_->close();
  device_.close();
}

void ServedVm::set_groups(const config::Groups& groups) {
  device_.set_groups(vsock::Router::Groups(groups.begin(), groups.end()));
}

VmSnapshot ServedVm::snapshot(bool detailed) const {
  const auto& config = device_.config();
  VmSnapshot s;
  s.guest_cid = config.guest_cid;
  s.uds_path = config.uds_path.native();
  s.groups.assign(config.groups.begin(), config.groups.end());
  if (server_) {
    s.socket = server_->path().native();
    s.frontends_served = server_->connections_served();
  }
  s.state = device_.driver_running()                           ? VmState::running
            : server_ != nullptr && server_->frontend_connected() ? VmState::connected
                                                                  : VmState::listening;
  s.counters = device_.counters();
  s.host_connection_count = device_.host().connection_count();
  s.sibling_connection_count = router_.connection_count(config.guest_cid);
  if (detailed) {
    s.host_connections = device_.host().connections();
    s.sibling_connections = router_.connections(config.guest_cid);
  }
  return s;
}

}  // namespace vsockd
