#pragma once
// One descriptor chain, validated and copied out of guest memory.
//
// The guest owns the descriptor table and may rewrite it at any moment, also while the device
// is working on a chain. So the chain is walked exactly once, when the device takes it from
// the available ring: every descriptor is copied to a local before it is looked at, every
// rule below is checked on that copy, and the result is a plain list of buffers that the
// guest can no longer influence (virtio-queue's DescriptorChain, QEMU's VirtQueueElement).
//
// Rules enforced by DescriptorChain::walk (virtio 1.2):
//  - head < Q and every `next` < the size of the table it indexes (2.7.5).
//  - No loops: "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total; this
//    implies that loops in the descriptor chain are forbidden" (2.7.5.2). A walk visits each
//    table entry at most once, so it carries a time-to-live equal to the table size; running
//    out of it means a loop (Errc::chain_too_long).
//  - Total length of all buffers <= 2^32 - 1 (2.7.5.2; used->len is a le32).
//  - Device-readable buffers come first: "The driver MUST place any device-writable
//    descriptor elements after any device-readable descriptor elements" (2.7.4.2).
//  - Indirect tables (2.7.5.3): only with VIRTIO_F_INDIRECT_DESC; len a non-zero multiple of
//    16; the chain inside starts at entry 0; no INDIRECT inside a table and no INDIRECT
//    together with NEXT (2.7.5.3.1). The device "MUST ignore the write-only flag" of the
//    descriptor that refers to the table and "MUST handle the case of zero or more normal
//    chained descriptors followed by a single descriptor with flags&VIRTQ_DESC_F_INDIRECT"
//    (2.7.5.3.2).
//  - Every buffer lies in mapped guest memory (it may straddle regions). An unmapped buffer
//    is a broken ring, as in QEMU and libvhost-user, not a short chain.
//  - "The device MAY have a reasonable limit of descriptors it will allow in a chain": the
//    caller's max_descriptors caps the number of buffers (Errc::descriptor_limit).
// Zero-length buffers are legal and kept; they carry no bytes.
#include <cstdint>
#include <memory>
#include <span>

#include <boost/container/small_vector.hpp>

#include "virtio/address.hpp"
#include "virtio/errors.hpp"
#include "virtio/guest_memory.hpp"

namespace virtio {

/// One buffer of a chain: a guest-physical range the device may read or write.
struct ChainBuffer {
  GuestPhysAddr addr;
  std::uint32_t len = 0;
  bool device_writable = false;

  friend bool operator==(const ChainBuffer&, const ChainBuffer&) = default;
};

/// What a walk needs to know beyond guest memory.
struct ChainRules {
  std::uint16_t queue_size = 0;  ///< entries in the descriptor table
  bool indirect = false;         ///< VIRTIO_F_INDIRECT_DESC negotiated
  unsigned max_descriptors = 0;  ///< device's cap on the buffers of one chain
};

class DescriptorChain {
 public:
  /// Buffers live inline for the chains devices actually see (vsock: header + data).
  using Buffers = boost::container::small_vector<ChainBuffer, 4>;

  /// Walks the chain starting at descriptor `head` of the table at `desc_table` (Q entries,
  /// Q = rules.queue_size) and validates it against the rules in this file's header. The
  /// chain keeps `memory` alive: its buffers stay resolvable against the snapshot they were
  /// checked in even if the frontend replaces the memory table afterwards.
  static Result<DescriptorChain> walk(std::shared_ptr<const GuestMemory> memory, GuestPhysAddr desc_table,
                                      std::uint16_t head, const ChainRules& rules);

  /// The head descriptor index: what the device returns in the used ring (UsedElem::id).
  [[nodiscard]] std::uint16_t head() const { return head_; }

  /// All buffers in chain order: the device-readable ones, then the device-writable ones.
  [[nodiscard]] std::span<const ChainBuffer> buffers() const { return buffers_; }
  [[nodiscard]] std::span<const ChainBuffer> readable_buffers() const {
    return buffers().first(readable_count_);
  }
  [[nodiscard]] std::span<const ChainBuffer> writable_buffers() const {
    return buffers().subspan(readable_count_);
  }

  [[nodiscard]] std::uint32_t readable_bytes() const { return readable_bytes_; }
  [[nodiscard]] std::uint32_t writable_bytes() const { return writable_bytes_; }

  /// The snapshot every buffer was validated against.
  [[nodiscard]] const std::shared_ptr<const GuestMemory>& memory() const { return memory_; }

 private:
  DescriptorChain(std::uint16_t head, std::shared_ptr<const GuestMemory> memory)
      : head_(head), memory_(std::move(memory)) {}

  /// Appends the buffer of one (non-INDIRECT) descriptor after checking the per-buffer rules.
  Result<void> append(ChainBuffer buffer, unsigned max_descriptors);

  std::uint16_t head_;
  std::shared_ptr<const GuestMemory> memory_;
  Buffers buffers_;
  std::size_t readable_count_ = 0;
  std::uint32_t readable_bytes_ = 0;
  std::uint32_t writable_bytes_ = 0;
};

}  // namespace virtio
