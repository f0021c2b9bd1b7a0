#include "vhostuser/memory.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <utility>

#include <spdlog/spdlog.h>

namespace vhostuser {
namespace {

boost::system::error_code errno_code(int e) { return {e, boost::system::system_category()}; }

bool fits(std::uint64_t base, std::uint64_t size) { return size != 0 && size - 1 <= UINT64_MAX - base; }

/// Both ranges [a, a + as) and [b, b + bs) are non-empty and must not overlap.
bool overlaps(std::uint64_t a, std::uint64_t as, std::uint64_t b, std::uint64_t bs) {
  return a <= b + (bs - 1) && b <= a + (as - 1);
}

}  // namespace

Result<MappedRegion> MappedRegion::map(int fd, std::uint64_t mmap_offset, std::uint64_t size) {
  if (!fits(mmap_offset, size) || mmap_offset + size > SIZE_MAX) return Errc::bad_memory_region;
  const std::uint64_t length = mmap_offset + size;

  struct stat st {};
  if (::fstat(fd, &st) != 0) return errno_code(errno);
  if (S_ISREG(st.st_mode) && static_cast<std::uint64_t>(st.st_size) < length) {
    return Errc::bad_memory_region;
  }
  // A memfd that may still shrink could make a later access SIGBUS; QEMU's
  // memory-backend-memfd seals it by default (seal=on), other front-ends may not.
  if (const int seals = ::fcntl(fd, F_GET_SEALS); seals >= 0 && (seals & F_SEAL_SHRINK) == 0) {
    spdlog::debug("guest memory fd is not sealed against shrinking");
  }

  void* base = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
  if (base == MAP_FAILED) return errno_code(errno);
  return MappedRegion(base, length, {static_cast<std::byte*>(base) + mmap_offset, size});
}

MappedRegion::MappedRegion(MappedRegion&& other) noexcept
    : base_(std::exchange(other.base_, nullptr)),
      length_(std::exchange(other.length_, 0)),
      region_(std::exchange(other.region_, {})) {}

MappedRegion& MappedRegion::operator=(MappedRegion&& other) noexcept {
  if (this != &other) {
    unmap();
    base_ = std::exchange(other.base_, nullptr);
    length_ = std::exchange(other.length_, 0);
    region_ = std::exchange(other.region_, {});
  }
  return *this;
}

MappedRegion::~MappedRegion() { unmap(); }

void MappedRegion::unmap() noexcept {
  if (base_ != nullptr) ::munmap(base_, length_);
  base_ = nullptr;
}

Result<MemoryTable::Entry> MemoryTable::map_entry(const MemRegion& region, int fd) {
  if (!fits(region.guest_phys_addr, region.memory_size) ||
      !fits(region.userspace_addr, region.memory_size)) {
    return Errc::bad_memory_region;
  }
  auto mapping = MappedRegion::map(fd, region.mmap_offset, region.memory_size);
  if (!mapping) return mapping.error();
  return Entry{region, std::make_shared<const MappedRegion>(std::move(*mapping))};
}

Result<void> MemoryTable::commit(std::vector<Entry> entries) {
  if (entries.size() > max_slots) return Errc::bad_memory_region;
  // Guest-physical overlaps are refused by GuestMemory::create; front-end addresses must not
  // overlap either, or translating a ring address would be ambiguous.
  for (std::size_t i = 0; i < entries.size(); ++i) {
    for (std::size_t j = i + 1; j < entries.size(); ++j) {
      const auto& a = entries[i].region;
      const auto& b = entries[j].region;
      if (overlaps(a.userspace_addr, a.memory_size, b.userspace_addr, b.memory_size)) {
        return Errc::bad_memory_region;
      }
    }
  }
  std::vector<virtio::MemoryRegion> regions;
  regions.reserve(entries.size());
  for (const auto& e : entries) {
    regions.push_back({virtio::GuestPhysAddr{e.region.guest_phys_addr}, e.mapping->bytes(), e.mapping});
  }
  auto snapshot = virtio::GuestMemory::create(std::move(regions));
  if (!snapshot) return Errc::bad_memory_region;
  entries_ = std::move(entries);
  snapshot_ = entries_.empty() ? nullptr : std::move(*snapshot);
  return {};
}

Result<void> MemoryTable::replace(std::span<const MemRegion> regions, std::span<UniqueFd> fds) {
  if (regions.size() != fds.size()) return Errc::wrong_fd_count;
  std::vector<Entry> entries;
  for (std::size_t i = 0; i < regions.size(); ++i) {
    auto entry = map_entry(regions[i], fds[i].get());
    if (!entry) return entry.error();
    entries.push_back(std::move(*entry));
  }
  return commit(std::move(entries));
}

Result<void> MemoryTable::add(const MemRegion& region, UniqueFd fd) {
  auto entry = map_entry(region, fd.get());
  if (!entry) return entry.error();
  std::vector<Entry> entries = entries_;
  entries.push_back(std::move(*entry));
  return commit(std::move(entries));
}

Result<void> MemoryTable::remove(const MemRegion& region) {
  std::vector<Entry> entries = entries_;
  const auto it = std::find_if(entries.begin(), entries.end(), [&](const Entry& e) {
    return e.region.guest_phys_addr == region.guest_phys_addr &&
           e.region.userspace_addr == region.userspace_addr && e.region.memory_size == region.memory_size;
  });
  if (it == entries.end()) return Errc::bad_memory_region;
  entries.erase(it);
  return commit(std::move(entries));
}

void MemoryTable::clear() {
  entries_.clear();
  snapshot_.reset();
}

Result<virtio::GuestPhysAddr> MemoryTable::to_guest_phys(FrontendVirtAddr addr, std::uint64_t len) const {
  if (entries_.empty()) return Errc::no_memory_table;
  for (const auto& e : entries_) {
    const auto& r = e.region;
    if (addr.raw() < r.userspace_addr) continue;
    const std::uint64_t offset = addr.raw() - r.userspace_addr;
    if (offset < r.memory_size && len <= r.memory_size - offset) {
      return virtio::GuestPhysAddr{r.guest_phys_addr + offset};
    }
  }
  return Errc::unmapped_ring;
}

}  // namespace vhostuser
