#pragma once
// Guest RAM as QEMU provides it to a vhost-user backend: memfd-backed regions, shared.
//
// QEMU needs `-object memory-backend-memfd,share=on` for vhost-user: every RAM region the
// backend must reach is an fd it can mmap (vhost-user.rst, "Memory regions description").
// GuestRam builds the same thing inside the simulator: each region is a mapping of a memfd,
// and the simulator's own address of that mapping is the region's userspace_addr, exactly as
// QEMU sends its own virtual addresses. So the backend sees three kinds of addresses, as with
// QEMU: guest-physical ones in descriptors (Gpa), the simulator's virtual addresses in
// SET_VRING_ADDR and userspace_addr (qva()), and file offsets (mmap_offset).
//
// Two backings reproduce QEMU's two region shapes:
//  - Backing::memfd_per_region: one memfd per region, mmap_offset 0 (a RAM block each, like
//    pc-dimm memory);
//  - Backing::one_memfd: all regions cut from one memfd at increasing offsets, so every
//    region but the first has mmap_offset != 0 (one RAM block split around the PCI hole:
//    below 4 GiB at offset 0, above 4 GiB at offset 3 GiB).
// Regions adjacent in guest-physical space are separate mappings, so a buffer straddling
// them is contiguous for the guest and not for any host (virtio 2.7.5 allows it).
//
// GuestRam is a handle: copies share the same RAM, which stays mapped until the last copy
// and the last Allocation are gone. Not thread-safe; one test thread drives it.
#include <compare>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "vhostuser/wire.hpp"
#include "vusim/failure.hpp"

namespace vusim {

/// A guest-physical address: what descriptors carry (virtio 2.7.5 "addr").
class Gpa {
 public:
  constexpr Gpa() = default;
  constexpr explicit Gpa(std::uint64_t value) : value_(value) {}
  [[nodiscard]] constexpr std::uint64_t raw() const { return value_; }
  /// The address `offset` bytes further on. Only for addresses the simulator allocated,
  /// which cannot wrap.
  [[nodiscard]] constexpr Gpa plus(std::uint64_t offset) const { return Gpa{value_ + offset}; }
  friend constexpr auto operator<=>(Gpa, Gpa) = default;

 private:
  std::uint64_t value_ = 0;
};

struct RegionSpec {
  Gpa base;
  std::uint64_t size;  ///< a multiple of the page size
};

enum class Backing { memfd_per_region, one_memfd };

namespace detail {
struct RamState;  // mappings, memfds and the allocator, shared by GuestRam and Allocation
}

/// A block of guest RAM handed out by GuestRam::allocate; returned to the allocator when
/// destroyed. Keeps the RAM mapped while it lives.
class Allocation {
 public:
  Allocation() = default;
  Allocation(Allocation&& other) noexcept;
  Allocation& operator=(Allocation&& other) noexcept;
  Allocation(const Allocation&) = delete;
  Allocation& operator=(const Allocation&) = delete;
  ~Allocation();

  [[nodiscard]] Gpa addr() const { return addr_; }
  [[nodiscard]] std::uint64_t size() const { return size_; }

 private:
  friend class GuestRam;
  Allocation(std::shared_ptr<detail::RamState> owner, Gpa addr, std::uint64_t size)
      : owner_(std::move(owner)), addr_(addr), size_(size) {}
  void release() noexcept;

  std::shared_ptr<detail::RamState> owner_;
  Gpa addr_;
  std::uint64_t size_ = 0;
};

class GuestRam {
 public:
  struct Region {
    Gpa base;
    std::uint64_t size;
    std::byte* host;            ///< the simulator's mapping: its address is the region's QVA
    int fd;                     ///< the memfd (owned by the RAM)
    std::uint64_t mmap_offset;  ///< where the region starts in the memfd

    /// The region as SET_MEM_TABLE / ADD_MEM_REG describe it.
    [[nodiscard]] vhostuser::MemRegion wire() const;
    [[nodiscard]] Gpa end() const { return base.plus(size); }
  };

  /// Creates the memfd(s), sealed against shrinking and growing as QEMU's
  /// memory-backend-memfd does by default (seal=on), and maps every region.
  static Result<GuestRam> create(std::span<const RegionSpec> regions,
                                 Backing backing = Backing::memfd_per_region);
  /// `count` regions of `region_size` bytes each, adjacent in guest-physical space from 0.
  static Result<GuestRam> contiguous(std::uint64_t region_size, unsigned count = 1,
                                     Backing backing = Backing::memfd_per_region);

  /// Regions sorted by guest-physical address.
  [[nodiscard]] std::span<const Region> regions() const;

  /// The simulator's virtual address of [addr, addr + len), which must lie in one region:
  /// what QEMU puts in SET_VRING_ADDR.
  [[nodiscard]] Result<std::uint64_t> qva(Gpa addr, std::uint64_t len) const;
  /// The simulator's bytes of [addr, addr + len) inside one region (ring areas).
  [[nodiscard]] Result<std::span<std::byte>> host(Gpa addr, std::uint64_t len) const;

  /// Copies to / from guest RAM; the range may straddle adjacent regions.
  Result<void> write(Gpa addr, std::span<const std::byte> bytes) const;
  Result<void> read(Gpa addr, std::span<std::byte> bytes) const;
  Result<void> fill(Gpa addr, std::uint64_t len, std::byte value) const;

  /// `size` bytes aligned to `align` (a power of two) inside a single region, first fit.
  /// A size of 0 still takes one byte, so every allocation has a distinct address.
  Result<Allocation> allocate(std::uint64_t size, std::uint64_t align = 1);
  /// `size` (>= 2) bytes across the boundary of two regions adjacent in guest-physical
  /// space, half on each side. Only one allocation can cross a given boundary at a time.
  Result<Allocation> allocate_straddling(std::uint64_t size);
  /// Bytes not allocated, over all regions.
  [[nodiscard]] std::uint64_t free_bytes() const;

 private:
  explicit GuestRam(std::shared_ptr<detail::RamState> state) : state_(std::move(state)) {}
  std::shared_ptr<detail::RamState> state_;
};

}  // namespace vusim
