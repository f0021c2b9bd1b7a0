#include "vusim/guest_ram.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <map>
#include <numeric>

#include <fmt/format.h>

#include "posix.hpp"
#include "vhostuser/unique_fd.hpp"

namespace vusim {
namespace detail {

struct RamState {
  std::vector<vhostuser::UniqueFd> fds;
  std::vector<GuestRam::Region> regions;                     // sorted by base
  std::vector<std::map<std::uint64_t, std::uint64_t>> free;  // per region: offset -> length

  RamState() = default;
  RamState(const RamState&) = delete;
  RamState& operator=(const RamState&) = delete;
  ~RamState() {
    for (const auto& r : regions) ::munmap(r.host, r.size);
  }

  [[nodiscard]] std::size_t find(Gpa addr) const {
    for (std::size_t i = 0; i < regions.size(); ++i) {
      if (addr >= regions[i].base && addr < regions[i].end()) return i;
    }
    return regions.size();
  }

  /// Calls fn(region index, offset in region, length) for each piece of [addr, addr + len),
  /// after checking that the whole range is RAM without holes.
  template <class Fn>
  Result<void> for_each_piece(Gpa addr, std::uint64_t len, Fn&& fn) const {
    struct Piece {
      std::size_t region;
      std::uint64_t offset, len;
    };
    std::vector<Piece> pieces;
    Gpa at = addr;
    std::uint64_t left = len;
    while (left > 0) {
      const std::size_t i = find(at);
      if (i == regions.size()) {
        return Failure{Fault::usage, fmt::format("guest range {:#x}+{:#x} is not all RAM", addr.raw(), len)};
      }
      const std::uint64_t offset = at.raw() - regions[i].base.raw();
      const std::uint64_t n = std::min(left, regions[i].size - offset);
      pieces.push_back({i, offset, n});
      at = at.plus(n);
      left -= n;
    }
    for (const auto& p : pieces) fn(p.region, p.offset, p.len);
    return {};
  }

  /// Takes [offset, offset + len) of region i out of its free list; it must be free.
  bool take(std::size_t i, std::uint64_t offset, std::uint64_t len) {
    auto& blocks = free[i];
    auto it = blocks.upper_bound(offset);
    if (it == blocks.begin()) return false;
    --it;
    const auto [start, size] = *it;
    if (offset + len > start + size) return false;
    blocks.erase(it);
    if (offset > start) blocks.emplace(start, offset - start);
    if (start + size > offset + len) blocks.emplace(offset + len, start + size - (offset + len));
    return true;
  }

  void give_back(std::size_t i, std::uint64_t offset, std::uint64_t len) {
    auto& blocks = free[i];
    auto [it, inserted] = blocks.emplace(offset, len);
    (void)inserted;
    if (auto next = std::next(it); next != blocks.end() && it->first + it->second == next->first) {
      it->second += next->second;
      blocks.erase(next);
    }
    if (it != blocks.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        blocks.erase(it);
      }
    }
  }

  void release(Gpa addr, std::uint64_t size) {
    (void)for_each_piece(addr, size, [&](std::size_t i, std::uint64_t offset, std::uint64_t len) {
      give_back(i, offset, len);
    });
  }
};

}  // namespace detail

namespace {

std::uint64_t page_size() { return static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE)); }

Result<vhostuser::UniqueFd> make_memfd(std::uint64_t size) {
  vhostuser::UniqueFd fd{::memfd_create("vusim-guest-ram", MFD_CLOEXEC | MFD_ALLOW_SEALING)};
  if (!fd) return io_failure("memfd_create");
  if (::ftruncate(fd.get(), static_cast<off_t>(size)) != 0) return io_failure("ftruncate(memfd)");
  if (::fcntl(fd.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    return io_failure("F_ADD_SEALS");
  }
  return fd;
}

}  // namespace

vhostuser::MemRegion GuestRam::Region::wire() const {
  return {base.raw(), size, reinterpret_cast<std::uint64_t>(host), mmap_offset};
}

Allocation::Allocation(Allocation&& other) noexcept
    : owner_(std::move(other.owner_)), addr_(other.addr_), size_(std::exchange(other.size_, 0)) {}

Allocation& Allocation::operator=(Allocation&& other) noexcept {
  if (this != &other) {
    release();
    owner_ = std::move(other.owner_);
    addr_ = other.addr_;
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

Allocation::~Allocation() { release(); }

void Allocation::release() noexcept {
  if (owner_) owner_->release(addr_, size_);
  owner_.reset();
}

Result<GuestRam> GuestRam::create(std::span<const RegionSpec> specs, Backing backing) {
  if (specs.empty()) return Failure{Fault::usage, "guest RAM needs at least one region"};
  std::vector<RegionSpec> sorted(specs.begin(), specs.end());
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.base < b.base; });
  const std::uint64_t page = page_size();
  for (std::size_t i = 0; i < sorted.size(); ++i) {
    const auto& r = sorted[i];
    if (r.size == 0 || r.size % page != 0 || r.base.raw() % page != 0) {
      return Failure{Fault::usage,
                     fmt::format("region {:#x}+{:#x} is not page-aligned", r.base.raw(), r.size)};
    }
    if (i > 0 && sorted[i - 1].base.plus(sorted[i - 1].size) > r.base) {
      return Failure{Fault::usage, fmt::format("region {:#x} overlaps the one before it", r.base.raw())};
    }
  }

  auto state = std::make_shared<detail::RamState>();
  std::uint64_t file_offset = 0;
  if (backing == Backing::one_memfd) {
    const std::uint64_t total = std::accumulate(sorted.begin(), sorted.end(), std::uint64_t{0},
                                                [](std::uint64_t n, const auto& r) { return n + r.size; });
    auto fd = make_memfd(total);
    if (!fd) return fd.error();
    state->fds.push_back(std::move(*fd));
  }
  for (const auto& spec : sorted) {
    if (backing == Backing::memfd_per_region) {
      auto fd = make_memfd(spec.size);
      if (!fd) return fd.error();
      state->fds.push_back(std::move(*fd));
      file_offset = 0;
    }
    const int fd = state->fds.back().get();
    void* host =
        ::mmap(nullptr, spec.size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, static_cast<off_t>(file_offset));
    if (host == MAP_FAILED) return io_failure("mmap(guest RAM)");
    state->regions.push_back({spec.base, spec.size, static_cast<std::byte*>(host), fd, file_offset});
    state->free.push_back({{0, spec.size}});
    file_offset += spec.size;
  }
  return GuestRam(std::move(state));
}

