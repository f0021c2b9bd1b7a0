// From the configuration to what the layers below take.
#include <algorithm>
#include <thread>

#include "config/daemon_config.hpp"

namespace vsockd::config {

unsigned default_threads() { return std::max(1u, std::thread::hardware_concurrency()); }

vsock::DeviceConfig to_device_config(const VmConfig& vm) {
  vsock::DeviceConfig device;
  device.guest_cid = vm.guest_cid;
  device.uds_path = vm.uds_path;
  device.tx_buffer_size = vm.tx_buffer_size;
  device.queue_size = static_cast<std::uint16_t>(vm.queue_size);  // at most 32768 once validated
  device.connect_timeout = vm.connect_timeout_ms;
  device.shutdown_timeout = vm.shutdown_timeout_ms;
  device.max_connections = vm.max_connections;
  device.groups = {vm.groups.begin(), vm.groups.end()};
  return device;
}

}  // namespace vsockd::config
