// SplitQueue: set-up validation, pop/push, in-flight accounting, resume and memory updates.
#include "virtio/split_queue.hpp"

#include <gtest/gtest.h>

#include <vector>

#include "driver_ring.hpp"
#include "virtio/chain_io.hpp"

namespace virtio {
namespace {

using test::BufferSpec;
using test::DriverRing;
using test::GuestRam;
using test::RingLayout;

class SplitQueueTest : public ::testing::Test {
 protected:
  static constexpr std::uint64_t r1 = 0x10000;  // touches region 0
  static constexpr std::uint64_t r2 = 0x20000;  // beyond a gap
  static constexpr std::uint64_t data = 0x8000;
  static constexpr std::uint16_t q = 8;

  GuestRam ram{{{0x0, 0x10000}, {r1, 0x1000}, {r2, 0x10000}}};
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};

  SplitQueue make(const QueueConfig& config) {
    auto queue = SplitQueue::create(config, ram.memory());
    if (!queue) throw std::logic_error(queue.error().message());
    return std::move(*queue);
  }

  /// Offers a one-buffer chain at descriptor `head`.
  void offer(std::uint16_t head, std::uint32_t len = 16, bool writable = false) {
    const BufferSpec b{GuestPhysAddr{data + 0x100ULL * head}, len, writable};
    ring.write_chain(head, std::span(&b, 1));
    ring.offer(head);
  }
};

TEST_F(SplitQueueTest, CreateRejectsBadSizes) {
  for (std::uint16_t size : {0, 3, 100, 0xffff}) {
    QueueConfig config = ring.queue_config();
    config.size = size;
    EXPECT_EQ(SplitQueue::create(config, ram.memory()).error(), Errc::bad_queue_size) << size;
  }
}

TEST_F(SplitQueueTest, CreateAcceptsLargestQueue) {
  GuestRam big{{{0x0, 0x100000}}};
  DriverRing r{big, RingLayout::packed(GuestPhysAddr{0}, 32768, true)};
  auto queue = SplitQueue::create(r.queue_config(), big.memory());
  ASSERT_TRUE(queue) << queue.error().message();
  EXPECT_EQ(queue->size(), 32768);
}

TEST_F(SplitQueueTest, CreateRejectsMisalignedAreas) {
  QueueConfig config = ring.queue_config();
  config.desc = GuestPhysAddr{0x1008};
  EXPECT_EQ(SplitQueue::create(config, ram.memory()).error(), Errc::misaligned);
  config = ring.queue_config();
  config.avail = GuestPhysAddr{0x1001};
  EXPECT_EQ(SplitQueue::create(config, ram.memory()).error(), Errc::misaligned);
  config = ring.queue_config();
  config.used = GuestPhysAddr{0x1002};
  EXPECT_EQ(SplitQueue::create(config, ram.memory()).error(), Errc::misaligned);
}

TEST_F(SplitQueueTest, CreateRejectsMisalignedHostMapping) {
  // A frontend may map a region at a host offset that breaks the alignment the
  // guest-physical addresses have; the atomic ring accesses need it in the host.
  auto bytes = std::make_shared<std::vector<std::byte>>(0x2001);
  auto memory = GuestMemory::create({{GuestPhysAddr{0}, std::span(*bytes).subspan(1), bytes}});
  ASSERT_TRUE(memory);
  EXPECT_EQ(SplitQueue::create(ring.queue_config(), *memory).error(), Errc::misaligned);
}

TEST_F(SplitQueueTest, CreateRejectsUnmappedArea) {
  QueueConfig config = ring.queue_config();
  config.used = GuestPhysAddr{0x11000};  // the gap
  EXPECT_EQ(SplitQueue::create(config, ram.memory()).error(), Errc::unmapped_address);
}

TEST_F(SplitQueueTest, CreateRejectsAreaAcrossTwoRegions) {
  QueueConfig config = ring.queue_config();
  config.desc = GuestPhysAddr{r1 - 16};
  EXPECT_EQ(SplitQueue::create(config, ram.memory()).error(), Errc::not_contiguous);
}

TEST_F(SplitQueueTest, EventFieldsMustBeMapped) {
  // The used ring ends exactly at the end of region 2 without its avail_event field.
  QueueConfig config = ring.queue_config();
  config.used = GuestPhysAddr{r2 + 0x10000 - used_ring_area(q, false).size};
  EXPECT_TRUE(SplitQueue::create(config, ram.memory()));
  config.event_idx = true;
  EXPECT_EQ(SplitQueue::create(config, ram.memory()).error(), Errc::unmapped_address);
}

TEST_F(SplitQueueTest, PopOnEmptyRingReturnsNothing) {
  auto queue = make(ring.queue_config());
  auto popped = queue.pop();
  ASSERT_TRUE(popped);
  EXPECT_FALSE(popped->has_value());
  EXPECT_FALSE(queue.has_available());
}

TEST_F(SplitQueueTest, PopThenPushReturnsBufferToDriver) {
  auto queue = make(ring.queue_config());
  offer(5, 64, true);
  EXPECT_TRUE(queue.has_available());
  auto popped = queue.pop();
  ASSERT_TRUE(popped && popped->has_value());
  const DescriptorChain& chain = **popped;
  EXPECT_EQ(chain.head(), 5);
  EXPECT_EQ(chain.writable_bytes(), 64U);
  EXPECT_EQ(queue.next_avail(), 1);
  EXPECT_EQ(queue.in_flight(), 1);
  EXPECT_FALSE(ring.take_used());

  ASSERT_TRUE(queue.push(chain.head(), 12));
  EXPECT_EQ(queue.next_used(), 1);
  EXPECT_EQ(queue.in_flight(), 0);
  const auto used = ring.take_used();
  ASSERT_TRUE(used);
  EXPECT_EQ(used->id, 5U);
  EXPECT_EQ(used->len, 12U);
}

TEST_F(SplitQueueTest, CompletionsMayComeOutOfOrder) {
  auto queue = make(ring.queue_config());
  offer(1);
  offer(2);
  auto a = queue.pop();
  auto b = queue.pop();
  ASSERT_TRUE(a && *a && b && *b);
  ASSERT_TRUE(queue.push((*b)->head(), 0));
  ASSERT_TRUE(queue.push((*a)->head(), 0));
  EXPECT_EQ(ring.take_used()->id, 2U);
  EXPECT_EQ(ring.take_used()->id, 1U);
}

TEST_F(SplitQueueTest, AvailIndexMoreThanQueueSizeAheadIsBroken) {
  auto queue = make(ring.queue_config());
  ring.set_avail_idx(q + 1);
  EXPECT_EQ(queue.pop().error(), Errc::avail_index_ahead);
  EXPECT_EQ(queue.next_avail(), 0);
  ring.set_avail_idx(q);  // exactly a full ring is fine (all heads 0: a valid chain)
  ring.set_descriptor(0, DriverRing::descriptor(data, 1, 0));
  auto popped = queue.pop();
  ASSERT_TRUE(popped && *popped);
}

TEST_F(SplitQueueTest, AvailRingEntryOutOfRangeIsBroken) {
  auto queue = make(ring.queue_config());
  ring.offer(q);
  EXPECT_EQ(queue.pop().error(), Errc::head_out_of_range);
}

TEST_F(SplitQueueTest, FailedPopConsumesNothing) {
  auto queue = make(ring.queue_config());
  ring.set_descriptor(0, DriverRing::descriptor(data, 1, VIRTQ_DESC_F_NEXT, q));
  ring.offer(0);
  EXPECT_EQ(queue.pop().error(), Errc::next_out_of_range);
  EXPECT_EQ(queue.next_avail(), 0);
  EXPECT_EQ(queue.in_flight(), 0);
}

TEST_F(SplitQueueTest, MoreThanQueueSizeInFlightIsBroken) {
  auto queue = make(ring.queue_config());
  for (std::uint16_t i = 0; i < q; ++i) offer(i);
  for (std::uint16_t i = 0; i < q; ++i) ASSERT_TRUE(queue.pop());
  EXPECT_EQ(queue.in_flight(), q);
  offer(0);  // the driver reuses a descriptor the device still holds
  EXPECT_EQ(queue.pop().error(), Errc::too_many_in_flight);
}

TEST_F(SplitQueueTest, PushRejectsDeviceBugs) {
  auto queue = make(ring.queue_config());
  EXPECT_EQ(queue.push(0, 0).error(), Errc::nothing_in_flight);
  offer(0);
  ASSERT_TRUE(queue.pop());
  EXPECT_EQ(queue.push(q, 0).error(), Errc::head_out_of_range);
  EXPECT_EQ(queue.in_flight(), 1);
  EXPECT_EQ(ring.used_idx(), 0);
}

TEST_F(SplitQueueTest, PopAppliesDeviceDescriptorLimit) {
  auto queue = make(ring.queue_config());
  const std::vector<BufferSpec> three(3, BufferSpec{GuestPhysAddr{data}, 4, false});
  ring.offer(ring.write_chain(0, three));
  EXPECT_EQ(queue.pop(2).error(), Errc::descriptor_limit);
  auto popped = queue.pop(3);
  ASSERT_TRUE(popped && *popped);
}

TEST_F(SplitQueueTest, IndirectChainsNeedTheFeature) {
  const BufferSpec b{GuestPhysAddr{data}, 4, false};
  ring.offer(ring.write_indirect_chain(0, GuestPhysAddr{0x9000}, std::span(&b, 1)));
  auto plain = make(ring.queue_config(false));
  EXPECT_EQ(plain.pop().error(), Errc::indirect_not_negotiated);
  auto indirect = make(ring.queue_config(true));
  auto popped = indirect.pop();
  ASSERT_TRUE(popped && *popped);
  EXPECT_EQ((*popped)->readable_bytes(), 4U);
}

TEST_F(SplitQueueTest, RewindOffersUnpushedChainsAgain) {
  auto queue = make(ring.queue_config());
  for (std::uint16_t i = 0; i < 3; ++i) offer(i);
  auto first = queue.pop();
  ASSERT_TRUE(first && *first);
  ASSERT_TRUE(queue.push((*first)->head(), 0));
  ASSERT_TRUE(queue.pop());
  ASSERT_TRUE(queue.pop());
  EXPECT_EQ(queue.next_avail(), 3);
  EXPECT_EQ(queue.in_flight(), 2);

  queue.rewind_in_flight();  // GET_VRING_BASE: first buffer not yet consumed
  EXPECT_EQ(queue.next_avail(), 1);
  EXPECT_EQ(queue.in_flight(), 0);
  auto again = queue.pop();
  ASSERT_TRUE(again && *again);
  EXPECT_EQ((*again)->head(), 1);
}

TEST_F(SplitQueueTest, ResumesUsedSideFromGuestMemory) {
  // A previous backend stopped at next_avail 1003 with used->idx 1000 in guest memory.
  ring.set_used_idx(1000);
  ring.set_avail_idx(1003);
  for (std::uint16_t idx = 1003; idx < 1005; ++idx) {
    const std::uint16_t head = idx % q;
    const BufferSpec b{GuestPhysAddr{data}, 8, true};
    ring.write_chain(head, std::span(&b, 1));
    ring.offer(head);
  }
  auto queue = make(ring.queue_config(false, false, 1003));
  EXPECT_EQ(queue.next_avail(), 1003);
  EXPECT_EQ(queue.next_used(), 1000);
  EXPECT_EQ(queue.in_flight(), 0);

  queue.rewind_in_flight();  // must not move behind what the frontend gave us
  EXPECT_EQ(queue.next_avail(), 1003);

  auto popped = queue.pop();
  ASSERT_TRUE(popped && *popped);
  EXPECT_EQ((*popped)->head(), 1003 % q);
  ASSERT_TRUE(queue.push((*popped)->head(), 8));
  EXPECT_EQ(ring.used_idx(), 1001);
  EXPECT_EQ(ring.used_elem(1000 % q).id, 1003U % q);
}

TEST_F(SplitQueueTest, UpdateMemoryReachesNewRegions) {
  // The memory table first lacks region 2; the driver then offers a buffer there.
  auto queue = SplitQueue::create(ring.queue_config(), ram.memory_of({0, 1}));
  ASSERT_TRUE(queue);
  const BufferSpec b{GuestPhysAddr{r2}, 8, false};
  ring.offer(ring.write_chain(0, std::span(&b, 1)));
  EXPECT_EQ(queue->pop().error(), Errc::unmapped_address);

  const auto bigger = ram.memory();
  ASSERT_TRUE(queue->update_memory(bigger));
  EXPECT_EQ(queue->memory(), bigger);
  auto popped = queue->pop();
  ASSERT_TRUE(popped && *popped);
  EXPECT_EQ((*popped)->memory(), bigger);
}

TEST_F(SplitQueueTest, FailedUpdateMemoryKeepsOldSnapshot) {
  const auto original = ram.memory();
  auto queue = SplitQueue::create(ring.queue_config(), original);
  ASSERT_TRUE(queue);
  EXPECT_EQ(queue->update_memory(ram.memory_of({1, 2})).error(), Errc::unmapped_address);
  EXPECT_EQ(queue->memory(), original);
  offer(0);
  auto popped = queue->pop();
  ASSERT_TRUE(popped && *popped);
}

TEST_F(SplitQueueTest, PoppedChainOutlivesMemoryUpdate) {
  auto queue = make(ring.queue_config());
  ram.write(GuestPhysAddr{data}, std::vector<std::byte>(16, std::byte{0x5a}));
  offer(0);
  auto popped = queue.pop();
  ASSERT_TRUE(popped && *popped);
  ASSERT_TRUE(queue.update_memory(ram.memory_of({0})));
  ChainReader reader(**popped);
  auto byte = reader.read_obj<std::uint8_t>();
  ASSERT_TRUE(byte);
  EXPECT_EQ(*byte, 0x5a);
}

}  // namespace
}  // namespace virtio
