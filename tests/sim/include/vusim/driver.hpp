#pragma once
// The guest driver's side of one split virtqueue (virtio 1.2, 2.7), in GuestRam.
//
// Driver plays what Linux's drivers/virtio/virtio_ring.c does for a split ring: it lays out
// the descriptor table, available ring and used ring, builds descriptor chains of any shape,
// publishes them, decides whether to kick, waits for used-buffer notifications and collects
// the used ring. Only the wire structs of virtio/ring.hpp are shared with the backend code;
// everything else is written from the spec, so the two cannot share a mistake.
//
// What it checks in what the device returns (a Fault::guest is a backend bug):
//  - used->idx never runs ahead of the chains outstanding;
//  - every used id is the head of a chain that is outstanding (posted and not yet returned);
//  - used len is at most the chain's device-writable capacity (2.7.8: len is the number of
//    bytes written into the writable buffers).
//
// Memory ordering, the driver's half of 2.7.13 (Linux virtio_wmb/virtio_mb/virtio_rmb):
//  - ring entries and descriptors are written, then avail->idx is stored with release;
//  - used->idx is loaded with acquire before the used elements and buffers are read;
//  - a full fence separates publishing avail->idx from reading the device's kick
//    suppression (avail_event or used->flags), and re-arming interrupts (used_event or
//    avail->flags) from re-reading used->idx, so that neither side can miss the other.
//
// Notification suppression as the driver does it (2.7.7, 2.7.10):
//  - kicks: with EVENT_IDX, kick iff vring_need_event(avail_event, new, old) over the entries
//    published since the last kick decision; without it, unless used->flags has NO_NOTIFY.
//    A driver that ignores this is not a faithful guest: a backend that forgets to update
//    avail_event must hang here as it would with Linux.
//  - interrupts: enable_interrupts() writes used_event = next used entry (EVENT_IDX) or clears
//    NO_INTERRUPT; disable_interrupts() moves used_event as far away as possible or sets
//    NO_INTERRUPT.
//
// Eventfds: the driver owns the kick eventfd (QEMU's ioeventfd) and the call eventfd (QEMU's
// irqfd) that the frontend passes to the backend in SET_VRING_KICK / SET_VRING_CALL.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "vhostuser/unique_fd.hpp"
#include "vhostuser/wire.hpp"
#include "vusim/failure.hpp"
#include "vusim/guest_ram.hpp"

namespace vusim {

/// One buffer of a chain as the driver asks for it.
struct Segment {
  std::uint32_t len = 0;
  bool writable = true;   ///< device-writable (VIRTQ_DESC_F_WRITE)
  bool straddle = false;  ///< placed across the boundary of two adjacent RAM regions
};

/// The shape of a chain. Device-readable segments must come before writable ones (2.7.4.2).
struct ChainLayout {
  std::vector<Segment> segments{};
  /// When set, segments from this index on go into an indirect table (2.7.5.3), referenced
  /// by a last descriptor with VIRTQ_DESC_F_INDIRECT; 0 puts the whole chain in the table.
  std::optional<std::size_t> indirect_from{};
};

/// A buffer of a posted chain, where it lies in guest RAM.
struct Buffer {
  Gpa addr;
  std::uint32_t len = 0;
  bool writable = false;
};

/// A chain the device returned through the used ring. Owns the chain's buffers, which go
/// back to the RAM allocator when the Completion is destroyed.
class Completion {
 public:
  std::uint16_t head = 0;
  std::uint32_t len = 0;        ///< used.len: bytes the device says it wrote
  std::vector<Buffer> buffers;  ///< in chain order
  std::uint64_t writable_capacity = 0;

  /// The first `len` bytes of the writable buffers, in order.
  [[nodiscard]] Result<std::vector<std::byte>> written(const GuestRam& ram) const;

 private:
  friend class Driver;
  std::vector<Allocation> storage_;
};

class Driver {
 public:
  struct Options {
    std::uint16_t index = 0;  ///< vring index, for messages
    std::uint16_t size = 0;   ///< queue size Q, a power of two
    bool event_idx = false;   ///< VIRTIO_F_EVENT_IDX negotiated
    bool indirect = false;    ///< VIRTIO_F_INDIRECT_DESC negotiated
  };

