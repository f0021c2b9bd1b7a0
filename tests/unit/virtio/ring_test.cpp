// Ring layout helpers and the EVENT_IDX inequality.
#include "virtio/ring.hpp"

#include <gtest/gtest.h>
#include <rapidcheck/gtest.h>

namespace virtio {
namespace {

TEST(RingLayout, AreaSizesFollowTheSpecTable) {
  // 2.7: desc 16*Q, avail 6+2*Q, used 6+8*Q; the trailing 2 bytes only with EVENT_IDX.
  EXPECT_EQ(descriptor_table_area(1).size, 16U);
  EXPECT_EQ(descriptor_table_area(32768).size, 16U * 32768);
  EXPECT_EQ(avail_ring_area(128, true).size, 6U + 2 * 128);
  EXPECT_EQ(avail_ring_area(128, false).size, 4U + 2 * 128);
  EXPECT_EQ(used_ring_area(128, true).size, 6U + 8 * 128);
  EXPECT_EQ(used_ring_area(128, false).size, 4U + 8 * 128);
  EXPECT_EQ(descriptor_table_area(8).align, 16U);
  EXPECT_EQ(avail_ring_area(8, false).align, 2U);
  EXPECT_EQ(used_ring_area(8, false).align, 4U);
}

TEST(RingLayout, EventFieldsFollowTheRings) {
  EXPECT_EQ(avail_ring_entry_offset(0), 4U);
  EXPECT_EQ(used_event_offset(64), 4U + 2 * 64);
  EXPECT_EQ(used_elem_offset(3), 4U + 8 * 3);
  EXPECT_EQ(avail_event_offset(64), 4U + 8 * 64);
}

TEST(VringNeedEvent, NotifiesOnlyWhenUsedEventIsCrossed) {
  // Batch moved used->idx from 10 to 13: entries 10, 11, 12 written.
  EXPECT_FALSE(vring_need_event(9, 13, 10));
  EXPECT_TRUE(vring_need_event(10, 13, 10));
  EXPECT_TRUE(vring_need_event(12, 13, 10));
  EXPECT_FALSE(vring_need_event(13, 13, 10));
  EXPECT_FALSE(vring_need_event(10, 10, 10));  // nothing written
}

TEST(VringNeedEvent, WorksAcrossU16Wrap) {
  // used->idx moved from 65534 to 2: entries 65534, 65535, 0, 1.
  EXPECT_TRUE(vring_need_event(65534, 2, 65534));
  EXPECT_TRUE(vring_need_event(65535, 2, 65534));
  EXPECT_TRUE(vring_need_event(0, 2, 65534));
  EXPECT_TRUE(vring_need_event(1, 2, 65534));
  EXPECT_FALSE(vring_need_event(2, 2, 65534));
  EXPECT_FALSE(vring_need_event(65533, 2, 65534));
}

RC_GTEST_PROP(VringNeedEvent, EqualsEventInsideWrittenWindow, (std::uint16_t old_idx, std::uint16_t event)) {
  // Model: walk the written entries one by one and look for used_event.
  const auto written = *rc::gen::inRange<std::uint32_t>(0, 65536);
  bool crossed = false;
  for (std::uint32_t i = 0; i < written && !crossed; ++i) {
    crossed = static_cast<std::uint16_t>(old_idx + i) == event;
  }
  const auto new_idx = static_cast<std::uint16_t>(old_idx + written);
  RC_ASSERT(vring_need_event(event, new_idx, old_idx) == crossed);
}

}  // namespace
}  // namespace virtio
