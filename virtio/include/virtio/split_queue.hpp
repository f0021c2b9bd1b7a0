#pragma once
// The device side of one split virtqueue (virtio 1.2, 2.7).
//
// SplitQueue owns all ring arithmetic and memory ordering; devices see descriptor chains and
// a push of (head, bytes written). It neither signals nor waits: the caller owns the kick and
// call eventfds and asks needs_notification() whether to signal.
//
// Memory ordering (the device's half of 2.7.13 and of Linux's virtio_ring barriers). The
// driver runs on other CPUs and shares the rings, so every index and suppression field is
// accessed through std::atomic_ref<uint16_t> on the ring memory:
//  1. pop(): acquire-load avail->idx, then read ring entries and descriptors. Pairs with the
//     driver's "suitable memory barrier before the idx update" (2.7.13.3.1).
//  2. push(): write the used element (and, before that, the buffer contents), then
//     release-store used->idx (2.7.8.2: "The device MUST set len prior to updating the used
//     idx", and the data must be there before the driver may look).
//  3. needs_notification(): full fence between the used->idx store and the read of
//     used_event / avail->flags (2.7.7).
//  4. enable_notifications(), and pop() finding the ring empty while kicks are enabled:
//     full fence between publishing our kick request and (re-)reading avail->idx (2.7.10).
//     Otherwise the driver can add a buffer and read a stale "don't kick" while we read the
//     old avail->idx and go to sleep: the kick is lost and the buffer waits forever.
//  3 and 4 order a store before a load, which only a sequentially consistent fence does.
//
// Kicks (available buffer notifications, 2.7.10) start enabled and stay so until
// disable_notifications(). While enabled, the queue keeps asking the driver to kick for the
// first entry it has not popped: used->flags = 0, or with EVENT_IDX avail_event =
// next_avail, moved along by every pop as QEMU and libvhost-user do. With rule 4 in pop(), a
// device that just pops until the ring is empty on every kick never misses one. A device
// that wants no kicks while it drains a busy ring uses the batch loop instead:
//
//     do {
//       queue.disable_notifications();
//       for (;;) {
//         auto chain = queue.pop();
//         if (!chain) { stop the queue; signal the error eventfd; return; }
//         if (!*chain) break;
//         ... ChainReader / ChainWriter ...;
//         queue.push((*chain)->head(), writer.bytes_written());
//       }
//     } while (queue.enable_notifications());  // buffers arrived while kicks were off
//
// Used buffer notifications (2.7.7): after a batch of pushes, needs_notification() says
// whether to signal the call eventfd.
//
// The queue is single-threaded: one datapath thread owns it. It is move-only, because two
// copies would both believe they own the ring's device side.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>

#include "virtio/address.hpp"
#include "virtio/descriptor_chain.hpp"
#include "virtio/errors.hpp"
#include "virtio/guest_memory.hpp"

namespace virtio {

/// Everything the frontend told us about one ring (vhost-user SET_VRING_NUM/ADDR/BASE and
/// the negotiated features), with ring addresses already converted to guest-physical.
struct QueueConfig {
  std::uint16_t size = 0;        ///< Q: a power of two in 1..32768 (2.7)
  GuestPhysAddr desc;            ///< descriptor table, 16-byte aligned
  GuestPhysAddr avail;           ///< available ring (driver area), 2-byte aligned
  GuestPhysAddr used;            ///< used ring (device area), 4-byte aligned
  bool event_idx = false;        ///< VIRTIO_F_EVENT_IDX (feature bit 29)
  bool indirect = false;         ///< VIRTIO_F_INDIRECT_DESC (feature bit 28)
  bool notify_on_empty = false;  ///< VIRTIO_F_NOTIFY_ON_EMPTY (feature bit 24, legacy)
  std::uint16_t next_avail = 0;  ///< first avail entry not yet consumed (SET_VRING_BASE)
};

class SplitQueue {
 public:
  /// Validates the queue size, the alignment of each area (also of its host mapping, which
  /// the atomic accesses need) and that each area, event field included, lies mapped in one
  /// region. Then resumes the used side from used->idx in guest memory: vhost-user hands the
  /// backend only next_avail (SET_VRING_BASE), and used->idx is where the device side last
  /// left it (libvhost-user and rust-vmm resume the same way). Chains a previous backend
  /// popped but never pushed are not known to this queue: in_flight() starts at 0, so
  /// rewind_in_flight() never moves behind the next_avail the frontend gave us. Finally
  /// enables kicks (see the top of this file), whatever a previous backend left in the ring.
  static Result<SplitQueue> create(const QueueConfig& config, std::shared_ptr<const GuestMemory> memory);

  SplitQueue(SplitQueue&&) noexcept = default;
  SplitQueue& operator=(SplitQueue&&) noexcept = default;
  SplitQueue(const SplitQueue&) = delete;
  SplitQueue& operator=(const SplitQueue&) = delete;
  ~SplitQueue() = default;

  /// Re-resolves the ring areas in a new memory snapshot (the frontend changed the memory
  /// table while the ring runs). On failure the queue keeps using the old snapshot, which
  /// stays mapped as long as we hold it, and returns the error. Chains already popped keep
  /// the snapshot they were validated in.
  Result<void> update_memory(std::shared_ptr<const GuestMemory> memory);

