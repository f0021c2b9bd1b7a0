// Driver: the guest side of a split virtqueue, checked against a device played by hand on
// the ring memory (no backend involved), so the simulator's own rules are tested.
#include <poll.h>
#include <sys/eventfd.h>

#include <cstring>

#include <gtest/gtest.h>

#include "virtio/ring.hpp"
#include "vusim/driver.hpp"

namespace vusim {
namespace {

constexpr std::uint64_t mib = 1 << 20;

/// The device's view of a Driver's rings, through the addresses it would get in
/// SET_VRING_ADDR (the simulator's own pointers).
class HandDevice {
 public:
  explicit HandDevice(const Driver& d) : addr_(d.vring_addr()), size_(d.options().size) {}

  [[nodiscard]] virtio::Descriptor desc(std::uint16_t i) const {
    virtio::Descriptor d;
    std::memcpy(&d, ptr(addr_.desc_user_addr) + i * sizeof d, sizeof d);
    return d;
  }
  [[nodiscard]] std::uint16_t avail_idx() const { return le16(addr_.avail_user_addr, 2); }
  [[nodiscard]] std::uint16_t avail_flags() const { return le16(addr_.avail_user_addr, 0); }
  [[nodiscard]] std::uint16_t avail_entry(std::uint16_t slot) const {
    return le16(addr_.avail_user_addr, virtio::avail_ring_entry_offset(slot));
  }
  [[nodiscard]] std::uint16_t used_event() const {
    return le16(addr_.avail_user_addr, virtio::used_event_offset(size_));
  }
  void set_used_flags(std::uint16_t v) { set_le16(addr_.used_user_addr, 0, v); }
  void set_avail_event(std::uint16_t v) {
    set_le16(addr_.used_user_addr, virtio::avail_event_offset(size_), v);
  }
  void push(std::uint32_t id, std::uint32_t len) {
    virtio::UsedElem e;
    e.id = id;
    e.len = len;
    std::memcpy(ptr(addr_.used_user_addr) + virtio::used_elem_offset(used_ & (size_ - 1)), &e, sizeof e);
    set_used_idx(++used_);
  }
  void set_used_idx(std::uint16_t v) { set_le16(addr_.used_user_addr, 2, v); }

 private:
  static std::byte* ptr(std::uint64_t qva) { return reinterpret_cast<std::byte*>(qva); }
  static std::uint16_t le16(std::uint64_t base, std::size_t off) {
    virtio::Le16 v;
    std::memcpy(&v, ptr(base) + off, 2);
    return v.value();
  }
  static void set_le16(std::uint64_t base, std::size_t off, std::uint16_t value) {
    virtio::Le16 v;
    v = value;
    std::memcpy(ptr(base) + off, &v, 2);
  }

  vhostuser::VringAddr addr_;
  std::uint16_t size_;
  std::uint16_t used_ = 0;
};

bool readable(int fd) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) == 1;
}

class DriverTest : public ::testing::Test {
 protected:
  void make(bool event_idx, bool indirect, unsigned regions = 1) {
    auto r = GuestRam::contiguous(mib, regions);
    ASSERT_TRUE(r) << r.error();
    ram_ = *r;
    auto d = Driver::create(*ram_, {.index = 0, .size = 8, .event_idx = event_idx, .indirect = indirect});
    ASSERT_TRUE(d) << d.error();
    driver_.emplace(std::move(*d));
    device_.emplace(*driver_);
  }
  std::optional<GuestRam> ram_;
  std::optional<Driver> driver_;
  std::optional<HandDevice> device_;
};

TEST_F(DriverTest, RingAreasAreAlignedAndAddressedAsQemuDoes) {
  make(true, false);
  const auto a = driver_->vring_addr();
  EXPECT_EQ(a.desc_user_addr % 16, 0U);
  EXPECT_EQ(a.avail_user_addr % 2, 0U);
  EXPECT_EQ(a.used_user_addr % 4, 0U);
  // log_guest_addr is the used ring's guest-physical address.
  const auto host = reinterpret_cast<std::uint64_t>(ram_->regions()[0].host);
  EXPECT_EQ(a.log_guest_addr, a.used_user_addr - host);
}

