// GuestRam: the guest memory the simulator hands to backends, and its allocator.
#include <unistd.h>

#include <array>
#include <cstring>

#include <gtest/gtest.h>

#include "vusim/guest_ram.hpp"

namespace vusim {
namespace {

constexpr std::uint64_t mib = 1 << 20;

TEST(GuestRam, RegionsAreSortedAndDescribedAsQemuDoes) {
  const RegionSpec specs[] = {{Gpa{4 * mib}, mib}, {Gpa{0}, 2 * mib}};
  auto ram = GuestRam::create(specs);
  ASSERT_TRUE(ram) << ram.error();
  const auto regions = ram->regions();
  ASSERT_EQ(regions.size(), 2U);
  EXPECT_EQ(regions[0].base, Gpa{0});
  EXPECT_EQ(regions[1].base, Gpa{4 * mib});
  const auto wire = regions[1].wire();
  EXPECT_EQ(wire.guest_phys_addr, 4 * mib);
  EXPECT_EQ(wire.memory_size, mib);
  // userspace_addr is the simulator's own mapping, as QEMU sends its virtual addresses.
  EXPECT_EQ(wire.userspace_addr, reinterpret_cast<std::uint64_t>(regions[1].host));
  EXPECT_EQ(wire.mmap_offset, 0U);
  EXPECT_NE(regions[0].fd, regions[1].fd);
}

TEST(GuestRam, OneMemfdGivesLaterRegionsAnOffsetIntoTheFile) {
  auto ram = GuestRam::contiguous(mib, 2, Backing::one_memfd);
  ASSERT_TRUE(ram) << ram.error();
  const auto regions = ram->regions();
  EXPECT_EQ(regions[0].fd, regions[1].fd);
  EXPECT_EQ(regions[1].mmap_offset, mib);
  // What the guest writes at the second region is in the file at mmap_offset: what a
  // backend mapping the fd sees.
  const std::array<std::byte, 4> data{std::byte{1}, std::byte{2}, std::byte{3}, std::byte{4}};
  ASSERT_TRUE(ram->write(Gpa{mib + 16}, data));
  std::array<std::byte, 4> file{};
  ASSERT_EQ(::pread(regions[1].fd, file.data(), file.size(), static_cast<off_t>(mib + 16)), 4);
  EXPECT_EQ(file, data);
}

TEST(GuestRam, RefusesOverlapsAndUnalignedRegions) {
  const RegionSpec overlap[] = {{Gpa{0}, 2 * mib}, {Gpa{mib}, mib}};
  EXPECT_FALSE(GuestRam::create(overlap));
  const RegionSpec unaligned[] = {{Gpa{100}, mib}};
  EXPECT_FALSE(GuestRam::create(unaligned));
  EXPECT_FALSE(GuestRam::create({}));
}

TEST(GuestRam, ReadsAndWritesAcrossAdjacentRegions) {
  auto ram = GuestRam::contiguous(mib, 2);
  ASSERT_TRUE(ram) << ram.error();
  std::array<std::byte, 8> data;
  for (std::size_t i = 0; i < data.size(); ++i) data[i] = std::byte(i + 1);
  ASSERT_TRUE(ram->write(Gpa{mib - 3}, data));
  std::array<std::byte, 8> back{};
  ASSERT_TRUE(ram->read(Gpa{mib - 3}, back));
  EXPECT_EQ(back, data);
  // The two halves landed in two different mappings.
  EXPECT_EQ(ram->regions()[0].host[mib - 1], std::byte{3});
  EXPECT_EQ(ram->regions()[1].host[0], std::byte{4});
  // But a contiguous host view (ring areas) cannot cross.
  EXPECT_FALSE(ram->host(Gpa{mib - 3}, 8));
  EXPECT_FALSE(ram->write(Gpa{2 * mib - 2}, data));  // runs off the end of RAM
}

TEST(GuestRam, AllocatorAlignsReusesAndMerges) {
  auto ram = GuestRam::contiguous(mib);
  ASSERT_TRUE(ram) << ram.error();
  const auto total = ram->free_bytes();
  {
    auto a = ram->allocate(3);
    auto b = ram->allocate(100, 64);
    ASSERT_TRUE(a && b);
    EXPECT_EQ(b->addr().raw() % 64, 0U);
    EXPECT_GE(b->addr().raw(), a->addr().raw() + 3);
    auto zero = ram->allocate(0);
    ASSERT_TRUE(zero);
    EXPECT_NE(zero->addr(), a->addr());
    EXPECT_LT(ram->free_bytes(), total);
  }
  EXPECT_EQ(ram->free_bytes(), total);  // everything merged back
  auto whole = ram->allocate(mib);
  EXPECT_TRUE(whole) << whole.error();
  EXPECT_FALSE(ram->allocate(1));
}

TEST(GuestRam, StraddlingAllocationsCrossOneBoundaryAtATime) {
  auto ram = GuestRam::contiguous(mib, 2);
  ASSERT_TRUE(ram) << ram.error();
  auto s = ram->allocate_straddling(100);
  ASSERT_TRUE(s) << s.error();
  EXPECT_EQ(s->addr(), Gpa{mib - 50});
  EXPECT_FALSE(ram->allocate_straddling(10));  // the only boundary is taken
  s = Allocation{};
  EXPECT_TRUE(ram->allocate_straddling(10));
  auto single = GuestRam::contiguous(mib, 1);
  ASSERT_TRUE(single);
  EXPECT_FALSE(single->allocate_straddling(10));
}

TEST(GuestRam, AllocationsKeepTheRamMapped) {
  Allocation a;
  std::byte* host = nullptr;
  {
    auto ram = GuestRam::contiguous(mib);
    ASSERT_TRUE(ram);
    auto got = ram->allocate(16);
    ASSERT_TRUE(got);
    host = ram->regions()[0].host;
    a = std::move(*got);
  }
  host[a.addr().raw()] = std::byte{7};  // still mapped, or this store would fault
  EXPECT_EQ(host[a.addr().raw()], std::byte{7});
}

}  // namespace
}  // namespace vusim