  /// Takes the next available chain, or nothing if the driver has not offered one. Chains
  /// are capped at max_descriptors buffers (default: the queue size, the longest chain a
  /// driver may build, 2.7.5.3.1). Any error means the driver broke the ring (avail->idx
  /// more than Q ahead, more than Q chains in flight, or a chain breaking a rule of
  /// descriptor_chain.hpp): the caller should stop the queue and signal the error eventfd.
  /// A failed pop consumes nothing. While kicks are enabled, a pop moves avail_event along
  /// (EVENT_IDX), and an empty result is final only after a fenced second look (rule 4).
  Result<std::optional<DescriptorChain>> pop();
  Result<std::optional<DescriptorChain>> pop(unsigned max_descriptors);

  /// Returns a popped chain to the driver with the number of bytes the device wrote into it
  /// (2.7.8; 0 for a chain the device only read), and publishes it by storing used->idx.
  /// Fails (changing nothing) for head >= Q or with no chain in flight: device bugs.
  Result<void> push(std::uint16_t head, std::uint32_t written_len);

  /// Un-pops every chain popped but not pushed: next_avail moves back by in_flight(), so the
  /// chains are offered again. For GET_VRING_BASE, which must return "the avail index of the
  /// first buffer not yet consumed". Correct when the unpushed chains are the most recently
  /// popped ones (the device completes in pop order); out-of-order devices need inflight
  /// tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) instead.
  void rewind_in_flight();

  /// Whether to send a used buffer notification for the entries pushed since the last call
  /// (2.7.7.2). Call once after a batch of pushes. False when nothing was pushed since:
  /// notifications follow used buffers, and an interrupt without one is spurious. Otherwise:
  ///  - EVENT_IDX: iff used->idx moved past used_event since the last decision
  ///    (vring_need_event). The first decision after create() notifies: the window since a
  ///    previous backend's last decision is unknown.
  ///  - otherwise: unless the driver set VIRTQ_AVAIL_F_NO_INTERRUPT.
  ///  - NOTIFY_ON_EMPTY: also when nothing is in flight and the avail ring is empty, "even
  ///    when notifications are suppressed" (6.3), as QEMU's virtio_should_notify.
  [[nodiscard]] bool needs_notification();

  /// Asks the driver not to kick (2.7.10). Without EVENT_IDX: used->flags = NO_NOTIFY. With
  /// EVENT_IDX, avail_event just stops following pops: it still names an entry the driver
  /// has already published, so it kicks at most once more (Linux vhost_disable_notify and
  /// virtio-queue write nothing either). Suppression is advisory; spurious kicks are harmless.
  void disable_notifications();

  /// Asks the driver to kick again (2.7.10): avail_event = next_avail() with EVENT_IDX,
  /// otherwise used->flags = 0. Then re-checks the avail ring (rule 4) and returns true if
  /// buffers are pending, which the caller must process: the driver may have added them
  /// while kicks were off, and will not kick for them.
  [[nodiscard]] bool enable_notifications();

  /// Whether the driver has offered chains not popped yet.
  [[nodiscard]] bool has_available() const;

  [[nodiscard]] std::uint16_t size() const { return config_.size; }
  [[nodiscard]] std::uint16_t next_avail() const { return next_avail_; }
  [[nodiscard]] std::uint16_t next_used() const { return next_used_; }
  [[nodiscard]] std::uint16_t in_flight() const { return in_flight_; }
  [[nodiscard]] const std::shared_ptr<const GuestMemory>& memory() const { return memory_; }

 private:
  /// Host views of the areas the queue accesses in place. The descriptor table is read
  /// through guest memory by DescriptorChain::walk, like indirect tables.
  struct Rings {
    std::span<std::byte> avail;
    std::span<std::byte> used;
  };

  SplitQueue(const QueueConfig& config, std::shared_ptr<const GuestMemory> memory, Rings rings);

  static Result<Rings> resolve(const QueueConfig& config, const GuestMemory& memory);
  [[nodiscard]] std::uint16_t load_avail_idx() const;
  /// Entries the driver has published and we have not popped, mod 2^16.
  [[nodiscard]] std::uint16_t pending() const;
  /// Writes "kick me for the first entry not popped yet" (no fence).
  void request_kicks();
  [[nodiscard]] std::uint16_t slot(std::uint16_t index) const {
    return static_cast<std::uint16_t>(index & (config_.size - 1));  // Q is a power of two
  }

  QueueConfig config_;
  std::shared_ptr<const GuestMemory> memory_;
  Rings rings_;
  std::uint16_t next_avail_;
  std::uint16_t next_used_ = 0;
  std::uint16_t in_flight_ = 0;  ///< popped, not pushed; never above Q
  bool kicks_enabled_ = true;    ///< between enable_notifications() and disable_notifications()
  /// used->idx at the last needs_notification() decision; empty when unknown (after create,
  /// or after a window too long for vring_need_event), which the next decision treats as
  /// "something was published" and, with EVENT_IDX, as "used_event was crossed".
  std::optional<std::uint16_t> signalled_used_;
};

}  // namespace virtio
