#include "virtio/split_queue.hpp"

#include <atomic>
#include <bit>
#include <cstring>
#include <utility>

#include <boost/endian/conversion.hpp>

#include "virtio/ring.hpp"

namespace virtio {
namespace {

// The u16 fields both sides update concurrently (indices, flags, event indices). Guest memory
// is shared with the driver's CPUs, so these go through atomics; the values are
// little-endian on the wire (2.4).
std::atomic_ref<std::uint16_t> ring_field(std::span<std::byte> area, std::size_t offset) {
  return std::atomic_ref<std::uint16_t>(*reinterpret_cast<std::uint16_t*>(area.data() + offset));
}

std::uint16_t load_le16(std::span<std::byte> area, std::size_t offset, std::memory_order order) {
  return boost::endian::little_to_native(ring_field(area, offset).load(order));
}

void store_le16(std::span<std::byte> area, std::size_t offset, std::uint16_t value, std::memory_order order) {
  ring_field(area, offset).store(boost::endian::native_to_little(value), order);
}

/// The host bytes of one ring area: aligned as the spec requires (2.7), mapped, in one region,
/// and aligned in the host mapping too, which std::atomic_ref requires. A frontend can send a
/// region whose host offset breaks the alignment the guest-physical address has.
Result<std::span<std::byte>> resolve_area(const GuestMemory& memory, GuestPhysAddr addr, RingArea area) {
  if (addr.raw() % area.align != 0) return Errc::misaligned;
  auto host = memory.span(addr, area.size);
  if (!host) return host.error();
  if (reinterpret_cast<std::uintptr_t>(host->data()) % area.align != 0) return Errc::misaligned;
  return host;
}

}  // namespace

SplitQueue::SplitQueue(const QueueConfig& config, std::shared_ptr<const GuestMemory> memory, Rings rings)
    : config_(config), memory_(std::move(memory)), rings_(rings), next_avail_(config.next_avail) {}

Result<SplitQueue::Rings> SplitQueue::resolve(const QueueConfig& config, const GuestMemory& memory) {
  if (auto desc = resolve_area(memory, config.desc, descriptor_table_area(config.size)); !desc) {
    return desc.error();
  }
  auto avail = resolve_area(memory, config.avail, avail_ring_area(config.size, config.event_idx));
  if (!avail) return avail.error();
  auto used = resolve_area(memory, config.used, used_ring_area(config.size, config.event_idx));
  if (!used) return used.error();
  return Rings{*avail, *used};
}

Result<SplitQueue> SplitQueue::create(const QueueConfig& config, std::shared_ptr<const GuestMemory> memory) {
  if (!std::has_single_bit(config.size) || config.size > max_queue_size) return Errc::bad_queue_size;
  auto rings = resolve(config, *memory);
  if (!rings) return rings.error();
  SplitQueue queue(config, std::move(memory), *rings);
  // The device is the only writer of used->idx, so no ordering is needed to read it back.
  queue.next_used_ = load_le16(queue.rings_.used, offsetof(UsedHeader, idx), std::memory_order_relaxed);
  // A previous backend may have left kicks suppressed; the first empty pop fences this.
  queue.request_kicks();
  return queue;
}

Result<void> SplitQueue::update_memory(std::shared_ptr<const GuestMemory> memory) {
  auto rings = resolve(config_, *memory);
  if (!rings) return rings.error();
  rings_ = *rings;
  memory_ = std::move(memory);
  return {};
}

std::uint16_t SplitQueue::load_avail_idx() const {
  // Ordering rule 1: acquire pairs with the driver's barrier before its avail->idx update
  // (2.7.13.3.1), so the ring entries and descriptors it wrote first are visible to us.
  return load_le16(rings_.avail, offsetof(AvailHeader, idx), std::memory_order_acquire);
}

std::uint16_t SplitQueue::pending() const {
  return static_cast<std::uint16_t>(load_avail_idx() - next_avail_);
}

bool SplitQueue::has_available() const { return pending() != 0; }

Result<std::optional<DescriptorChain>> SplitQueue::pop() { return pop(config_.size); }

Result<std::optional<DescriptorChain>> SplitQueue::pop(unsigned max_descriptors) {
  std::uint16_t offered = pending();
  if (offered == 0 && kicks_enabled_) {
    // Ordering rule 4: our kick request (written by create(), enable_notifications() or the
    // last pop) must be visible before we conclude the ring is empty.
    std::atomic_thread_fence(std::memory_order_seq_cst);
    offered = pending();
  }
  // The driver can never have more than Q entries outstanding in the avail ring; a larger
  // distance is a corrupt index (virtio-queue AvailIter::new and QEMU virtqueue_num_heads
  // reject it too).
  if (offered > config_.size) return Errc::avail_index_ahead;
  if (offered == 0) return std::nullopt;
  // Each chain in flight holds at least one descriptor of the table, so a correct driver
  // cannot offer one more when Q are in flight (QEMU: "Virtqueue size exceeded"). Checking
  // also keeps in_flight_, and so rewind_in_flight(), within the u16 index space.
  if (in_flight_ == config_.size) return Errc::too_many_in_flight;

  const std::uint16_t head =
      load_le16(rings_.avail, avail_ring_entry_offset(slot(next_avail_)), std::memory_order_relaxed);
  auto chain = DescriptorChain::walk(
      memory_, config_.desc, head,
      ChainRules{
          .queue_size = config_.size, .indirect = config_.indirect, .max_descriptors = max_descriptors});
  if (!chain) return chain.error();
  ++next_avail_;
  ++in_flight_;
  // With EVENT_IDX the kick request names an index, which must follow our progress; the
  // NO_NOTIFY flag does not.
  if (kicks_enabled_ && config_.event_idx) request_kicks();
  return std::optional<DescriptorChain>(std::move(*chain));
}

Result<void> SplitQueue::push(std::uint16_t head, std::uint32_t written_len) {
  if (head >= config_.size) return Errc::head_out_of_range;
  if (in_flight_ == 0) return Errc::nothing_in_flight;

  UsedElem elem;
  elem.id = head;
  elem.len = written_len;
  std::memcpy(rings_.used.data() + used_elem_offset(slot(next_used_)), &elem, sizeof elem);
  ++next_used_;
  --in_flight_;
  // Ordering rule 2: release makes the used element and the buffer contents visible before
  // the driver can see the new used->idx (2.7.8.2).
  store_le16(rings_.used, offsetof(UsedHeader, idx), next_used_, std::memory_order_release);

  // vring_need_event() compares indices inside a window of less than 2^16 entries. Once the
  // window since the last decision reaches half of that, forget its start so the next
  // decision notifies: a spurious notification is harmless, a missed one hangs the driver
  // (QEMU virtqueue_split_flush invalidates signalled_used the same way).
  if (signalled_used_ && static_cast<std::uint16_t>(next_used_ - *signalled_used_) >= 0x8000) {
    signalled_used_.reset();
  }
  return {};
}

void SplitQueue::rewind_in_flight() {
  next_avail_ -= in_flight_;
  in_flight_ = 0;
}

bool SplitQueue::needs_notification() {
  // Notifications follow used buffers: "After the device writes a descriptor index into the
  // used ring" (2.7.7.2). With nothing published since the last decision there is nothing
  // to notify about; an unknown last decision counts as something published.
  const bool published = !signalled_used_ || *signalled_used_ != next_used_;
  const std::optional<std::uint16_t> old_used = std::exchange(signalled_used_, next_used_);
  if (!published) return false;

  // Ordering rule 3: our used->idx store must be visible before we read the driver's
  // suppression state. Otherwise the driver can read the old used->idx, decide to wait and
  // re-arm used_event (or clear NO_INTERRUPT) after we read it: both sides wait forever.
  std::atomic_thread_fence(std::memory_order_seq_cst);

  bool wanted = false;
  if (config_.event_idx) {
    // 2.7.7.2: notify iff the entry at used_event was written since the last decision.
    const std::uint16_t used_event =
        load_le16(rings_.avail, used_event_offset(config_.size), std::memory_order_relaxed);
    wanted = !old_used || vring_need_event(used_event, next_used_, *old_used);
  } else {
    const std::uint16_t flags =
        load_le16(rings_.avail, offsetof(AvailHeader, flags), std::memory_order_relaxed);
    wanted = (flags & VIRTQ_AVAIL_F_NO_INTERRUPT) == 0;
  }
  const bool ran_dry = config_.notify_on_empty && in_flight_ == 0 && !has_available();
  return wanted || ran_dry;
}

void SplitQueue::request_kicks() {
  if (config_.event_idx) {
    // The driver kicks when it publishes the entry at avail_event (2.7.10).
    store_le16(rings_.used, avail_event_offset(config_.size), next_avail_, std::memory_order_relaxed);
  } else {
    store_le16(rings_.used, offsetof(UsedHeader, flags), 0, std::memory_order_relaxed);
  }
}

void SplitQueue::disable_notifications() {
  kicks_enabled_ = false;
  if (config_.event_idx) return;
  store_le16(rings_.used, offsetof(UsedHeader, flags), VIRTQ_USED_F_NO_NOTIFY, std::memory_order_relaxed);
}

bool SplitQueue::enable_notifications() {
  kicks_enabled_ = true;
  request_kicks();
  // Ordering rule 4: the driver must see kicks enabled before we re-read avail->idx.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return has_available();
}

}  // namespace virtio
