#pragma once
// What the daemon reports about its VMs: one snapshot per VM, taken on the VM's strand, and
// its two renderings, JSON (the control socket's `list` and `stats`) and the Prometheus text
// exposition format (`metrics`). The JSON layout and the metric names are documented in
// docs/usage.md ("Runtime control", "Observability"); the names here are that contract.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <boost/json/object.hpp>

#include "vsock/counters.hpp"
#include "vsock/host_side.hpp"
#include "vsock/router.hpp"

namespace vsockd {

/// Where a VM is in its life, as the daemon sees it.
enum class VmState {
  listening,  ///< no front-end connected (QEMU not started, or gone)
  connected,  ///< a front-end is connected; the guest driver has not started the rx ring
  running,    ///< the guest driver runs
};
std::string_view to_string(VmState state);

struct VmSnapshot {
  std::uint64_t guest_cid = 0;
  std::string socket;
  std::string uds_path;
  std::vector<std::string> groups;
  VmState state = VmState::listening;
  std::size_t frontends_served = 0;  ///< front-end connections accepted since the VM was added
  vsock::DeviceCounters counters;
  std::size_t host_connection_count = 0;
  std::size_t sibling_connection_count = 0;
  /// Filled only for a detailed snapshot (`stats CID`): one entry per live connection.
  std::vector<vsock::HostSide::ConnectionInfo> host_connections;
  std::vector<vsock::Router::Connection> sibling_connections;
};

/// One VM as a JSON object; `detailed` adds its connections.
boost::json::object to_json(const VmSnapshot& vm, bool detailed);
/// `{"vms": [...]}` of to_json(vm, false), one line, as `list` answers.
std::string list_json(std::span<const VmSnapshot> vms);
/// Every VM's counters in the Prometheus text exposition format (version 0.0.4).
std::string to_prometheus(std::span<const VmSnapshot> vms);

}  // namespace vsockd
