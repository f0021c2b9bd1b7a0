#pragma once
// The virtio-vsock packet header (virtio spec 5.10.6 "Device Operation", and Linux
// include/uapi/linux/virtio_vsock.h).
//
// WireHeader is the 44-byte little-endian layout as it lies in guest buffers (packed: the
// spec's struct has no padding, so the fields use byte-aligned LE types). Header is the
// native-order value the device works with; decode/encode are the only conversions.
#include <cstdint>
#include <string>

#include "virtio/le.hpp"

namespace vsock {

/// Well-known CIDs (Linux include/uapi/linux/vm_sockets.h).
inline constexpr std::uint64_t cid_hypervisor = 0;
inline constexpr std::uint64_t cid_local = 1;
inline constexpr std::uint64_t cid_host = 2;
inline constexpr std::uint64_t cid_any = 0xffffffff;

/// A guest CID must be none of the reserved values and fit 32 bits (spec 5.10.4: "the upper
/// 32 bits of the CID are reserved and zeroed"; 0, 1, 2 and 0xffffffff are reserved).
constexpr bool is_valid_guest_cid(std::uint64_t cid) { return cid > cid_host && cid < cid_any; }

enum class Type : std::uint16_t {
  stream = 1,
  seqpacket = 2,
};

enum class Op : std::uint16_t {
  invalid = 0,
  request = 1,
  response = 2,
  rst = 3,
  shutdown = 4,
  rw = 5,
  credit_update = 6,
  credit_request = 7,
};

/// VIRTIO_VSOCK_MAX_PKT_BUF_SIZE (Linux include/linux/virtio_vsock.h): the largest payload
/// of one packet. Guest packets above it are refused as vhost-vsock does, and the device
/// never sends one.
inline constexpr std::uint32_t max_packet_payload = 64 * 1024;

/// Flags of OP_SHUTDOWN.
namespace shutdown_flag {
inline constexpr std::uint32_t rcv = 1;   ///< the sender will receive no more data
inline constexpr std::uint32_t send = 2;  ///< the sender will send no more data
inline constexpr std::uint32_t both = rcv | send;
}  // namespace shutdown_flag

/// Flags of OP_RW on a SEQPACKET connection.
namespace seqpacket_flag {
inline constexpr std::uint32_t eom = 1;  ///< last fragment of a message
inline constexpr std::uint32_t eor = 2;  ///< last fragment of a record (MSG_EOR)
}  // namespace seqpacket_flag

/// Feature bits of the device (spec 5.10.3).
namespace feature {
inline constexpr unsigned stream = 0;
inline constexpr unsigned seqpacket = 1;
inline constexpr unsigned no_implied_stream = 2;
}  // namespace feature

struct WireHeader {
  virtio::unaligned::Le64 src_cid;
  virtio::unaligned::Le64 dst_cid;
  virtio::unaligned::Le32 src_port;
  virtio::unaligned::Le32 dst_port;
  virtio::unaligned::Le32 len;
  virtio::unaligned::Le16 type;
  virtio::unaligned::Le16 op;
  virtio::unaligned::Le32 flags;
  virtio::unaligned::Le32 buf_alloc;
  virtio::unaligned::Le32 fwd_cnt;
};
static_assert(sizeof(WireHeader) == 44);
static_assert(offsetof(WireHeader, dst_cid) == 8 && offsetof(WireHeader, src_port) == 16);
static_assert(offsetof(WireHeader, len) == 24 && offsetof(WireHeader, type) == 28);
static_assert(offsetof(WireHeader, op) == 30 && offsetof(WireHeader, flags) == 32);
static_assert(offsetof(WireHeader, buf_alloc) == 36 && offsetof(WireHeader, fwd_cnt) == 40);

/// One side of a connection.
struct Address {
  std::uint64_t cid = 0;
  std::uint32_t port = 0;
  friend bool operator==(const Address&, const Address&) = default;
};

struct Header {
  Address src;
  Address dst;
  std::uint32_t len = 0;  ///< payload bytes that follow the header
  std::uint16_t type = 0; ///< raw: a guest may send any value, checked by the device
  std::uint16_t op = 0;   ///< raw, likewise
  std::uint32_t flags = 0;
  std::uint32_t buf_alloc = 0;
  std::uint32_t fwd_cnt = 0;

  [[nodiscard]] Op operation() const { return static_cast<Op>(op); }
  [[nodiscard]] bool is(Op o) const { return op == static_cast<std::uint16_t>(o); }
};

Header decode(const WireHeader& wire);
WireHeader encode(const Header& header);

/// The RST that answers `packet` (Linux virtio_transport_reset_no_sock): addresses swapped,
/// same type, no payload, no credit information.
Header reset_reply(const Header& packet);

/// "REQUEST 3:1024 -> 2:5000 stream len 0 ..." for logs.
std::string describe(const Header& header);

}  // namespace vsock
