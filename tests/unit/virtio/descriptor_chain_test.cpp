// DescriptorChain::walk: every validation rule of descriptor_chain.hpp, on hand-built tables.
#include "virtio/descriptor_chain.hpp"

#include <gtest/gtest.h>

#include <ostream>
#include <vector>

#include "driver_ring.hpp"

namespace virtio {

// Found by ADL from gtest's printers, so it lives in namespace virtio.
inline void PrintTo(const ChainBuffer& b, std::ostream* os) {
  *os << "{0x" << std::hex << b.addr.raw() << std::dec << ", " << b.len
      << (b.device_writable ? ", W}" : ", R}");
}

namespace {

using test::BufferSpec;
using test::DriverRing;
using test::GuestRam;
using test::RingLayout;

constexpr std::uint16_t N = VIRTQ_DESC_F_NEXT;
constexpr std::uint16_t W = VIRTQ_DESC_F_WRITE;
constexpr std::uint16_t I = VIRTQ_DESC_F_INDIRECT;

class DescriptorChainTest : public ::testing::Test {
 protected:
  // Region 0 holds the ring and data; region 1 touches it (buffers may straddle the two);
  // region 2 lies beyond a gap.
  static constexpr std::uint64_t r1 = 0x10000;
  static constexpr std::uint64_t gap = 0x11000;
  static constexpr std::uint64_t r2 = 0x20000;
  static constexpr std::uint64_t data = 0x8000;  // free space in region 0
  static constexpr std::uint16_t q = 16;

  GuestRam ram{{{0x0, 0x10000}, {r1, 0x1000}, {r2, 0x1000}}};
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};
  ChainRules rules{q, true, q};

