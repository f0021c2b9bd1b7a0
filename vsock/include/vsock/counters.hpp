#pragma once
// What a VM's vsock device counts, for operators (vhost-vsockd's `ctl stats` and Prometheus
// text, docs/usage.md "Observability").
//
// Packets, bytes and RSTs are counted once, where they cross the rings: tx when the device
// takes a guest packet, rx when it hands one to the guest. Host-side connections, replies and
// relayed sibling packets therefore all count the same way, and the totals are what the
// guest really saw. Drops are counted where the decision is made, by reason.
//
// Counters are plain integers: a VM's counters are written and read on its executor only
// (the daemon snapshots them there), so they need neither atomics nor locks.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "vsock/packet.hpp"

namespace vsock {

/// Packets one way, and the payload bytes they carried (headers excluded).
struct Traffic {
  std::uint64_t packets = 0;
  std::uint64_t bytes = 0;
  std::uint64_t rsts = 0;  ///< of the packets, those with op RST

  void count(const Header& packet) {
    ++packets;
    bytes += packet.len;
    if (packet.is(Op::rst)) ++rsts;
  }
};

/// Why a guest packet, a connection attempt or a host client was refused or dropped. The
/// guest learns it from an RST, except for the first two, which have nobody to answer.
enum class Drop : std::uint8_t {
  no_header,         ///< a tx chain too short for a packet header
  spoofed_source,    ///< src_cid not the guest's own (an RST would go to a CID that sent nothing)
  bad_length,        ///< hdr.len beyond the chain, or beyond the largest payload
  unsupported_type,  ///< neither STREAM nor a negotiated SEQPACKET
  no_connection,     ///< a packet for a host connection that does not exist
  host_unreachable,  ///< a guest connect to a host port nobody listens on
  connection_limit,  ///< max_connections or the buffered-bytes budget reached (guest or host client)
  unknown_cid,       ///< to a CID no VM of this daemon has
  own_cid,           ///< to the guest's own CID
  not_started,       ///< to a sibling whose guest driver is not running
  no_shared_group,   ///< to a sibling in no common group
  sibling_limit,     ///< the VM's sibling connections are at their cap
};
inline constexpr std::size_t drop_reasons = 12;

/// The name of a reason, as it appears in ctl output and as a Prometheus label.
constexpr std::string_view to_string(Drop d) {
  constexpr std::array<std::string_view, drop_reasons> names{
      "no_header",        "spoofed_source", "bad_length", "unsupported_type", "no_connection",   "host_unreachable",
      "connection_limit", "unknown_cid",    "own_cid",    "not_started",      "no_shared_group", "sibling_limit"};
  return names.at(static_cast<std::size_t>(d));
}

/// One VM's counters since its device was created.
struct DeviceCounters {
  Traffic tx;  ///< guest -> device
  Traffic rx;  ///< device -> guest
  std::array<std::uint64_t, drop_reasons> drops{};
  /// Times the device had a packet for the guest and found its rx ring empty.
  std::uint64_t rx_ring_stalls = 0;
  /// Times a host-side connection had data for the guest but no credit from it (spec
  /// 5.10.6.3), summed over every connection the VM had.
  std::uint64_t credit_stalls = 0;

  void count(Drop d) { ++drops.at(static_cast<std::size_t>(d)); }
  [[nodiscard]] std::uint64_t dropped(Drop d) const { return drops.at(static_cast<std::size_t>(d)); }
};

/// One host-side connection's counters (the daemon is its host end).
struct ConnectionCounters {
  Traffic from_guest;
  Traffic to_guest;
  std::uint64_t credit_stalls = 0;  ///< see DeviceCounters::credit_stalls
};

}  // namespace vsock
