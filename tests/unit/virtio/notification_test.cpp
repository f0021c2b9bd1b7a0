// SplitQueue notification suppression in both directions (2.7.7, 2.7.10), with and without
// VIRTIO_F_EVENT_IDX, and VIRTIO_F_NOTIFY_ON_EMPTY.
#include <gtest/gtest.h>

#include "driver_ring.hpp"
#include "virtio/split_queue.hpp"

namespace virtio {
namespace {

using test::BufferSpec;
using test::DriverRing;
using test::GuestRam;
using test::RingLayout;

class NotificationTest : public ::testing::Test {
 protected:
  static constexpr std::uint64_t data = 0x8000;
  static constexpr std::uint16_t q = 8;

  GuestRam ram{{{0x0, 0x10000}}};

  /// A ring whose indices all start at `start` (to test u16 wrap-around).
  SplitQueue make(DriverRing& ring, std::uint16_t start = 0, bool notify_on_empty = false) {
    ring.set_used_idx(start);
    ring.set_avail_idx(start);
    auto queue = SplitQueue::create(ring.queue_config(false, notify_on_empty, start), ram.memory());
    if (!queue) throw std::logic_error(queue.error().message());
    return std::move(*queue);
  }

  static void offer(DriverRing& ring, std::uint16_t head) {
    const BufferSpec b{GuestPhysAddr{data}, 16, true};
    ring.write_chain(head, std::span(&b, 1));
    ring.offer(head);
  }

  /// Offers, pops and pushes one chain.
  static void complete_one(DriverRing& ring, SplitQueue& queue) {
    offer(ring, static_cast<std::uint16_t>(queue.next_avail() % q));
    auto popped = queue.pop();
    ASSERT_TRUE(popped && *popped);
    ASSERT_TRUE(queue.push((*popped)->head(), 1));
  }
};

// --- Without EVENT_IDX: flags ---

TEST_F(NotificationTest, FlagsNotifyUnlessDriverSetsNoInterrupt) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};
  auto queue = make(ring);
  complete_one(ring, queue);
  EXPECT_TRUE(queue.needs_notification());
  ring.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  complete_one(ring, queue);
  EXPECT_FALSE(queue.needs_notification());
}

TEST_F(NotificationTest, NothingPushedNothingToNotify) {
  // 2.7.7.2: notifications follow used buffers. A kick with no new buffer must not make the
  // device interrupt the guest.
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};
  auto queue = make(ring, 0, true);
  complete_one(ring, queue);
  EXPECT_TRUE(queue.needs_notification());
  auto empty = queue.pop();
  ASSERT_TRUE(empty && !*empty);
  EXPECT_FALSE(queue.needs_notification());  // even with NOTIFY_ON_EMPTY and a drained ring
}

TEST_F(NotificationTest, FlagsDisableAndEnableKicks) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};
  auto queue = make(ring);
  queue.disable_notifications();
  EXPECT_EQ(ring.used_flags(), VIRTQ_USED_F_NO_NOTIFY);
  EXPECT_FALSE(queue.enable_notifications());
  EXPECT_EQ(ring.used_flags(), 0);
}

TEST_F(NotificationTest, EnableReportsBuffersOfferedWhileDisabled) {
  // The lost-kick race: the driver offers a buffer while it still sees NO_NOTIFY, so it does
  // not kick. enable_notifications() must report the buffer instead.
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};
  auto queue = make(ring);
  queue.disable_notifications();
  offer(ring, 0);
  EXPECT_TRUE(queue.enable_notifications());
  ASSERT_TRUE(queue.pop());
  EXPECT_FALSE(queue.enable_notifications());
}

TEST_F(NotificationTest, FlagsCreateClearsStaleNoNotify) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};
  auto first = make(ring);
  first.disable_notifications();  // a previous backend stopped with kicks off
  auto queue = make(ring);
  EXPECT_EQ(ring.used_flags(), 0);
  EXPECT_TRUE(ring.offer(0));
}

