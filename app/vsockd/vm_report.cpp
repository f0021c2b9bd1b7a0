#include "vm_report.hpp"

#include <array>

#include <boost/json/array.hpp>
#include <boost/json/serialize.hpp>
#include <fmt/format.h>

namespace vsockd {
namespace json = boost::json;

std::string_view to_string(VmState state) {
  switch (state) {
    case VmState::listening: return "listening";
    case VmState::connected: return "connected";
    case VmState::running: return "running";
  }
  return "?";
}

namespace {

constexpr std::array all_states{VmState::listening, VmState::connected, VmState::running};

std::string_view type_name(std::uint16_t type) {
  switch (static_cast<vsock::Type>(type)) {
    case vsock::Type::stream: return "stream";
    case vsock::Type::seqpacket: return "seqpacket";
  }
  return "unknown";
}

std::string_view state_name(vsock::Connection::State state) {
  switch (state) {
    case vsock::Connection::State::requesting_guest: return "connecting";
    case vsock::Connection::State::established: return "established";
    case vsock::Connection::State::closed: return "closing";
  }
  return "?";
}

json::object traffic(const vsock::Traffic& t) {
  return {{"packets", t.packets}, {"bytes", t.bytes}, {"rsts", t.rsts}};
}

json::object counters(const vsock::DeviceCounters& c) {
  json::object drops;
  for (std::size_t i = 0; i < vsock::drop_reasons; ++i) {
    drops[vsock::to_string(static_cast<vsock::Drop>(i))] = c.drops[i];
  }
  return {{"tx", traffic(c.tx)},
          {"rx", traffic(c.rx)},
          {"drops", std::move(drops)},
          {"rx_ring_stalls", c.rx_ring_stalls},
          {"credit_stalls", c.credit_stalls}};
}

json::object host_connection(const vsock::HostSide::ConnectionInfo& c) {
  return {{"local_port", c.ends.local.port},
          {"peer_port", c.ends.peer.port},
          {"type", type_name(static_cast<std::uint16_t>(c.ends.type))},
          {"state", state_name(c.state)},
          {"from_guest", traffic(c.counters.from_guest)},
          {"to_guest", traffic(c.counters.to_guest)},
          {"credit_stalls", c.counters.credit_stalls},
          {"pending_bytes", c.pending_tx_bytes}};
}

json::object sibling_connection(const vsock::Router::Connection& c) {
  return {{"local_port", c.local.port},
          {"peer_cid", c.peer.cid},
          {"peer_port", c.peer.port},
          {"type", type_name(c.type)},
          {"sent", traffic(c.sent)},
          {"received", traffic(c.received)}};
}

/// Appends one metric family: its HELP and TYPE lines, then a sample per VM from `samples`,
/// which calls `emit(labels, value)` for each sample of that VM.
template <class Samples>
void family(std::string& out, std::string_view name, std::string_view type, std::string_view help,
            std::span<const VmSnapshot> vms, Samples samples) {
  fmt::format_to(std::back_inserter(out), "# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  for (const VmSnapshot& vm : vms) {
    samples(vm, [&](std::string_view labels, std::uint64_t value) {
      // Label values are CIDs and fixed names of this file: nothing to escape.
      fmt::format_to(std::back_inserter(out), "{}{{cid=\"{}\"{}{}}} {}\n", name, vm.guest_cid,
                     labels.empty() ? "" : ",", labels, value);
    });
  }
}

}  // namespace

json::object to_json(const VmSnapshot& vm, bool detailed) {
  json::array groups;
  for (const auto& g : vm.groups) groups.emplace_back(g);
  json::object out{{"guest_cid", vm.guest_cid},
                   {"socket", vm.socket},
                   {"uds_path", vm.uds_path},
                   {"groups", std::move(groups)},
                   {"state", to_string(vm.state)},
                   {"frontends_served", vm.frontends_served},
                   {"connections", {{"host", vm.host_connection_count}, {"sibling", vm.sibling_connection_count}}},
                   {"counters", counters(vm.counters)}};
  if (detailed) {
    json::array host;
    for (const auto& c : vm.host_connections) host.emplace_back(host_connection(c));
    json::array sibling;
    for (const auto& c : vm.sibling_connections) sibling.emplace_back(sibling_connection(c));
    out["host_connections"] = std::move(host);
    out["sibling_connections"] = std::move(sibling);
  }
  return out;
}

std::string list_json(std::span<const VmSnapshot> vms) {
  json::array list;
  for (const auto& vm : vms) list.emplace_back(to_json(vm, false));
  return json::serialize(json::object{{"vms", std::move(list)}}) + "\n";
}

std::string to_prometheus(std::span<const VmSnapshot> vms) {
  std::string out;
  fmt::format_to(std::back_inserter(out), "# HELP vhost_vsockd_vms VMs the daemon serves.\n"
                                          "# TYPE vhost_vsockd_vms gauge\nvhost_vsockd_vms {}\n", vms.size());
  family(out, "vhost_vsockd_vm_state", "gauge", "1 for the state the VM is in (listening, connected, running).", vms,
         [](const VmSnapshot& vm, auto emit) {
           for (VmState s : all_states) emit(fmt::format("state=\"{}\"", to_string(s)), vm.state == s ? 1 : 0);
         });
  // Packets, bytes and RSTs: one family each, by direction.
  struct TrafficFamily {
    std::string_view name;
    std::string_view help;
    std::uint64_t vsock::Traffic::*field;
  };
  constexpr TrafficFamily traffic_families[] = {
      {"vhost_vsockd_packets_total", "Packets: tx from the guest, rx to the guest.", &vsock::Traffic::packets},
      {"vhost_vsockd_bytes_total", "Payload bytes: tx from the guest, rx to the guest.", &vsock::Traffic::bytes},
      {"vhost_vsockd_rsts_total", "RST packets: tx from the guest, rx to the guest.", &vsock::Traffic::rsts}};
  for (const TrafficFamily& f : traffic_families) {
    family(out, f.name, "counter", f.help, vms, [&f](const VmSnapshot& vm, auto emit) {
      emit("direction=\"tx\"", vm.counters.tx.*f.field);
      emit("direction=\"rx\"", vm.counters.rx.*f.field);
    });
  }
  family(out, "vhost_vsockd_drops_total", "counter", "Guest packets and connections refused, by reason.", vms,
         [](const VmSnapshot& vm, auto emit) {
           for (std::size_t i = 0; i < vsock::drop_reasons; ++i) {
             emit(fmt::format("reason=\"{}\"", vsock::to_string(static_cast<vsock::Drop>(i))), vm.counters.drops[i]);
           }
         });
  family(out, "vhost_vsockd_rx_ring_stalls_total", "counter",
         "Times a packet for the guest found its rx ring without buffers.", vms,
         [](const VmSnapshot& vm, auto emit) { emit("", vm.counters.rx_ring_stalls); });
  family(out, "vhost_vsockd_credit_stalls_total", "counter",
         "Times host data for the guest waited for the guest's credit.", vms,
         [](const VmSnapshot& vm, auto emit) { emit("", vm.counters.credit_stalls); });
  family(out, "vhost_vsockd_connections", "gauge", "Live connections: host (hybrid vsock) and sibling.", vms,
         [](const VmSnapshot& vm, auto emit) {
           emit("kind=\"host\"", vm.host_connection_count);
           emit("kind=\"sibling\"", vm.sibling_connection_count);
         });
  return out;
}

}  // namespace vsockd
