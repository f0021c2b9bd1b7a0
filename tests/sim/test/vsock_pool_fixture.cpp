#include "vsock_pool_fixture.hpp"

#include <stdexcept>

#include <fmt/format.h>

namespace vusim::vsock_test {

WorkerPool::WorkerPool(unsigned threads) : work_(boost::asio::make_work_guard(io_)) {
  for (unsigned i = 0; i < threads; ++i) threads_.emplace_back([this] { io_.run(); });
}

WorkerPool::~WorkerPool() {
  // The VMs are gone by now (they close on their strands when destroyed); what is still
  // queued belongs to nobody and is destroyed with the io_context.
  work_.reset();
  io_.stop();
  threads_.clear();  // joins
}

PooledBackend::PooledBackend(WorkerPool& pool, const std::function<void(vsock::DeviceConfig&)>& tweak,
                             vsock::Router* router)
    : socket_(dir_.path() / "vhost.sock"), strand_(boost::asio::make_strand(pool.io())) {
  config_.uds_path = dir_.path() / "vm.vsock";
  if (tweak) tweak(config_);
  // As app/vsockd/main.cpp, but made on the strand: other VMs run meanwhile, and once the
  // device has joined the router they may post to it.
  auto failure = on_strand([this, router]() -> std::string {
    device_ = std::make_unique<vsock::VsockDevice>(strand_, config_, router);
    if (auto ok = device_->listen(); !ok) return "cannot listen on " + config_.uds_path.native() + ": " + ok.error().message();
    auto server = vhostuser::Server::listen(strand_, socket_, *device_);
    if (!server) {
      device_->close();
      return "cannot listen on " + socket_.native() + ": " + server.error().message();
    }
    server_ = std::move(*server);
    server_->start();
    return {};
  });
  if (!failure.empty()) {
    on_strand([this] { device_.reset(); });
    throw std::runtime_error(failure);
  }
}

PooledBackend::~PooledBackend() {
  // As the daemon shuts a VM down: server, then device, on the VM's strand. Handlers of the
  // VM still queued there find their objects gone (vhostuser::Liveness) and do nothing.
  on_strand([this] {
    server_->close();
    server_.reset();
    device_->close();
    device_.reset();
  });
}

namespace {

GuestRam make_ram(const VmOptions& options) {
  auto ram = GuestRam::contiguous(options.region_mib << 20, options.regions);
  if (!ram) throw std::runtime_error("guest RAM: " + ram.error().message);
  return std::move(*ram);
}

}  // namespace

PooledVm::PooledVm(WorkerPool& pool, VmOptions options)
    : options_(std::move(options)),
      backend(
          pool,
          [this](vsock::DeviceConfig& c) {
            c.guest_cid = options_.cid;
            if (options_.tweak) options_.tweak(c);
          },
          options_.router),
      ram(make_ram(options_)),
      dev(options_.model, ram) {}

PooledVm::~PooledVm() { test::dump_on_failure(log); }

Result<void> PooledVm::boot() {
  const Sequence* sequence = find_sequence(options_.sequence);
  if (sequence == nullptr) return Failure{Fault::usage, fmt::format("no sequence {}", options_.sequence)};
  auto fe = Frontend::connect(backend.socket(), test::traced_options(log));
  if (!fe) return fe.error();
  fe_.emplace(std::move(*fe));
  if (auto ok = sequence->realize(*fe_, dev); !ok) return ok;
  if (auto ok = sequence->start(*fe_, dev, {}); !ok) return ok;
  const std::uint32_t size = options_.rx_buffer_size;
  guest_.emplace(dev, vsock_guest::Guest::Options{
                          .cid = options_.cid, .refill = [size] { return ChainLayout{.segments = {{.len = size}}}; }});
  if (options_.rx_buffers > 0) {
    if (auto ok = guest_->post_rx(options_.rx_buffers, ChainLayout{.segments = {{.len = size}}}); !ok) return ok;
  }
  // QEMU sends the last start messages without waiting for a reply; a round trip makes sure
  // the device has taken them (its rx ring runs), so siblings can reach it.
  if (auto features = fe_->get_features(); !features) return features.error();
  return {};
}

Result<Established> establish(PooledVm& vm, std::uint32_t host_port, std::uint32_t guest_port) {
  return establish_at(vm.guest(), vm.options_.cid, vm.backend.port_path(host_port), host_port, guest_port);
}

}  // namespace vusim::vsock_test
