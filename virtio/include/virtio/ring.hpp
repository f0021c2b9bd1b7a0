#pragma once
// The split virtqueue as it sits in guest memory (virtio 1.2, section 2.7).
//
// A split virtqueue is three areas, each physically contiguous and aligned (2.7, table
// "Virtqueue Part / Alignment / Size"):
//
//   descriptor table  align 16   16 * Q           Descriptor[Q]
//   available ring    align 2    6 + 2 * Q        flags, idx, ring[Q], used_event
//   used ring         align 4    6 + 8 * Q        flags, idx, UsedElem[Q], avail_event
//
// The trailing used_event / avail_event fields exist only with VIRTIO_F_EVENT_IDX, so the
// area sizes below take that feature as a parameter. Every field is little-endian (2.4); the
// structs use the Le types so that reading a field without conversion does not compile.
// Indices (avail->idx, used->idx, the event fields) are free-running u16 counters; the slot of
// index i is i % Q, which is i & (Q - 1) because Q is a power of two (2.7).
#include <cstddef>
#include <cstdint>

#include "virtio/le.hpp"

namespace virtio {

// Descriptor flags (2.7.5).
inline constexpr std::uint16_t VIRTQ_DESC_F_NEXT = 1;      ///< chain continues at `next`
inline constexpr std::uint16_t VIRTQ_DESC_F_WRITE = 2;     ///< buffer is device-writable
inline constexpr std::uint16_t VIRTQ_DESC_F_INDIRECT = 4;  ///< buffer is a descriptor table (2.7.5.3)

// Notification suppression flags without EVENT_IDX (2.7.7 and 2.7.10).
inline constexpr std::uint16_t VIRTQ_AVAIL_F_NO_INTERRUPT = 1;  ///< driver: no used-buffer notifications
inline constexpr std::uint16_t VIRTQ_USED_F_NO_NOTIFY = 1;      ///< device: no available-buffer kicks

/// Feature bit numbers (not masks) that concern the ring (chapter 6, "Reserved Feature Bits";
/// NOTIFY_ON_EMPTY and ANY_LAYOUT are legacy, 6.3).
namespace feature {
inline constexpr unsigned notify_on_empty = 24;
inline constexpr unsigned any_layout = 27;
inline constexpr unsigned indirect_desc = 28;
inline constexpr unsigned event_idx = 29;
inline constexpr unsigned version_1 = 32;
inline constexpr unsigned access_platform = 33;
inline constexpr unsigned ring_packed = 34;
inline constexpr unsigned in_order = 35;
}  // namespace feature

/// One entry of a descriptor table, direct or indirect (2.7.5).
struct Descriptor {
  Le64 addr;   ///< guest-physical address of the buffer
  Le32 len;    ///< buffer length in bytes; for INDIRECT, the table length
  Le16 flags;  ///< VIRTQ_DESC_F_*
  Le16 next;   ///< index of the next descriptor in the same table, if NEXT
};
static_assert(sizeof(Descriptor) == 16);
static_assert(offsetof(Descriptor, addr) == 0 && offsetof(Descriptor, len) == 8);
static_assert(offsetof(Descriptor, flags) == 12 && offsetof(Descriptor, next) == 14);

/// The fixed start of the available ring (2.7.6); ring[Q] and used_event follow.
struct AvailHeader {
  Le16 flags;  ///< VIRTQ_AVAIL_F_NO_INTERRUPT
  Le16 idx;    ///< where the driver puts its next ring entry
};
static_assert(sizeof(AvailHeader) == 4 && offsetof(AvailHeader, idx) == 2);

/// The fixed start of the used ring (2.7.8); UsedElem[Q] and avail_event follow.
struct UsedHeader {
  Le16 flags;  ///< VIRTQ_USED_F_NO_NOTIFY
  Le16 idx;    ///< where the device puts its next ring entry
};
static_assert(sizeof(UsedHeader) == 4 && offsetof(UsedHeader, idx) == 2);

/// One used-ring entry (2.7.8): the head of a finished chain and how many bytes the device
/// wrote into its device-writable buffers (0 for a chain the device only read).
struct UsedElem {
  Le32 id;
  Le32 len;
};
static_assert(sizeof(UsedElem) == 8 && offsetof(UsedElem, len) == 4);

/// Largest queue size of a split virtqueue (2.7: "Queue Size ... maximum 32768").
inline constexpr std::uint32_t max_queue_size = 32768;

/// Size and required guest-physical alignment of one ring area.
struct RingArea {
  std::uint64_t size;
  std::uint64_t align;
};

[[nodiscard]] constexpr RingArea descriptor_table_area(std::uint16_t queue_size) {
  return {sizeof(Descriptor) * std::uint64_t{queue_size}, 16};
}

[[nodiscard]] constexpr RingArea avail_ring_area(std::uint16_t queue_size, bool event_idx) {
  return {sizeof(AvailHeader) + 2 * std::uint64_t{queue_size} + (event_idx ? 2 : 0), 2};
}

[[nodiscard]] constexpr RingArea used_ring_area(std::uint16_t queue_size, bool event_idx) {
  return {sizeof(UsedHeader) + sizeof(UsedElem) * std::uint64_t{queue_size} + (event_idx ? 2 : 0), 4};
}

// Byte offsets of the variable-position fields inside the avail and used areas.
[[nodiscard]] constexpr std::size_t avail_ring_entry_offset(std::uint16_t slot) {
  return sizeof(AvailHeader) + 2 * std::size_t{slot};
}
[[nodiscard]] constexpr std::size_t used_event_offset(std::uint16_t queue_size) {
  return avail_ring_entry_offset(queue_size);  // right after ring[Q]
}
[[nodiscard]] constexpr std::size_t used_elem_offset(std::uint16_t slot) {
  return sizeof(UsedHeader) + sizeof(UsedElem) * std::size_t{slot};
}
[[nodiscard]] constexpr std::size_t avail_event_offset(std::uint16_t queue_size) {
  return used_elem_offset(queue_size);  // right after ring[Q]
}

static_assert(avail_ring_area(256, true).size == 6 + 2 * 256);
static_assert(used_ring_area(256, true).size == 6 + 8 * 256);
static_assert(used_event_offset(256) + 2 == avail_ring_area(256, true).size);
static_assert(avail_event_offset(256) + 2 == used_ring_area(256, true).size);

/// Whether moving used->idx from `old_idx` to `new_idx` crossed the driver's `event` (with
/// VIRTIO_F_EVENT_IDX the device notifies iff it wrote the entry at used_event, 2.7.7.2).
/// This is the Linux/spec vring_need_event(): all arithmetic is mod 2^16, and it is true iff
/// event lies in [old_idx, new_idx) on the u16 circle.
[[nodiscard]] constexpr bool vring_need_event(std::uint16_t event, std::uint16_t new_idx,
                                              std::uint16_t old_idx) {
  return static_cast<std::uint16_t>(new_idx - event - 1) < static_cast<std::uint16_t>(new_idx - old_idx);
}

}  // namespace virtio
