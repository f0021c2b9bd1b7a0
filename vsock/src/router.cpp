#include "vsock/router.hpp"

#include <algorithm>
#include <iterator>

namespace vsock {

const char* Router::to_string(Refusal refusal) {
  switch (refusal) {
    case Refusal::unknown_cid: return "no VM with that CID";
    case Refusal::own_cid: return "addressed to the sender's own CID";
    case Refusal::not_started: return "the VM's guest is not running";
    case Refusal::no_shared_group: return "the VMs share no group";
    case Refusal::connection_limit: return "too many sibling connections";
  }
  return "?";
}

Router::Key Router::key_of(const Header& packet) {
  const bool src_low = std::tie(packet.src.cid, packet.src.port) < std::tie(packet.dst.cid, packet.dst.port);
  return Key{src_low ? packet.src : packet.dst, src_low ? packet.dst : packet.src, packet.type};
}

bool Router::share_a_group(const Groups& a, const Groups& b) {
  // Both sets are sorted: one merge pass.
  auto i = a.begin();
  auto j = b.begin();
  while (i != a.end() && j != b.end()) {
    if (*i < *j) {
      ++i;
    } else if (*j < *i) {
      ++j;
    } else {
      return true;
    }
  }
  return false;
}

bool Router::attach(std::uint64_t cid, Groups groups, std::shared_ptr<Endpoint> endpoint) {
  std::lock_guard lock(mutex_);
  return vms_.try_emplace(cid, Vm{std::move(groups), std::move(endpoint)}).second;
}

template <class Pred>
std::vector<Router::Reset> Router::kill_connections(Pred dies, std::uint64_t departed) {
  std::vector<Reset> resets;
  for (auto it = connections_.begin(); it != connections_.end();) {
    if (!dies(it->first)) {
      ++it;
      continue;
    }
    const Key& k = it->first;
    // Each end hears an RST from the other, as Linux would send had the other end's socket
    // been closed (virtio_transport_reset_no_sock).
    for (const auto& [from, to] : {std::pair{k.low, k.high}, std::pair{k.high, k.low}}) {
      if (auto vm = vms_.find(to.cid); vm != vms_.end()) {
        --vm->second.connections;
        if (to.cid == departed) continue;
        Header rst;
        rst.src = from;
        rst.dst = to;
        rst.type = k.type;
        rst.op = static_cast<std::uint16_t>(Op::rst);
        resets.push_back(Reset{to.cid, rst});
      }
    }
    it = connections_.erase(it);
  }
  return resets;
}

std::vector<Router::Reset> Router::detach(std::uint64_t cid) {
  std::lock_guard lock(mutex_);
  auto resets = kill_connections([cid](const Key& k) { return k.low.cid == cid || k.high.cid == cid; }, cid);
  vms_.erase(cid);
  return resets;
}

std::vector<Router::Reset> Router::set_started(std::uint64_t cid, bool started) {
  std::lock_guard lock(mutex_);
  auto vm = vms_.find(cid);
  if (vm == vms_.end()) return {};
  vm->second.started = started;
  if (started) return {};
  return kill_connections([cid](const Key& k) { return k.low.cid == cid || k.high.cid == cid; }, cid);
}

std::vector<Router::Reset> Router::set_groups(std::uint64_t cid, Groups groups) {
  std::lock_guard lock(mutex_);
  auto vm = vms_.find(cid);
  if (vm == vms_.end()) return {};
  vm->second.groups = std::move(groups);
  return kill_connections(
      [&](const Key& k) {
        if (k.low.cid != cid && k.high.cid != cid) return false;
        const auto low = vms_.find(k.low.cid);
        const auto high = vms_.find(k.high.cid);
        return low == vms_.end() || high == vms_.end() || !share_a_group(low->second.groups, high->second.groups);
      },
      0 /* nobody departed: both ends are told */);
}

boost::system::result<std::shared_ptr<Router::Endpoint>, Router::Refusal> Router::route(const Header& packet) {
  if (packet.dst.cid == packet.src.cid) return Refusal::own_cid;
  std::lock_guard lock(mutex_);
  const auto dst = vms_.find(packet.dst.cid);
  if (dst == vms_.end()) return Refusal::unknown_cid;
  const auto src = vms_.find(packet.src.cid);
  if (src == vms_.end() || !share_a_group(src->second.groups, dst->second.groups)) {
    return Refusal::no_shared_group;
  }
  if (!dst->second.started) return Refusal::not_started;
  const Key key = key_of(packet);
  auto link = connections_.find(key);
  if (packet.is(Op::request) && link == connections_.end()) {
    if (src->second.connections >= max_connections_ || dst->second.connections >= max_connections_) {
      return Refusal::connection_limit;
    }
    link = connections_.try_emplace(key).first;
    ++src->second.connections;
    ++dst->second.connections;
  } else if (packet.is(Op::rst) && link != connections_.end()) {
    connections_.erase(link);
    --src->second.connections;
    --dst->second.connections;
    return dst->second.endpoint;
  }
  if (link != connections_.end()) {
    (key.low == packet.src ? link->second.low_to_high : link->second.high_to_low).count(packet);
  }
  return dst->second.endpoint;
}

std::shared_ptr<Router::Endpoint> Router::endpoint(std::uint64_t cid) const {
  std::lock_guard lock(mutex_);
  const auto vm = vms_.find(cid);
  return vm == vms_.end() ? nullptr : vm->second.endpoint;
}

std::vector<Router::Connection> Router::connections(std::uint64_t cid) const {
  std::lock_guard lock(mutex_);
  std::vector<Connection> out;
  for (const auto& [k, link] : connections_) {
    if (k.low.cid == cid) out.push_back({k.low, k.high, k.type, link.low_to_high, link.high_to_low});
    if (k.high.cid == cid) out.push_back({k.high, k.low, k.type, link.high_to_low, link.low_to_high});
  }
  return out;
}

std::size_t Router::connection_count(std::uint64_t cid) const {
  std::lock_guard lock(mutex_);
  const auto vm = vms_.find(cid);
  return vm == vms_.end() ? 0 : vm->second.connections;
}

bool Router::reachable(std::uint64_t a, std::uint64_t b) const {
  std::lock_guard lock(mutex_);
  const auto va = vms_.find(a);
  const auto vb = vms_.find(b);
  return va != vms_.end() && vb != vms_.end() && share_a_group(va->second.groups, vb->second.groups);
}

}  // namespace vsock
