#include "virtio/guest_memory.hpp"

#include <algorithm>

namespace virtio {

Result<std::shared_ptr<const GuestMemory>> GuestMemory::create(std::vector<MemoryRegion> regions) {
  std::sort(regions.begin(), regions.end(),
            [](const MemoryRegion& a, const MemoryRegion& b) { return a.base < b.base; });
  for (std::size_t i = 0; i < regions.size(); ++i) {
    const auto& r = regions[i];
    if (r.host.empty()) return Errc::unmapped_address;
    const auto end = r.base.checked_add(r.host.size() - 1);  // last byte, so a region may end at 2^64
    if (!end) return Errc::address_overflow;
    if (i + 1 < regions.size() && regions[i + 1].base <= *end) return Errc::overlapping_regions;
  }
  return std::shared_ptr<const GuestMemory>(new GuestMemory(std::move(regions)));
}

const MemoryRegion* GuestMemory::find(GuestPhysAddr addr) const {
  // First region whose base is above addr; the candidate is the one before it.
  auto it = std::upper_bound(regions_.begin(), regions_.end(), addr,
                             [](GuestPhysAddr a, const MemoryRegion& r) { return a < r.base; });
  if (it == regions_.begin()) return nullptr;
  --it;
  return addr.offset_from(it->base) < it->host.size() ? &*it : nullptr;
}

Result<void> GuestMemory::check_range(GuestPhysAddr addr, std::uint64_t len) const {
  if (len == 0) return {};
  if (!addr.checked_add(len - 1)) return Errc::address_overflow;
  while (len > 0) {
    const MemoryRegion* r = find(addr);
    if (r == nullptr) return Errc::unmapped_address;
    const std::uint64_t piece = std::min<std::uint64_t>(len, r->host.size() - addr.offset_from(r->base));
    len -= piece;
    addr = GuestPhysAddr{addr.raw() + piece};
  }
  return {};
}

Result<std::span<std::byte>> GuestMemory::span(GuestPhysAddr addr, std::uint64_t len) const {
  if (len > 0 && !addr.checked_add(len - 1)) return Errc::address_overflow;
  const MemoryRegion* r = find(addr);
  if (r == nullptr) return Errc::unmapped_address;
  const std::uint64_t offset = addr.offset_from(r->base);
  if (len > r->host.size() - offset) {
    return check_range(addr, len) ? Errc::not_contiguous : Errc::unmapped_address;
  }
  return r->host.subspan(offset, len);
}

}  // namespace virtio