TEST_F(DriverTest, DirectChainIsLinkedReadableFirst) {
  make(false, false);
  auto head = driver_->add({.segments = {{.len = 10, .writable = false}, {.len = 20}, {.len = 30}}});
  ASSERT_TRUE(head) << head.error();
  EXPECT_EQ(device_->avail_idx(), 0) << "not visible before publish()";
  driver_->publish();
  EXPECT_EQ(device_->avail_idx(), 1);
  EXPECT_EQ(device_->avail_entry(0), *head);

  const std::uint32_t lens[] = {10, 20, 30};
  std::uint16_t i = *head;
  for (int k = 0; k < 3; ++k) {
    const auto d = device_->desc(i);
    EXPECT_EQ(d.len.value(), lens[k]);
    EXPECT_EQ((d.flags.value() & virtio::VIRTQ_DESC_F_WRITE) != 0, k > 0);
    EXPECT_EQ((d.flags.value() & virtio::VIRTQ_DESC_F_NEXT) != 0, k < 2);
    std::byte first{};
    ASSERT_TRUE(ram_->read(Gpa{d.addr.value()}, std::span(&first, 1)));
    EXPECT_EQ(first, k == 0 ? std::byte{0xa5} : std::byte{0});
    i = d.next.value();
  }
  EXPECT_EQ(driver_->free_descriptors(), 5U);
}

TEST_F(DriverTest, IndirectTableComesLastAndStartsAtEntryZero) {
  make(false, true);
  auto head = driver_->add(
      {.segments = {{.len = 8, .writable = false}, {.len = 16}, {.len = 32}}, .indirect_from = 1});
  ASSERT_TRUE(head) << head.error();
  const auto direct = device_->desc(*head);
  EXPECT_EQ(direct.len.value(), 8U);
  EXPECT_EQ(direct.flags.value(), virtio::VIRTQ_DESC_F_NEXT);
  const auto ind = device_->desc(direct.next.value());
  EXPECT_EQ(ind.flags.value(), virtio::VIRTQ_DESC_F_INDIRECT);  // no NEXT with INDIRECT (2.7.5.3.1)
  ASSERT_EQ(ind.len.value(), 2 * sizeof(virtio::Descriptor));
  virtio::Descriptor table[2];
  ASSERT_TRUE(ram_->read(Gpa{ind.addr.value()}, std::as_writable_bytes(std::span(table))));
  EXPECT_EQ(table[0].len.value(), 16U);
  EXPECT_EQ(table[0].flags.value(), virtio::VIRTQ_DESC_F_WRITE | virtio::VIRTQ_DESC_F_NEXT);
  EXPECT_EQ(table[0].next.value(), 1);
  EXPECT_EQ(table[1].len.value(), 32U);
  EXPECT_EQ(table[1].flags.value(), virtio::VIRTQ_DESC_F_WRITE);
  EXPECT_EQ(driver_->free_descriptors(), 6U);  // two ring entries for three buffers
}

TEST_F(DriverTest, StraddlingSegmentCrossesTheRegionBoundary) {
  make(false, false, 2);
  auto head = driver_->add({.segments = {{.len = 64, .straddle = true}}});
  ASSERT_TRUE(head) << head.error();
  const auto d = device_->desc(*head);
  EXPECT_EQ(d.addr.value(), mib - 32);
  EXPECT_EQ(d.len.value(), 64U);
}

TEST_F(DriverTest, RefusesLayoutsAGuestMustNotBuild) {
  make(false, false);
  EXPECT_FALSE(driver_->add({}));
  EXPECT_FALSE(driver_->add({.segments = {{.len = 1}, {.len = 1, .writable = false}}}));  // writable first
  EXPECT_FALSE(driver_->add({.segments = {{.len = 1}}, .indirect_from = 0}));             // not negotiated
  EXPECT_FALSE(driver_->add({.segments = std::vector<Segment>(9, Segment{.len = 1})}));   // 9 > Q
  EXPECT_EQ(driver_->free_descriptors(), 8U);
  EXPECT_EQ(driver_->outstanding(), 0U);
}

TEST_F(DriverTest, KicksUnlessTheDeviceSetNoNotify) {
  make(false, false);
  ASSERT_TRUE(driver_->add({.segments = {{.len = 1}}}));
  auto kicked = driver_->kick();
  ASSERT_TRUE(kicked);
  EXPECT_TRUE(*kicked);
  EXPECT_TRUE(readable(driver_->kick_fd()));
  eventfd_t drained;
  ASSERT_EQ(::eventfd_read(driver_->kick_fd(), &drained), 0);

  device_->set_used_flags(virtio::VIRTQ_USED_F_NO_NOTIFY);
  ASSERT_TRUE(driver_->add({.segments = {{.len = 1}}}));
  kicked = driver_->kick();
  ASSERT_TRUE(kicked);
  EXPECT_FALSE(*kicked);
  EXPECT_FALSE(readable(driver_->kick_fd()));
}