TEST_F(NotificationTest, FlagsNoKickWhileDisabled) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};
  auto queue = make(ring);
  queue.disable_notifications();
  EXPECT_FALSE(ring.offer(0));
  EXPECT_TRUE(queue.enable_notifications());
}

// --- With EVENT_IDX: used_event / avail_event ---

TEST_F(NotificationTest, EventIdxDeviceThatPopsUntilEmptyGetsEveryKick) {
  // Like Linux virtio-rng: one buffer, kick, wait for it, the next buffer. The device only
  // pops until the ring is empty; avail_event must follow it or the second kick never comes.
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, true)};
  auto queue = make(ring, 65534);
  for (int i = 0; i < 4; ++i) {
    const BufferSpec b{GuestPhysAddr{data}, 16, true};
    ring.write_chain(0, std::span(&b, 1));
    ASSERT_TRUE(ring.offer(0)) << "request " << i;
    auto popped = queue.pop();
    ASSERT_TRUE(popped && *popped);
    ASSERT_TRUE(queue.push((*popped)->head(), 16));
    auto empty = queue.pop();
    ASSERT_TRUE(empty && !*empty);
  }
}

TEST_F(NotificationTest, EventIdxAvailEventFollowsPopsOnlyWhileEnabled) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, true)};
  auto queue = make(ring, 500);
  EXPECT_EQ(ring.avail_event(), 500);  // create asks for a kick for the first entry
  for (std::uint16_t h = 0; h < 4; ++h) offer(ring, h);
  ASSERT_TRUE(queue.pop());
  EXPECT_EQ(ring.avail_event(), 501);
  queue.disable_notifications();
  ASSERT_TRUE(queue.pop());
  ASSERT_TRUE(queue.pop());
  EXPECT_EQ(ring.avail_event(), 501);  // already published: no further kick
  EXPECT_FALSE(ring.offer(5));
  EXPECT_TRUE(queue.enable_notifications());  // two entries pending
  EXPECT_EQ(ring.avail_event(), 503);
}

TEST_F(NotificationTest, EventIdxFirstDecisionAlwaysNotifies) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, true)};
  auto queue = make(ring);
  ring.set_used_event(100);  // far away
  complete_one(ring, queue);
  EXPECT_TRUE(queue.needs_notification());
  complete_one(ring, queue);
  EXPECT_FALSE(queue.needs_notification());
}

TEST_F(NotificationTest, EventIdxFirstDecisionAfterRestartNotifiesWithoutPush) {
  // A previous backend may have published entries without notifying; the new queue cannot
  // know, so its first decision notifies.
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, true)};
  auto queue = make(ring, 7);
  ring.set_used_event(100);
  EXPECT_TRUE(queue.needs_notification());
  EXPECT_FALSE(queue.needs_notification());
}

TEST_F(NotificationTest, EventIdxNotifiesWhenUsedEventIsWritten) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, true)};
  auto queue = make(ring);
  complete_one(ring, queue);
  ASSERT_TRUE(queue.needs_notification());  // used->idx now 1

  ring.set_used_event(3);     // "notify me when you write entry 3"
  complete_one(ring, queue);  // entry 1
  EXPECT_FALSE(queue.needs_notification());
  complete_one(ring, queue);  // entry 2
  complete_one(ring, queue);  // entry 3
  EXPECT_TRUE(queue.needs_notification());
  EXPECT_FALSE(queue.needs_notification());  // nothing new since the last decision
}

TEST_F(NotificationTest, EventIdxIgnoresNoInterruptFlag) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, true)};
  auto queue = make(ring);
  complete_one(ring, queue);
  ASSERT_TRUE(queue.needs_notification());
  ring.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  ring.set_used_event(1);
  complete_one(ring, queue);
  EXPECT_TRUE(queue.needs_notification());
}