Result<GuestRam> GuestRam::contiguous(std::uint64_t region_size, unsigned count, Backing backing) {
  std::vector<RegionSpec> specs;
  for (unsigned i = 0; i < count; ++i) specs.push_back({Gpa{i * region_size}, region_size});
  return create(specs, backing);
}

std::span<const GuestRam::Region> GuestRam::regions() const { return state_->regions; }

Result<std::uint64_t> GuestRam::qva(Gpa addr, std::uint64_t len) const {
  auto bytes = host(addr, len);
  if (!bytes) return bytes.error();
  return reinterpret_cast<std::uint64_t>(bytes->data());
}

Result<std::span<std::byte>> GuestRam::host(Gpa addr, std::uint64_t len) const {
  const std::size_t i = state_->find(addr);
  if (i == state_->regions.size()) {
    return Failure{Fault::usage, fmt::format("guest address {:#x} is not RAM", addr.raw())};
  }
  const auto& r = state_->regions[i];
  const std::uint64_t offset = addr.raw() - r.base.raw();
  if (len > r.size - offset) {
    return Failure{Fault::usage, fmt::format("guest range {:#x}+{:#x} leaves its region", addr.raw(), len)};
  }
  return std::span<std::byte>(r.host + offset, len);
}

Result<void> GuestRam::write(Gpa addr, std::span<const std::byte> bytes) const {
  std::size_t done = 0;
  return state_->for_each_piece(addr, bytes.size(),
                                [&](std::size_t i, std::uint64_t offset, std::uint64_t len) {
                                  std::memcpy(state_->regions[i].host + offset, bytes.data() + done, len);
                                  done += len;
                                });
}

Result<void> GuestRam::read(Gpa addr, std::span<std::byte> bytes) const {
  std::size_t done = 0;
  return state_->for_each_piece(addr, bytes.size(),
                                [&](std::size_t i, std::uint64_t offset, std::uint64_t len) {
                                  std::memcpy(bytes.data() + done, state_->regions[i].host + offset, len);
                                  done += len;
                                });
}

Result<void> GuestRam::fill(Gpa addr, std::uint64_t len, std::byte value) const {
  return state_->for_each_piece(addr, len, [&](std::size_t i, std::uint64_t offset, std::uint64_t n) {
    std::memset(state_->regions[i].host + offset, std::to_integer<int>(value), n);
  });
}

Result<Allocation> GuestRam::allocate(std::uint64_t size, std::uint64_t align) {
  if (!std::has_single_bit(align)) return Failure{Fault::usage, "alignment must be a power of two"};
  size = std::max<std::uint64_t>(size, 1);
  for (std::size_t i = 0; i < state_->regions.size(); ++i) {
    const std::uint64_t base = state_->regions[i].base.raw();
    for (const auto& [offset, len] : state_->free[i]) {
      const std::uint64_t start = ((base + offset + align - 1) & ~(align - 1)) - base;
      if (start - offset > len || len - (start - offset) < size) continue;
      state_->take(i, start, size);
      return Allocation(state_, Gpa{base + start}, size);
    }
  }
  return Failure{Fault::usage,
                 fmt::format("guest RAM exhausted: no {} bytes aligned to {} left", size, align)};
}

Result<Allocation> GuestRam::allocate_straddling(std::uint64_t size) {
  if (size < 2) return Failure{Fault::usage, "a straddling buffer needs at least 2 bytes"};
  const std::uint64_t below = size / 2;
  const std::uint64_t above = size - below;
  auto& regions = state_->regions;
  for (std::size_t i = 0; i + 1 < regions.size(); ++i) {
    if (regions[i].end() != regions[i + 1].base) continue;  // not adjacent
    if (below > regions[i].size || above > regions[i + 1].size) continue;
    if (!state_->take(i, regions[i].size - below, below)) continue;
    if (!state_->take(i + 1, 0, above)) {
      state_->give_back(i, regions[i].size - below, below);
      continue;
    }
    return Allocation(state_, Gpa{regions[i].end().raw() - below}, size);
  }
  return Failure{Fault::usage, fmt::format("no free boundary between adjacent regions for {} bytes", size)};
}

std::uint64_t GuestRam::free_bytes() const {
  std::uint64_t n = 0;
  for (const auto& blocks : state_->free) {
    for (const auto& [offset, len] : blocks) n += len;
  }
  return n;
}

}  // namespace vusim
