#pragma once
// Guest memory as the front-end describes it: regions backed by fds, each mapped once.
//
// Two address kinds arrive on the socket and must never be mixed (spec "Memory regions
// description" and SET_VRING_ADDR): ring addresses are the front-end's own virtual addresses
// (FrontendVirtAddr), descriptor addresses are guest-physical (virtio::GuestPhysAddr). The
// table converts a ring's frontend-virtual address to guest-physical exactly once, when the
// ring is configured (as rust-vmm does); from then on everything speaks guest-physical, and a
// mix-up is a type error.
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "vhostuser/errors.hpp"
#include "vhostuser/unique_fd.hpp"
#include "vhostuser/wire.hpp"
#include "virtio/address.hpp"
#include "virtio/guest_memory.hpp"

namespace vhostuser {

/// An address in the front-end's (QEMU's) address space.
using FrontendVirtAddr = virtio::TypedAddress<struct FrontendVirtTag>;

/// Move-only owner of one mmap()ed region of guest RAM.
class MappedRegion {
 public:
  /// Maps `size` bytes at `mmap_offset` of `fd`, shared and writable. Like libvhost-user the
  /// mapping starts at file offset 0, so offsets need no particular alignment (hugetlbfs
  /// fds need huge-page alignment of the mapped offset). A regular file or memfd must be at
  /// least mmap_offset + size long: touching a mapping beyond the end of its file raises
  /// SIGBUS, which would take down every VM this process serves.
  static Result<MappedRegion> map(int fd, std::uint64_t mmap_offset, std::uint64_t size);

  MappedRegion(MappedRegion&& other) noexcept;
  MappedRegion& operator=(MappedRegion&& other) noexcept;
  MappedRegion(const MappedRegion&) = delete;
  MappedRegion& operator=(const MappedRegion&) = delete;
  ~MappedRegion();

  /// The region's bytes: [mmap_offset, mmap_offset + size) of the file.
  [[nodiscard]] std::span<std::byte> bytes() const { return region_; }

 private:
  MappedRegion(void* base, std::size_t length, std::span<std::byte> region)
      : base_(base), length_(length), region_(region) {}
  void unmap() noexcept;

  void* base_ = nullptr;
  std::size_t length_ = 0;
  std::span<std::byte> region_;
};

/// The set of regions of one session, and the GuestMemory snapshot built from it.
class MemoryTable {
 public:
  /// Most regions at once: the GET_MAX_MEM_SLOTS answer (libvhost-user's
  /// VHOST_USER_MAX_RAM_SLOTS; QEMU caps its own use at 512).
  static constexpr std::uint64_t max_slots = 509;

  /// SET_MEM_TABLE: replaces every region. `fds` match `regions` one to one.
  Result<void> replace(std::span<const MemRegion> regions, std::span<UniqueFd> fds);
  /// ADD_MEM_REG.
  Result<void> add(const MemRegion& region, UniqueFd fd);
  /// REM_MEM_REG: matches guest address, front-end address and size (spec: mmap_offset is
  /// not compared).
  Result<void> remove(const MemRegion& region);
  /// Drops every region (session reset).
  void clear();

  [[nodiscard]] bool empty() const { return entries_.empty(); }
  [[nodiscard]] std::size_t size() const { return entries_.size(); }

  /// The current snapshot; nullptr while the table is empty.
  [[nodiscard]] const std::shared_ptr<const virtio::GuestMemory>& snapshot() const { return snapshot_; }

  /// The guest-physical address of [addr, addr + len), which must lie in one region.
  [[nodiscard]] Result<virtio::GuestPhysAddr> to_guest_phys(FrontendVirtAddr addr, std::uint64_t len) const;

 private:
  struct Entry {
    MemRegion region;
    std::shared_ptr<const MappedRegion> mapping;
  };
  static Result<Entry> map_entry(const MemRegion& region, int fd);
  /// Builds a snapshot for `entries` and commits both, or changes nothing.
  Result<void> commit(std::vector<Entry> entries);

  std::vector<Entry> entries_;
  std::shared_ptr<const virtio::GuestMemory> snapshot_;
};

}  // namespace vhostuser