  Result<DescriptorChain> walk(std::uint16_t head) {
    return DescriptorChain::walk(ram.memory(), ring.layout().desc, head, rules);
  }
  void set(std::uint16_t index, std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
           std::uint16_t next = 0) {
    ring.set_descriptor(index, DriverRing::descriptor(addr, len, flags, next));
  }
};

using Buffers = std::vector<ChainBuffer>;
Buffers list(std::span<const ChainBuffer> buffers) { return {buffers.begin(), buffers.end()}; }

ChainBuffer readable(std::uint64_t addr, std::uint32_t len) { return {GuestPhysAddr{addr}, len, false}; }
ChainBuffer writable(std::uint64_t addr, std::uint32_t len) { return {GuestPhysAddr{addr}, len, true}; }

TEST_F(DescriptorChainTest, SingleReadableDescriptor) {
  set(3, data, 44, 0);
  auto chain = walk(3);
  ASSERT_TRUE(chain) << chain.error().message();
  EXPECT_EQ(chain->head(), 3);
  EXPECT_EQ(list(chain->buffers()), (Buffers{readable(data, 44)}));
  EXPECT_EQ(chain->readable_bytes(), 44U);
  EXPECT_EQ(chain->writable_bytes(), 0U);
}

TEST_F(DescriptorChainTest, ReadableThenWritableInAnyTableOrder) {
  set(5, data, 44, N, 2);
  set(2, data + 0x100, 100, N | W, 9);
  set(9, data + 0x200, 200, W);
  auto chain = walk(5);
  ASSERT_TRUE(chain) << chain.error().message();
  EXPECT_EQ(list(chain->readable_buffers()), (Buffers{readable(data, 44)}));
  EXPECT_EQ(list(chain->writable_buffers()),
            (Buffers{writable(data + 0x100, 100), writable(data + 0x200, 200)}));
  EXPECT_EQ(chain->readable_bytes(), 44U);
  EXPECT_EQ(chain->writable_bytes(), 300U);
}

TEST_F(DescriptorChainTest, HeadOutOfRange) {
  EXPECT_EQ(walk(q).error(), Errc::head_out_of_range);
  EXPECT_EQ(walk(0xffff).error(), Errc::head_out_of_range);
}

TEST_F(DescriptorChainTest, NextOutOfRange) {
  set(0, data, 1, N, q);
  EXPECT_EQ(walk(0).error(), Errc::next_out_of_range);
}

TEST_F(DescriptorChainTest, SelfLoopIsDetected) {
  set(4, data, 1, N, 4);
  EXPECT_EQ(walk(4).error(), Errc::chain_too_long);
}

TEST_F(DescriptorChainTest, LongLoopIsDetectedEvenWithoutDeviceLimit) {
  for (std::uint16_t i = 0; i < q; ++i) set(i, data, 0, N, static_cast<std::uint16_t>((i + 1) % q));
  rules.max_descriptors = 1000;
  EXPECT_EQ(walk(7).error(), Errc::chain_too_long);
}

TEST_F(DescriptorChainTest, ChainUsingWholeTableIsAccepted) {
  for (std::uint16_t i = 0; i + 1 < q; ++i) set(i, data, 1, N, static_cast<std::uint16_t>(i + 1));
  set(q - 1, data, 1, 0);
  auto chain = walk(0);
  ASSERT_TRUE(chain) << chain.error().message();
  EXPECT_EQ(chain->buffers().size(), q);
}

TEST_F(DescriptorChainTest, DeviceLimitOnDescriptors) {
  set(0, data, 1, N, 1);
  set(1, data, 1, N, 2);
  set(2, data, 1, 0);
  rules.max_descriptors = 2;
  EXPECT_EQ(walk(0).error(), Errc::descriptor_limit);
  rules.max_descriptors = 3;
  EXPECT_TRUE(walk(0));
}

TEST_F(DescriptorChainTest, ReadableAfterWritableIsRejected) {
  set(0, data, 8, W | N, 1);
  set(1, data, 8, 0);
  EXPECT_EQ(walk(0).error(), Errc::readable_after_writable);
}

TEST_F(DescriptorChainTest, ZeroLengthWritableStillOrdersTheChain) {
  set(0, data, 0, W | N, 1);
  set(1, data, 8, 0);
  EXPECT_EQ(walk(0).error(), Errc::readable_after_writable);
}

TEST_F(DescriptorChainTest, ZeroLengthDescriptorAnywhereIsKept) {
  set(0, 0xdead'0000'0000, 0, N, 1);  // not mapped, but carries no bytes
  set(1, data, 8, 0);
  auto chain = walk(0);
  ASSERT_TRUE(chain) << chain.error().message();
  EXPECT_EQ(list(chain->buffers()), (Buffers{readable(0xdead'0000'0000, 0), readable(data, 8)}));
}

TEST_F(DescriptorChainTest, TotalLengthMustFitIn32Bits) {
  // 4097 entries of 1 MiB each, all pointing at the same mapped MiB: 2^32 + 2^20 bytes.
  GuestRam big{{{0x0, 0x1000}, {0x100000, 0x100000}, {0x200000, 4097 * 16}}};
  DriverRing r{big, RingLayout::packed(GuestPhysAddr{0}, 4, false)};
  std::vector<BufferSpec> buffers(4097, BufferSpec{GuestPhysAddr{0x100000}, 0x100000, false});
  r.write_indirect_chain(0, GuestPhysAddr{0x200000}, buffers);
  const ChainRules many{4, true, 10000};
  EXPECT_EQ(DescriptorChain::walk(big.memory(), r.layout().desc, 0, many).error(),
            Errc::chain_length_overflow);
  // One entry fewer is 2^32 exactly: still one byte too long.
  r.write_indirect_chain(0, GuestPhysAddr{0x200000}, std::span(buffers).first(4096));
  EXPECT_EQ(DescriptorChain::walk(big.memory(), r.layout().desc, 0, many).error(),
            Errc::chain_length_overflow);
  r.write_indirect_chain(0, GuestPhysAddr{0x200000}, std::span(buffers).first(4095));
  EXPECT_TRUE(DescriptorChain::walk(big.memory(), r.layout().desc, 0, many));
}

TEST_F(DescriptorChainTest, BufferInGapIsUnmapped) {
  set(0, gap, 1, 0);
  EXPECT_EQ(walk(0).error(), Errc::unmapped_address);
}

TEST_F(DescriptorChainTest, BufferRunningIntoGapIsUnmapped) {
  set(0, gap - 4, 8, 0);
  EXPECT_EQ(walk(0).error(), Errc::unmapped_address);
}

TEST_F(DescriptorChainTest, BufferWrappingAddressSpaceIsRejected) {
  set(0, UINT64_MAX - 3, 8, 0);
  EXPECT_EQ(walk(0).error(), Errc::address_overflow);
}

TEST_F(DescriptorChainTest, BufferStraddlingTouchingRegionsIsAccepted) {
  set(0, r1 - 16, 32, W);
  auto chain = walk(0);
  ASSERT_TRUE(chain) << chain.error().message();
  EXPECT_EQ(list(chain->buffers()), (Buffers{writable(r1 - 16, 32)}));
}

TEST_F(DescriptorChainTest, DescriptorTableInUnmappedMemory) {
  auto chain = DescriptorChain::walk(ram.memory(), GuestPhysAddr{gap}, 0, rules);
  EXPECT_EQ(chain.error(), Errc::unmapped_address);
}

TEST_F(DescriptorChainTest, ChainIsACopyTheGuestCannotChange) {
  set(0, data, 8, 0);
  auto chain = walk(0);
  ASSERT_TRUE(chain);
  set(0, gap, 0xffff, W);
  EXPECT_EQ(list(chain->buffers()), (Buffers{readable(data, 8)}));
}

TEST_F(DescriptorChainTest, ChainKeepsItsMemorySnapshot) {
  set(0, data, 8, 0);
  auto snapshot = ram.memory();
  auto chain = DescriptorChain::walk(snapshot, ring.layout().desc, 0, rules);
  ASSERT_TRUE(chain);
  EXPECT_EQ(chain->memory(), snapshot);
}

// --- Indirect descriptors (2.7.5.3) ---

TEST_F(DescriptorChainTest, IndirectTable) {
  const std::vector<BufferSpec> buffers{{GuestPhysAddr{data}, 44, false},
                                        {GuestPhysAddr{data + 0x100}, 64, true}};
  ring.write_indirect_chain(6, GuestPhysAddr{0x9000}, buffers);
  auto chain = walk(6);
  ASSERT_TRUE(chain) << chain.error().message();
  EXPECT_EQ(chain->head(), 6);
  EXPECT_EQ(list(chain->buffers()), (Buffers{readable(data, 44), writable(data + 0x100, 64)}));
}

TEST_F(DescriptorChainTest, IndirectNeedsTheFeature) {
  ring.write_indirect_chain(0, GuestPhysAddr{0x9000},
                            std::vector<BufferSpec>{{GuestPhysAddr{data}, 8, false}});
  rules.indirect = false;
  EXPECT_EQ(walk(0).error(), Errc::indirect_not_negotiated);
}

TEST_F(DescriptorChainTest, NestedIndirectIsRejected) {
  const std::vector<Descriptor> table{DriverRing::descriptor(0xa000, 16, I)};
  ring.write_table(GuestPhysAddr{0x9000}, table);
  ring.write_table(GuestPhysAddr{0xa000}, std::vector<Descriptor>{DriverRing::descriptor(data, 8, 0)});
  set(0, 0x9000, 16, I);
  EXPECT_EQ(walk(0).error(), Errc::nested_indirect);
}

TEST_F(DescriptorChainTest, IndirectWithNextIsRejected) {
  ring.write_table(GuestPhysAddr{0x9000}, std::vector<Descriptor>{DriverRing::descriptor(data, 8, 0)});
  set(0, 0x9000, 16, I | N, 1);
  set(1, data, 8, 0);
  EXPECT_EQ(walk(0).error(), Errc::indirect_with_next);
}

TEST_F(DescriptorChainTest, IndirectLengthMustBeNonZeroMultipleOf16) {
  for (std::uint32_t len : {0U, 8U, 17U, 31U}) {
    set(0, 0x9000, len, I);
    EXPECT_EQ(walk(0).error(), Errc::bad_indirect_length) << "len " << len;
  }
}

TEST_F(DescriptorChainTest, IndirectTableInUnmappedMemory) {
  set(0, gap, 32, I);
  EXPECT_EQ(walk(0).error(), Errc::unmapped_address);
}

TEST_F(DescriptorChainTest, IndirectNextBeyondTableIsOutOfRange) {
  // Entry 1 of a 2-entry table points at entry 2: inside the queue size but outside the table.
  ring.write_table(GuestPhysAddr{0x9000}, std::vector<Descriptor>{DriverRing::descriptor(data, 8, N, 1),
                                                                  DriverRing::descriptor(data, 8, N, 2),
                                                                  DriverRing::descriptor(data, 8, 0)});
  set(0, 0x9000, 32, I);
  EXPECT_EQ(walk(0).error(), Errc::next_out_of_range);
}

TEST_F(DescriptorChainTest, LoopInsideIndirectTableIsDetected) {
  ring.write_table(GuestPhysAddr{0x9000}, std::vector<Descriptor>{DriverRing::descriptor(data, 0, N, 1),
                                                                  DriverRing::descriptor(data, 0, N, 0)});
  set(0, 0x9000, 32, I);
  rules.max_descriptors = 1000;
  EXPECT_EQ(walk(0).error(), Errc::chain_too_long);
}

TEST_F(DescriptorChainTest, IndirectEntriesCountAgainstDeviceLimit) {
  const std::vector<BufferSpec> three(3, BufferSpec{GuestPhysAddr{data}, 8, false});
  ring.write_indirect_chain(0, GuestPhysAddr{0x9000}, three);
  rules.max_descriptors = 2;
  EXPECT_EQ(walk(0).error(), Errc::descriptor_limit);
}

TEST_F(DescriptorChainTest, DirectDescriptorsThenOneIndirect) {
  set(0, data, 4, N, 1);
  set(1, 0x9000, 32, I);
  ring.write_table(GuestPhysAddr{0x9000},
                   std::vector<Descriptor>{DriverRing::descriptor(data + 4, 40, N, 1),
                                           DriverRing::descriptor(data + 0x100, 64, W)});
  auto chain = walk(0);
  ASSERT_TRUE(chain) << chain.error().message();
  EXPECT_EQ(list(chain->buffers()),
            (Buffers{readable(data, 4), readable(data + 4, 40), writable(data + 0x100, 64)}));
}

TEST_F(DescriptorChainTest, WritableDirectThenReadableIndirectIsRejected) {
  set(0, data, 4, W | N, 1);
  set(1, 0x9000, 16, I);
  ring.write_table(GuestPhysAddr{0x9000}, std::vector<Descriptor>{DriverRing::descriptor(data, 8, 0)});
  EXPECT_EQ(walk(0).error(), Errc::readable_after_writable);
}

TEST_F(DescriptorChainTest, WriteFlagOnIndirectDescriptorIsIgnored) {
  ring.write_table(GuestPhysAddr{0x9000}, std::vector<Descriptor>{DriverRing::descriptor(data, 8, 0)});
  set(0, 0x9000, 16, I | W);
  auto chain = walk(0);
  ASSERT_TRUE(chain) << chain.error().message();
  EXPECT_EQ(list(chain->buffers()), (Buffers{readable(data, 8)}));
}

TEST_F(DescriptorChainTest, IndirectTableMayStraddleTouchingRegions) {
  const std::vector<BufferSpec> buffers{{GuestPhysAddr{data}, 1, false},
                                        {GuestPhysAddr{data + 1}, 2, false},
                                        {GuestPhysAddr{data + 3}, 3, true}};
  ring.write_indirect_chain(0, GuestPhysAddr{r1 - 24}, buffers);  // entry 1 is split 8 + 8
  auto chain = walk(0);
  ASSERT_TRUE(chain) << chain.error().message();
  EXPECT_EQ(list(chain->buffers()),
            (Buffers{readable(data, 1), readable(data + 1, 2), writable(data + 3, 3)}));
}

TEST_F(DescriptorChainTest, IndirectTableLongerThanQueueIsAcceptedUpToDeviceLimit) {
  const std::vector<BufferSpec> many(100, BufferSpec{GuestPhysAddr{data}, 1, true});
  ring.write_indirect_chain(0, GuestPhysAddr{0x9000}, many);
  rules.max_descriptors = 100;
  auto chain = walk(0);
  ASSERT_TRUE(chain) << chain.error().message();
  EXPECT_EQ(chain->writable_bytes(), 100U);
}

}  // namespace
}  // namespace virtio
