// GuestMemory: table validation and translation of guest-physical ranges.
#include "virtio/guest_memory.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

namespace virtio {
namespace {

constexpr std::uint64_t top = UINT64_MAX;  // last byte of the guest-physical space

/// Host storage for hand-built region tables.
struct Backing {
  std::vector<std::byte> a = std::vector<std::byte>(0x1000);
  std::vector<std::byte> b = std::vector<std::byte>(0x1000);
  std::vector<std::byte> c = std::vector<std::byte>(0x1000);
};

MemoryRegion region(std::uint64_t base, std::vector<std::byte>& bytes) {
  return {GuestPhysAddr{base}, std::span<std::byte>(bytes), nullptr};
}

/// Pieces that for_each_span reports, as (host pointer, size).
std::vector<std::pair<std::byte*, std::size_t>> pieces(const GuestMemory& m, std::uint64_t addr,
                                                       std::uint64_t len, Result<void>& result) {
  std::vector<std::pair<std::byte*, std::size_t>> out;
  result = m.for_each_span(GuestPhysAddr{addr}, len,
                           [&out](std::span<std::byte> s) { out.emplace_back(s.data(), s.size()); });
  return out;
}

TEST(GuestMemory, AcceptsDisjointAndTouchingRegionsInAnyOrder) {
  Backing h;
  auto m = GuestMemory::create({region(0x3000, h.c), region(0x0, h.a), region(0x1000, h.b)});
  ASSERT_TRUE(m);
  const auto regions = (*m)->regions();
  ASSERT_EQ(regions.size(), 3U);
  EXPECT_EQ(regions[0].base.raw(), 0x0U);
  EXPECT_EQ(regions[1].base.raw(), 0x1000U);
  EXPECT_EQ(regions[2].base.raw(), 0x3000U);
}

TEST(GuestMemory, RejectsOverlappingRegions) {
  Backing h;
  EXPECT_EQ(GuestMemory::create({region(0x0, h.a), region(0xfff, h.b)}).error(), Errc::overlapping_regions);
  EXPECT_EQ(GuestMemory::create({region(0x1000, h.a), region(0x1000, h.b)}).error(),
            Errc::overlapping_regions);
}

TEST(GuestMemory, RejectsEmptyRegion) {
  Backing h;
  MemoryRegion empty{GuestPhysAddr{0x5000}, {}, nullptr};
  EXPECT_EQ(GuestMemory::create({region(0x0, h.a), empty}).error(), Errc::unmapped_address);
}

TEST(GuestMemory, RegionMayEndExactlyAtTopOfAddressSpace) {
  Backing h;
  auto m = GuestMemory::create({region(top - 0xfff, h.a)});
  ASSERT_TRUE(m);
  auto last = (*m)->span(GuestPhysAddr{top}, 1);
  ASSERT_TRUE(last);
  EXPECT_EQ(last->data(), h.a.data() + 0xfff);
  EXPECT_TRUE((*m)->span(GuestPhysAddr{top - 0xfff}, 0x1000));
  EXPECT_EQ((*m)->span(GuestPhysAddr{top}, 2).error(), Errc::address_overflow);
}

TEST(GuestMemory, RejectsRegionWrappingPastTopOfAddressSpace) {
  Backing h;
  EXPECT_EQ(GuestMemory::create({region(top - 0xffe, h.a)}).error(), Errc::address_overflow);
}

TEST(GuestMemory, SpanInsideOneRegion) {
  Backing h;
  auto m = *GuestMemory::create({region(0x10000, h.a)});
  auto s = m->span(GuestPhysAddr{0x10010}, 0x20);
  ASSERT_TRUE(s);
  EXPECT_EQ(s->data(), h.a.data() + 0x10);
  EXPECT_EQ(s->size(), 0x20U);
}

TEST(GuestMemory, SpanAcrossTouchingRegionsIsNotContiguous) {
  Backing h;
  auto m = *GuestMemory::create({region(0x0, h.a), region(0x1000, h.b)});
  EXPECT_EQ(m->span(GuestPhysAddr{0xff0}, 0x20).error(), Errc::not_contiguous);
}

TEST(GuestMemory, SpanIntoGapIsUnmapped) {
  Backing h;
  auto m = *GuestMemory::create({region(0x0, h.a), region(0x2000, h.b)});
  EXPECT_EQ(m->span(GuestPhysAddr{0xff0}, 0x20).error(), Errc::unmapped_address);
  EXPECT_EQ(m->span(GuestPhysAddr{0x1800}, 1).error(), Errc::unmapped_address);
  EXPECT_EQ(m->span(GuestPhysAddr{0x3000}, 1).error(), Errc::unmapped_address);
}

TEST(GuestMemory, ZeroLengthSpanNeedsMappedStart) {
  Backing h;
  auto m = *GuestMemory::create({region(0x1000, h.a)});
  EXPECT_TRUE(m->span(GuestPhysAddr{0x1000}, 0));
  EXPECT_EQ(m->span(GuestPhysAddr{0x0}, 0).error(), Errc::unmapped_address);
}

TEST(GuestMemory, ForEachSpanSplitsAcrossTouchingRegions) {
  Backing h;
  auto m = *GuestMemory::create({region(0x0, h.a), region(0x1000, h.b), region(0x2000, h.c)});
  Result<void> result;
  const auto got = pieces(*m, 0xff0, 0x1020, result);
  ASSERT_TRUE(result);
  ASSERT_EQ(got.size(), 3U);
  EXPECT_EQ(got[0], std::make_pair(h.a.data() + 0xff0, std::size_t{0x10}));
  EXPECT_EQ(got[1], std::make_pair(h.b.data(), std::size_t{0x1000}));
  EXPECT_EQ(got[2], std::make_pair(h.c.data(), std::size_t{0x10}));
}

TEST(GuestMemory, ForEachSpanAcrossGapFailsBeforeCallingFn) {
  Backing h;
  auto m = *GuestMemory::create({region(0x0, h.a), region(0x2000, h.b)});
  Result<void> result;
  const auto got = pieces(*m, 0xff0, 0x1020, result);
  EXPECT_EQ(result.error(), Errc::unmapped_address);
  EXPECT_TRUE(got.empty());
}

TEST(GuestMemory, ForEachSpanUpToTopOfAddressSpace) {
  Backing h;
  auto m = *GuestMemory::create({region(top - 0x1fff, h.a), region(top - 0xfff, h.b)});
  Result<void> result;
  const auto got = pieces(*m, top - 0x100f, 0x1010, result);
  ASSERT_TRUE(result);
  ASSERT_EQ(got.size(), 2U);
  EXPECT_EQ(got[0].second, 0x10U);
  EXPECT_EQ(got[1].second, 0x1000U);
  pieces(*m, top - 0xf, 0x11, result);
  EXPECT_EQ(result.error(), Errc::address_overflow);
}

TEST(GuestMemory, CheckRangeAcceptsEmptyRangeAnywhere) {
  Backing h;
  auto m = *GuestMemory::create({region(0x1000, h.a)});
  EXPECT_TRUE(m->check_range(GuestPhysAddr{0xdead0000}, 0));
  EXPECT_TRUE(m->check_range(GuestPhysAddr{top}, 0));
  EXPECT_TRUE(m->check_range(GuestPhysAddr{0x1000}, 0x1000));
  EXPECT_EQ(m->check_range(GuestPhysAddr{0x1000}, 0x1001).error(), Errc::unmapped_address);
}

TEST(GuestMemory, SnapshotKeepsRegionOwnersAlive) {
  auto bytes = std::make_shared<std::vector<std::byte>>(0x1000);
  std::weak_ptr<std::vector<std::byte>> watch = bytes;
  auto m = *GuestMemory::create({{GuestPhysAddr{0}, std::span<std::byte>(*bytes), bytes}});
  bytes.reset();
  EXPECT_FALSE(watch.expired());
  m.reset();
  EXPECT_TRUE(watch.expired());
}

}  // namespace
}  // namespace virtio