TEST_F(NotificationTest, EventIdxAcrossU16Wrap) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, true)};
  auto queue = make(ring, 65534);
  complete_one(ring, queue);  // entry 65534
  ASSERT_TRUE(queue.needs_notification());

  ring.set_used_event(0);     // the entry after 65535
  complete_one(ring, queue);  // entry 65535
  EXPECT_FALSE(queue.needs_notification());
  complete_one(ring, queue);  // entry 0
  EXPECT_EQ(queue.next_used(), 1);
  EXPECT_TRUE(queue.needs_notification());

  ring.set_used_event(65535);  // already behind: no notification until it comes round again
  complete_one(ring, queue);
  EXPECT_FALSE(queue.needs_notification());
}

TEST_F(NotificationTest, EventIdxBatchCrossingUsedEventNotifiesOnce) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, true)};
  auto queue = make(ring, 65530);
  complete_one(ring, queue);
  ASSERT_TRUE(queue.needs_notification());  // used->idx 65531
  ring.set_used_event(65533);
  for (int i = 0; i < 6; ++i) complete_one(ring, queue);  // entries 65531..0
  EXPECT_TRUE(queue.needs_notification());
}

TEST_F(NotificationTest, EventIdxLongWindowWithoutDecisionNotifies) {
  // A device that pushes 2^16 + 2 entries between two decisions has written used_event (0)
  // once more, but mod 2^16 the window [1, 3) no longer contains it: vring_need_event alone
  // would miss the notification the driver waits for. The queue must notify.
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, true)};
  auto queue = make(ring);
  complete_one(ring, queue);
  ASSERT_TRUE(queue.needs_notification());  // decision at used->idx 1
  for (int i = 0; i < 0x10002; ++i) complete_one(ring, queue);
  ring.set_used_event(0);
  ASSERT_EQ(queue.next_used(), 3);
  ASSERT_FALSE(vring_need_event(0, 3, 1));
  EXPECT_TRUE(queue.needs_notification());
}

TEST_F(NotificationTest, EventIdxEnableWritesAvailEventAndDisableWritesNothing) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, true)};
  auto queue = make(ring, 40000);
  offer(ring, 0);
  offer(ring, 1);
  ASSERT_TRUE(queue.pop());
  EXPECT_TRUE(queue.enable_notifications());  // one chain still pending
  EXPECT_EQ(ring.avail_event(), 40001);       // "kick me for the first one I have not popped"
  ASSERT_TRUE(queue.pop());
  EXPECT_FALSE(queue.enable_notifications());
  EXPECT_EQ(ring.avail_event(), 40002);

  queue.disable_notifications();
  EXPECT_EQ(ring.avail_event(), 40002);
  EXPECT_EQ(ring.used_flags(), 0);  // flags stay 0 with EVENT_IDX
}

// --- NOTIFY_ON_EMPTY ---

TEST_F(NotificationTest, NotifyOnEmptyOverridesSuppressionWhenRingRunsDry) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};
  auto queue = make(ring, 0, true);
  ring.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  complete_one(ring, queue);
  EXPECT_TRUE(queue.needs_notification());  // nothing in flight, nothing available
}

TEST_F(NotificationTest, NotifyOnEmptyNeedsNothingInFlight) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};
  auto queue = make(ring, 0, true);
  ring.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  offer(ring, 0);
  ASSERT_TRUE(queue.pop());
  EXPECT_FALSE(queue.needs_notification());
}

TEST_F(NotificationTest, NotifyOnEmptyNeedsEmptyAvailRing) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};
  auto queue = make(ring, 0, true);
  ring.set_avail_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  complete_one(ring, queue);
  offer(ring, 1);
  EXPECT_FALSE(queue.needs_notification());
}

TEST_F(NotificationTest, NotifyOnEmptyAlsoOverridesUsedEvent) {
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, true)};
  auto queue = make(ring, 0, true);
  complete_one(ring, queue);
  ASSERT_TRUE(queue.needs_notification());
  ring.set_used_event(100);
  complete_one(ring, queue);
  EXPECT_TRUE(queue.needs_notification());
}

}  // namespace
}  // namespace virtio