TEST_F(DriverTest, EventIdxKicksOnlyWhenCrossingAvailEvent) {
  make(true, false);
  ASSERT_TRUE(driver_->add({.segments = {{.len = 1}}}));
  EXPECT_TRUE(*driver_->kick());  // 0 -> 1 crosses avail_event 0
  ASSERT_TRUE(driver_->add({.segments = {{.len = 1}}}));
  EXPECT_FALSE(*driver_->kick());  // 1 -> 2: the device still asks for entry 0
  device_->set_avail_event(2);
  ASSERT_TRUE(driver_->add({.segments = {{.len = 1}}}));
  ASSERT_TRUE(driver_->add({.segments = {{.len = 1}}}));
  EXPECT_TRUE(*driver_->kick());  // 2 -> 4 crosses 2
}

TEST_F(DriverTest, InterruptSuppressionFields) {
  make(true, false);
  EXPECT_FALSE(driver_->enable_interrupts());
  EXPECT_EQ(device_->used_event(), 0);
  driver_->disable_interrupts();
  EXPECT_EQ(device_->used_event(), 0xffff);
  make(false, false);
  driver_->disable_interrupts();
  EXPECT_EQ(device_->avail_flags(), virtio::VIRTQ_AVAIL_F_NO_INTERRUPT);
  EXPECT_FALSE(driver_->enable_interrupts());
  EXPECT_EQ(device_->avail_flags(), 0);
}

TEST_F(DriverTest, CollectsCompletionsAndFreesTheirBuffers) {
  make(false, false);
  const auto free_before = ram_->free_bytes();
  auto head = driver_->add({.segments = {{.len = 4, .writable = false}, {.len = 3}, {.len = 5}}});
  ASSERT_TRUE(head);
  driver_->publish();
  // The device writes 6 bytes: 3 into the first writable buffer, 3 into the second.
  std::uint16_t i = device_->desc(*head).next.value();
  const auto w1 = device_->desc(i);
  const auto w2 = device_->desc(w1.next.value());
  const std::byte a[] = {std::byte{1}, std::byte{2}, std::byte{3}};
  ASSERT_TRUE(ram_->write(Gpa{w1.addr.value()}, a));
  ASSERT_TRUE(ram_->write(Gpa{w2.addr.value()}, a));
  device_->push(*head, 6);
  EXPECT_TRUE(driver_->enable_interrupts()) << "used entries already pending";
  {
    auto done = driver_->take_used();
    ASSERT_TRUE(done) << done.error();
    ASSERT_EQ(done->size(), 1U);
    const Completion& c = done->front();
    EXPECT_EQ(c.head, *head);
    EXPECT_EQ(c.len, 6U);
    EXPECT_EQ(c.writable_capacity, 8U);
    auto data = c.written(*ram_);
    ASSERT_TRUE(data);
    const std::vector<std::byte> want = {a[0], a[1], a[2], a[0], a[1], a[2]};
    EXPECT_EQ(*data, want);
    EXPECT_EQ(driver_->outstanding(), 0U);
    EXPECT_EQ(driver_->free_descriptors(), 8U);
  }
  EXPECT_EQ(ram_->free_bytes(), free_before);
}

TEST_F(DriverTest, RefusesUsedIdsThatAreNotOutstanding) {
  make(false, false);
  auto head = driver_->add({.segments = {{.len = 4}}});
  ASSERT_TRUE(head);
  driver_->publish();
  device_->push(static_cast<std::uint32_t>(*head + 1), 0);
  auto done = driver_->take_used();
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().fault, Fault::guest);
}

TEST_F(DriverTest, RefusesUsedLenBeyondTheWritableBytes) {
  make(false, false);
  auto head = driver_->add({.segments = {{.len = 4, .writable = false}, {.len = 4}}});
  ASSERT_TRUE(head);
  driver_->publish();
  device_->push(*head, 5);
  auto done = driver_->take_used();
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().fault, Fault::guest);
}

TEST_F(DriverTest, RefusesUsedIdxAheadOfWhatIsOutstanding) {
  make(false, false);
  ASSERT_TRUE(driver_->add({.segments = {{.len = 4}}}));
  driver_->publish();
  device_->set_used_idx(2);
  auto done = driver_->take_used();
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().fault, Fault::guest);
}

TEST_F(DriverTest, WaitingForADeviceThatNeverAnswersTimesOut) {
  make(false, false);
  ASSERT_TRUE(driver_->add({.segments = {{.len = 4}}}));
  ASSERT_TRUE(driver_->kick());
  auto done = driver_->wait_used(1, std::chrono::milliseconds(50));
  ASSERT_FALSE(done);
  EXPECT_EQ(done.error().fault, Fault::timeout);
  EXPECT_NE(done.error().message.find("0 of 1 chains used"), std::string::npos) << done.error();
  EXPECT_FALSE(driver_->wait_used(2, std::chrono::milliseconds(50)));  // more than outstanding
}

}  // namespace
}  // namespace vusim
