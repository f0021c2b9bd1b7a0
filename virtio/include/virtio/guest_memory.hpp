#pragma once
// An immutable snapshot of the guest's RAM as mapped into this process.
//
// A device never sees region tables: it asks for the host bytes behind a guest-physical range
// and gets them only if every byte is mapped (virtio spec 2.7.5: descriptor addresses are
// guest-physical; a buffer may legally straddle two regions, e.g. across a DIMM boundary, so
// ranges are translated piecewise rather than rejected).
//
// Snapshots are shared with std::shared_ptr<const GuestMemory>. The control path builds a new
// snapshot when the frontend changes the memory table and swaps the pointer; a datapath user
// that still holds the old snapshot keeps its mappings alive through MemoryRegion::owner, so
// a table change can never unmap memory under a running queue (the GuestMemoryAtomic idea of
// rust-vmm). Guest memory may change under us at any time: callers copy what they validate.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "virtio/address.hpp"
#include "virtio/errors.hpp"

namespace virtio {

struct MemoryRegion {
  GuestPhysAddr base;
  std::span<std::byte> host;          ///< host view of [base, base + host.size())
  std::shared_ptr<const void> owner;  ///< keeps `host` mapped while a snapshot refers to it
};

class GuestMemory {
 public:
  /// Validates the table (no overlaps, no wrap past 2^64, no empty region) and sorts it.
  static Result<std::shared_ptr<const GuestMemory>> create(std::vector<MemoryRegion> regions);

  /// The host bytes behind [addr, addr + len) when they lie in a single region. Ring areas
  /// and other structures the device accesses in place must be contiguous.
  [[nodiscard]] Result<std::span<std::byte>> span(GuestPhysAddr addr, std::uint64_t len) const;

  /// Calls fn(std::span<std::byte>) for the host pieces of [addr, addr + len), in order.
  /// The whole range is checked first: on error fn has not been called at all.
  template <class Fn>
  Result<void> for_each_span(GuestPhysAddr addr, std::uint64_t len, Fn&& fn) const;

  /// Whether every byte of [addr, addr + len) is mapped, possibly across several regions.
  /// An empty range is always valid (virtio allows zero-length descriptors, spec 2.7.5).
  [[nodiscard]] Result<void> check_range(GuestPhysAddr addr, std::uint64_t len) const;

  [[nodiscard]] std::span<const MemoryRegion> regions() const { return regions_; }

 private:
  explicit GuestMemory(std::vector<MemoryRegion> regions) : regions_(std::move(regions)) {}

  /// The region containing addr, or nullptr.
  [[nodiscard]] const MemoryRegion* find(GuestPhysAddr addr) const;

  std::vector<MemoryRegion> regions_;  // sorted by base, non-overlapping
};

template <class Fn>
Result<void> GuestMemory::for_each_span(GuestPhysAddr addr, std::uint64_t len, Fn&& fn) const {
  if (auto ok = check_range(addr, len); !ok) return ok;
  while (len > 0) {
    const MemoryRegion* r = find(addr);  // present: check_range walked the same path
    const std::uint64_t offset = addr.offset_from(r->base);
    const std::uint64_t piece = std::min<std::uint64_t>(len, r->host.size() - offset);
    fn(r->host.subspan(offset, piece));
    len -= piece;
    addr = GuestPhysAddr{addr.raw() + piece};
  }
  return {};
}

}  // namespace virtio