  /// Allocates the three ring areas (zeroed) and the kick and call eventfds.
  static Result<Driver> create(GuestRam ram, Options options);

  /// Ring addresses for SET_VRING_ADDR: the simulator's virtual addresses (QVAs), and the
  /// used ring's guest-physical address as log_guest_addr, as QEMU fills them.
  [[nodiscard]] vhostuser::VringAddr vring_addr() const;
  [[nodiscard]] int kick_fd() const { return kick_.get(); }
  [[nodiscard]] int call_fd() const { return call_.get(); }
  [[nodiscard]] const Options& options() const { return options_; }

  /// Builds a chain and places its head in the next avail ring slot, not yet visible to
  /// the device (publish()). Writable buffers are zeroed, readable ones filled with a pattern.
  Result<std::uint16_t> add(const ChainLayout& layout);
  /// Makes every added chain visible: release-store of avail->idx.
  void publish();
  /// publish(), then kicks if the device asked for it; returns whether it kicked.
  Result<bool> kick();
  /// Writes the kick eventfd whatever the device asked.
  Result<void> notify();

  /// Returns the chains the device has put in the used ring since the last call, checked.
  Result<std::vector<Completion>> take_used();
  /// Collects until `count` chains came back, sleeping on the call eventfd in between
  /// (interrupts are re-armed before each wait). Fault::timeout after `timeout`.
  Result<std::vector<Completion>> wait_used(std::size_t count, std::chrono::milliseconds timeout);
  /// Collects until `count` chains came back by polling the used ring, for a driver that
  /// has disabled interrupts. Fault::timeout after `timeout`.
  Result<std::vector<Completion>> poll_used(std::size_t count, std::chrono::milliseconds timeout);
  /// Waits for the call eventfd and returns its counter (how many signals were merged).
  Result<std::uint64_t> wait_call(std::chrono::milliseconds timeout);
  /// The call eventfd's counter now, 0 if not signalled; clears it.
  Result<std::uint64_t> take_calls();

  /// Re-arms used-buffer notifications; returns true if used entries are already pending.
  bool enable_interrupts();
  void disable_interrupts();

  [[nodiscard]] std::uint16_t avail_idx() const { return published_; }  ///< published avail->idx
  [[nodiscard]] std::uint16_t last_used() const { return last_used_; }  ///< used entries consumed
  /// used->idx as the device left it in guest memory.
  [[nodiscard]] std::uint16_t device_used_idx() const;
  [[nodiscard]] std::size_t outstanding() const { return outstanding_; }
  [[nodiscard]] std::size_t free_descriptors() const { return free_.size(); }

 private:
  struct InFlight {
    std::vector<std::uint16_t> descriptors;  // ring table entries the chain uses
    std::vector<Buffer> buffers;
    std::vector<Allocation> storage;  // buffers and the indirect table
    std::uint64_t writable = 0;
  };

  Driver(GuestRam ram, Options options);
  static void write_descriptor(std::span<std::byte> table, std::uint16_t slot, Gpa addr, std::uint32_t len,
                               std::uint16_t flags, std::uint16_t next);
  Result<Buffer> place(const Segment& segment, std::vector<Allocation>& storage);
  Failure timeout_failure(std::size_t want, std::size_t got, std::chrono::milliseconds timeout) const;

  GuestRam ram_;
  Options options_;
  Allocation desc_area_, avail_area_, used_area_;
  std::span<std::byte> desc_, avail_, used_;  // host views of the three areas
  vhostuser::UniqueFd kick_, call_;
  std::vector<std::uint16_t> free_;                 // free descriptor table entries
  std::vector<std::optional<InFlight>> in_flight_;  // by head
  std::size_t outstanding_ = 0;
  std::uint16_t next_avail_ = 0;  // avail entries written (shadow of avail->idx)
  std::uint16_t published_ = 0;   // avail->idx in memory
  std::uint16_t kicked_at_ = 0;   // avail->idx at the last kick decision
  std::uint16_t last_used_ = 0;
};

}  // namespace vusim
