#pragma once
// The vhost-user wire format (QEMU docs/interop/vhost-user.rst, "Message Specification").
//
// All integers on this socket are in the host's native byte order (spec: "the protocol is
// ... native endian"), unlike virtio structures in guest memory. Structures are plain
// trivially-copyable types decoded with memcpy, never by casting a receive buffer; their
// sizes and offsets are asserted against the spec below each one.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <type_traits>

namespace vhostuser {

/// Front-end -> back-end requests (spec "Front-end message types").
enum class Request : std::uint32_t {
  get_features = 1,
  set_features = 2,
  set_owner = 3,
  reset_owner = 4,
  set_mem_table = 5,
  set_log_base = 6,
  set_log_fd = 7,
  set_vring_num = 8,
  set_vring_addr = 9,
  set_vring_base = 10,
  get_vring_base = 11,
  set_vring_kick = 12,
  set_vring_call = 13,
  set_vring_err = 14,
  get_protocol_features = 15,
  set_protocol_features = 16,
  get_queue_num = 17,
  set_vring_enable = 18,
  send_rarp = 19,
  net_set_mtu = 20,
  set_backend_req_fd = 21,
  iotlb_msg = 22,
  set_vring_endian = 23,
  get_config = 24,
  set_config = 25,
  create_crypto_session = 26,
  close_crypto_session = 27,
  postcopy_advise = 28,
  postcopy_listen = 29,
  postcopy_end = 30,
  get_inflight_fd = 31,
  set_inflight_fd = 32,
  gpu_set_socket = 33,
  reset_device = 34,
  vring_kick = 35,
  get_max_mem_slots = 36,
  add_mem_reg = 37,
  rem_mem_reg = 38,
  set_status = 39,
  get_status = 40,
  get_shared_object = 41,
  set_device_state_fd = 42,
  check_device_state = 43,
};
inline constexpr std::uint32_t max_request_id = 43;

/// Spec name of a request ("SET_VRING_KICK"), or "UNKNOWN" for ids outside the protocol.
std::string_view to_string(Request r) noexcept;

/// Header flags (spec "Header": bits 0-1 version, bit 2 reply, bit 3 need_reply).
namespace header_flags {
inline constexpr std::uint32_t version_mask = 0x3;
inline constexpr std::uint32_t version = 0x1;
inline constexpr std::uint32_t reply = 0x4;
inline constexpr std::uint32_t need_reply = 0x8;
}  // namespace header_flags

struct Header {
  std::uint32_t request;
  std::uint32_t flags;
  std::uint32_t size;  ///< payload bytes that follow
};
static_assert(sizeof(Header) == 12 && std::is_trivially_copyable_v<Header>);

/// Largest payload accepted. The biggest message a vsock or rng frontend sends is
/// SET_MEM_TABLE with 8 regions (8 + 8 * 32 bytes); rust-vmm uses the same 4 KiB cap.
inline constexpr std::uint32_t max_payload_size = 4096;

/// VHOST_USER_F_PROTOCOL_FEATURES: bit 30 of the virtio feature word (spec "Protocol features").
inline constexpr unsigned protocol_features_bit = 30;
/// VHOST_F_LOG_ALL: bit 26 of the virtio feature word (dirty logging during migration).
inline constexpr unsigned log_all_bit = 26;

/// Protocol feature bit numbers (spec "Protocol features").
enum class ProtocolFeature : unsigned {
  mq = 0,
  log_shmfd = 1,
  rarp = 2,
  reply_ack = 3,
  mtu = 4,
  backend_req = 5,
  cross_endian = 6,
  crypto_session = 7,
  pagefault = 8,
  config = 9,
  backend_send_fd = 10,
  host_notifier = 11,
  inflight_shmfd = 12,
  reset_device = 13,
  inband_notifications = 14,
  configure_mem_slots = 15,
  status = 16,
  xen_mmap = 17,
  shared_object = 18,
  device_state = 19,
};

constexpr std::uint64_t bit(unsigned n) { return std::uint64_t{1} << n; }
constexpr std::uint64_t bit(ProtocolFeature f) { return bit(static_cast<unsigned>(f)); }

/// VHOST_USER_MEMORY_BASELINE_NREGIONS: most regions (and fds) in one SET_MEM_TABLE.
inline constexpr std::uint32_t max_mem_table_regions = 8;

/// The u64 of SET_VRING_KICK/CALL/ERR: bits 0-7 vring index, bit 8 "no fd attached".
inline constexpr std::uint64_t vring_fd_index_mask = 0xff;
inline constexpr std::uint64_t vring_fd_no_fd = 0x100;

struct VringState {
  std::uint32_t index;
  std::uint32_t num;
};
static_assert(sizeof(VringState) == 8);

/// SET_VRING_ADDR. The ring addresses are frontend virtual addresses (QEMU's own pointers),
/// and note the order: descriptor, used, available.
struct VringAddr {
  std::uint32_t index;
  std::uint32_t flags;  ///< bit 0: VHOST_VRING_F_LOG
  std::uint64_t desc_user_addr;
  std::uint64_t used_user_addr;
  std::uint64_t avail_user_addr;
  std::uint64_t log_guest_addr;
};
static_assert(sizeof(VringAddr) == 40 && offsetof(VringAddr, desc_user_addr) == 8 &&
              offsetof(VringAddr, used_user_addr) == 16 && offsetof(VringAddr, avail_user_addr) == 24);

struct MemRegion {
  std::uint64_t guest_phys_addr;
  std::uint64_t memory_size;
  std::uint64_t userspace_addr;  ///< frontend virtual address of the region
  std::uint64_t mmap_offset;     ///< offset of the region in the attached fd
};
static_assert(sizeof(MemRegion) == 32);

struct MemTableHeader {
  std::uint32_t nregions;
  std::uint32_t padding;
};
static_assert(sizeof(MemTableHeader) == 8);

/// ADD_MEM_REG / REM_MEM_REG payload.
struct SingleMemRegion {
  std::uint64_t padding;
  MemRegion region;
};
static_assert(sizeof(SingleMemRegion) == 40);

struct LogInfo {
  std::uint64_t mmap_size;
  std::uint64_t mmap_offset;
};
static_assert(sizeof(LogInfo) == 16);

/// GET_CONFIG / SET_CONFIG header; `size` bytes of config follow.
struct ConfigHeader {
  std::uint32_t offset;
  std::uint32_t size;
  std::uint32_t flags;  ///< 0: normal write, 1: live-migration write
};
static_assert(sizeof(ConfigHeader) == 12);
/// QEMU's VHOST_USER_MAX_CONFIG_SIZE.
inline constexpr std::uint32_t max_config_size = 256;

struct VringArea {
  std::uint64_t index_flags;  ///< bits 0-7 vring index, bit 8 no fd
  std::uint64_t size;
  std::uint64_t offset;
};
static_assert(sizeof(VringArea) == 24);

struct InflightInfo {
  std::uint64_t mmap_size;
  std::uint64_t mmap_offset;
  std::uint16_t num_queues;
  std::uint16_t queue_size;
};
static_assert(sizeof(InflightInfo) == 24);  // QEMU sends sizeof(), tail padding included

struct IotlbMsg {
  std::uint64_t iova;
  std::uint64_t size;
  std::uint64_t uaddr;
  std::uint8_t perm;
  std::uint8_t type;
};
static_assert(sizeof(IotlbMsg) == 32);  // 26 bytes of fields, padded as QEMU's struct is

struct DeviceStateParams {
  std::uint32_t direction;
  std::uint32_t phase;
};
static_assert(sizeof(DeviceStateParams) == 8);

using Uuid = std::array<std::uint8_t, 16>;
static_assert(sizeof(Uuid) == 16);

}  // namespace vhostuser
