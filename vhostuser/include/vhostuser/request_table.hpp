#pragma once
// What each front-end request carries and needs, as one table (spec "Front-end message types").
//
// The codec checks size and fds against the row before any handler runs; the session checks
// the feature gate and the reply rule from the same row. Adding a request means adding a row,
// not another special case in the handlers (DPDK's VHOST_MESSAGE_HANDLER table and rust-vmm's
// check_attached_files/check_request_size are the same idea).
#include <cstdint>
#include <optional>
#include <string_view>

#include "vhostuser/wire.hpp"

namespace vhostuser {

/// Payload layout of a request; fixes the exact (or minimum) size the codec accepts.
enum class Layout {
  none,          ///< no payload
  u64,           ///< 8 bytes
  vring_state,   ///< VringState
  vring_addr,    ///< VringAddr
  vring_fd,      ///< u64: index | no-fd flag
  mem_table,     ///< MemTableHeader + nregions * MemRegion
  single_region, ///< SingleMemRegion
  log,           ///< LogInfo
  config,        ///< ConfigHeader + size bytes
  vring_area,    ///< VringArea
  inflight,      ///< InflightInfo
  iotlb,         ///< IotlbMsg
  device_state,  ///< DeviceStateParams
  uuid,          ///< 16 bytes
  opaque,        ///< any size up to the limit, never interpreted
};

/// How many fds a request carries.
enum class FdRule {
  none,        ///< no fd: any attached fd is an error
  one,         ///< exactly one
  per_region,  ///< one per memory region
  vring,       ///< one unless the payload's no-fd bit is set, then none
  at_most_one, ///< REM_MEM_REG: QEMU may attach the region's fd; it is closed unused
};

/// Whether the back-end answers.
enum class ReplyRule {
  ack,     ///< only with NEED_REPLY set: a u64, 0 for success (REPLY_ACK)
  always,  ///< always answers with the request's own reply payload
};

struct RequestRule {
  Request request;
  std::string_view name;
  Layout layout;
  FdRule fds;
  ReplyRule reply;
  /// Protocol feature that must be negotiated before the request is legal.
  std::optional<ProtocolFeature> needs;
  /// The request exists only once VHOST_USER_F_PROTOCOL_FEATURES (bit 30) is negotiated.
  bool needs_protocol_features_bit = false;
};

/// The row for a request id, or nullptr for an id outside the protocol.
const RequestRule* find_rule(std::uint32_t request_id) noexcept;

}  // namespace vhostuser
