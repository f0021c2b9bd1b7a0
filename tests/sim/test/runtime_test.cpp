// While rings run: guest memory changing under them (QEMU's memory hotplug path), a hostile
// guest breaking its own ring, and the control requests QEMU sends outside the start/stop
// sequences (RESET_DEVICE, RESET_OWNER, SET_CONFIG).
#include <cstring>

#include <gtest/gtest.h>

#include "assert_ok.hpp"
#include "test_vm.hpp"
#include "virtio/ring.hpp"
#include "vusim/rng.hpp"

namespace vusim {
namespace {

using namespace std::chrono_literals;
using test::TwoQueueDevice;
using test::Vm;
using vhostuser::bit;
using PF = vhostuser::ProtocolFeature;

using RngVm = Vm<rng::RngDevice>;

/// realize + start with QEMU 7.2 on an rng VM of `regions` separate memfds.
::testing::AssertionResult started(RngVm& vm, std::optional<Frontend>& fe) {
  auto connected = vm.connect();
  if (!connected) return ::testing::AssertionFailure() << connected.error();
  fe.emplace(std::move(*connected));
  if (auto ok = qemu72_realize(*fe, vm.dev); !ok) return ::testing::AssertionFailure() << ok.error();
  if (auto ok = qemu72_start(*fe, vm.dev); !ok) return ::testing::AssertionFailure() << ok.error();
  return ::testing::AssertionSuccess();
}

/// After a ring broke, the session still answers and the server serves the next VM.
void expect_backend_still_serves(RngVm& vm, Frontend& fe) {
  EXPECT_OK(qemu72_stop(fe, vm.dev));  // GET_VRING_BASE on a broken ring still answers
  EXPECT_OK(fe.disconnect());
  auto ram = GuestRam::contiguous(RngVm::region_size);
  ASSERT_OK(ram);
  VhostDev next(DeviceModel::rng(), *ram);
  auto fresh = vm.connect();
  ASSERT_OK(fresh);
  ASSERT_OK(qemu72_realize(*fresh, next));
  ASSERT_OK(qemu72_start(*fresh, next));
  EXPECT_OK(read_entropy(next.drivers[0], next.ram, 4096, 1024, 5s));
}

TEST(RunningRings, MemoryRegionsComeAndGoUnderThem) {
  RngVm vm(DeviceModel::rng(), 2, Backing::memfd_per_region);
  std::optional<Frontend> fe;
  ASSERT_TRUE(started(vm, fe));
  ASSERT_TRUE(vm.dev.negotiated(PF::configure_mem_slots));
  Driver& q = vm.dev.drivers[0];
  ASSERT_OK(read_entropy(q, vm.ram, 8192, 1024, 5s));

  // Unplug the second region (no ring lives there); the ring keeps running in the first.
  const auto second = vm.ram.regions()[1];
  ASSERT_OK(fe->rem_mem_reg(second.wire()));
  ASSERT_OK(read_entropy(q, vm.ram, 8192, 1024, 5s));
  // Plug it back and use a buffer across the boundary between the two.
  ASSERT_OK(fe->add_mem_reg(second.wire(), second.fd));
  ASSERT_OK(q.add({.segments = {{.len = 4096, .straddle = true}}}));
  ASSERT_OK(q.kick());
  auto done = q.wait_used(1, 5s);
  ASSERT_OK(done);
  EXPECT_EQ(done->front().len, 4096U);
  ASSERT_OK(check_random(*done->front().written(vm.ram)));
  // QEMU without CONFIGURE_MEM_SLOTS re-sends the whole table (vhost_commit) instead.
  std::vector<vhostuser::MemRegion> regions;
  std::vector<int> fds;
  for (const auto& r : vm.ram.regions()) {
    regions.push_back(r.wire());
    fds.push_back(r.fd);
  }
  ASSERT_OK(fe->set_mem_table(regions, fds));
  ASSERT_OK(read_entropy(q, vm.ram, 8192, 1024, 5s));
  EXPECT_OK(qemu72_stop(*fe, vm.dev));
}

TEST(RunningRings, RemovingTheRingsRegionBreaksThatRingOnly) {
  RngVm vm(DeviceModel::rng(), 2, Backing::memfd_per_region);
  std::optional<Frontend> fe;
  ASSERT_TRUE(started(vm, fe));
  ASSERT_OK(read_entropy(vm.dev.drivers[0], vm.ram, 1024, 1024, 5s));
  // The rings live in the first region. Whether the backend refuses the removal or accepts
  // it and marks the ring broken, it must not keep using unmapped memory, and a broken
  // ring is reported on its error eventfd.
  auto removed = fe->rem_mem_reg(vm.ram.regions()[0].wire());
  if (removed) {
    EXPECT_TRUE(test::wait_readable(vm.dev.error_notifiers[0].get(), 5s)) << "no SET_VRING_ERR signal";
  } else {
    EXPECT_EQ(removed.error().fault, Fault::nack) << removed.error();
  }
  expect_backend_still_serves(vm, *fe);
}

// --- a hostile guest ---------------------------------------------------------------------

/// The device side of ring 0 as the guest can scribble on it.
struct RingBytes {
  std::byte* desc;
  std::byte* avail;
};

RingBytes ring_bytes(const Driver& q) {
  const auto a = q.vring_addr();
  return {reinterpret_cast<std::byte*>(a.desc_user_addr), reinterpret_cast<std::byte*>(a.avail_user_addr)};
}

/// Posts one chain, lets `corrupt` damage the ring, kicks; the backend must mark the ring
/// broken (error eventfd), use nothing, and keep serving everything else.
void expect_ring_broken_by(const std::function<void(RingBytes, std::uint16_t head)>& corrupt) {
  RngVm vm(DeviceModel::rng());
  std::optional<Frontend> fe;
  ASSERT_TRUE(started(vm, fe));
  Driver& q = vm.dev.drivers[0];
  auto head = q.add({.segments = {{.len = 64}, {.len = 64}}});
  ASSERT_OK(head);
  q.publish();
  corrupt(ring_bytes(q), *head);  // before the kick, so the backend sees it when it looks
  ASSERT_OK(q.notify());
  EXPECT_TRUE(test::wait_readable(vm.dev.error_notifiers[0].get(), 5s)) << "no SET_VRING_ERR signal";
  EXPECT_EQ(q.device_used_idx(), 0) << "the backend used a chain it should have refused";
  expect_backend_still_serves(vm, *fe);
}

void write_desc(std::byte* table, std::uint16_t i, std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
                std::uint16_t next) {
  virtio::Descriptor d;
  d.addr = addr;
  d.len = len;
  d.flags = flags;
  d.next = next;
  std::memcpy(table + i * sizeof d, &d, sizeof d);
}

virtio::Descriptor read_desc(const std::byte* table, std::uint16_t i) {
  virtio::Descriptor d;
  std::memcpy(&d, table + i * sizeof d, sizeof d);
  return d;
}

void write_le16(std::byte* at, std::uint16_t value) {
  virtio::Le16 v;
  v = value;
  std::memcpy(at, &v, sizeof v);
}

TEST(HostileGuest, AvailIndexFarAheadBreaksTheRing) {
  expect_ring_broken_by([](RingBytes ring, std::uint16_t) {
    // 100 entries published in a ring of 4: more than the driver can have outstanding.
    write_le16(ring.avail + offsetof(virtio::AvailHeader, idx), 100);
  });
}

TEST(HostileGuest, DescriptorLoopBreaksTheRing) {
  expect_ring_broken_by([](RingBytes ring, std::uint16_t head) {
    const auto first = read_desc(ring.desc, head);
    const std::uint16_t second = first.next.value();
    const auto d = read_desc(ring.desc, second);
    write_desc(ring.desc, second, d.addr.value(), d.len.value(), d.flags.value() | virtio::VIRTQ_DESC_F_NEXT,
               head);
  });
}

TEST(HostileGuest, BufferOutsideGuestMemoryBreaksTheRing) {
  expect_ring_broken_by([](RingBytes ring, std::uint16_t head) {
    const auto d = read_desc(ring.desc, head);
    write_desc(ring.desc, head, std::uint64_t{1} << 40, d.len.value(), d.flags.value(), d.next.value());
  });
}

TEST(HostileGuest, HeadIndexBeyondTheQueueBreaksTheRing) {
  expect_ring_broken_by([](RingBytes ring, std::uint16_t) {
    write_le16(ring.avail + virtio::avail_ring_entry_offset(0), 4000);
  });
}

// --- control requests outside start/stop -------------------------------------------------

TEST(ControlRequests, ResetDeviceStopsRingsAndAllowsAFreshStart) {
  RngVm vm(DeviceModel::rng());
  std::optional<Frontend> fe;
  ASSERT_TRUE(started(vm, fe));
  ASSERT_TRUE(vm.dev.negotiated(PF::reset_device));
  ASSERT_OK(read_entropy(vm.dev.drivers[0], vm.ram, 1024, 1024, 5s));
  ASSERT_OK(fe->reset_device());
  // The guest reset its device too: new rings, everything set up again.
  vm.dev.drivers.clear();
  vm.dev.started = false;
  ASSERT_OK(qemu72_start(*fe, vm.dev));
  EXPECT_OK(read_entropy(vm.dev.drivers[0], vm.ram, 4096, 1024, 5s));
  auto bases = qemu72_stop(*fe, vm.dev);
  ASSERT_OK(bases);
  EXPECT_EQ(bases->at(0), 4);
}

TEST(ControlRequests, ResetOwnerReleasesOwnership) {
  RngVm vm(DeviceModel::rng());
  auto fe = vm.connect();
  ASSERT_OK(fe);
  ASSERT_OK(qemu72_realize(*fe, vm.dev));
  ASSERT_OK(fe->reset_owner());
  ASSERT_OK(fe->set_owner());
  EXPECT_OK(fe->get_features());  // a refused SET_OWNER would have closed the connection
}

TEST(ControlRequests, SetConfigOnAReadOnlyConfigSpaceIsRefused) {
  Vm<TwoQueueDevice> vm(DeviceModel::vsock());
  auto fe = vm.connect();
  ASSERT_OK(fe);
  ASSERT_OK(qemu72_realize(*fe, vm.dev));
  ASSERT_TRUE(vm.dev.negotiated(PF::config) && fe->reply_ack());
  const std::byte cid[8] = {std::byte{9}};
  auto r = fe->set_config(0, cid);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().fault, Fault::nack) << r.error();
  auto config = fe->get_config(0, 8);
  ASSERT_OK(config);
  EXPECT_EQ(config->at(0), std::byte{3}) << "guest_cid changed";
}

}  // namespace
}  // namespace vusim

namespace vusim {
namespace {

// --- ring indices and bases -----------------------------------------------------------------

TEST(RingIndices, ChainsTheDeviceStillHoldsAreOfferedAgainAfterResume) {
  DeviceModel model{
      .name = "holding", .queues = 1, .queue_size = 8, .driver_features = bit(virtio::feature::version_1)};
  Vm<test::HoldingDevice> vm(model);
  auto fe = vm.connect();
  ASSERT_OK(fe);
  ASSERT_OK(qemu72_realize(*fe, vm.dev));
  ASSERT_OK(qemu72_start(*fe, vm.dev));
  Driver& q = vm.dev.drivers[0];
  std::vector<std::uint16_t> heads;
  for (int i = 0; i < 3; ++i) {
    auto head = q.add({.segments = {{.len = 32}}});
    ASSERT_OK(head);
    heads.push_back(*head);
  }
  ASSERT_OK(q.kick());
  ASSERT_TRUE(test::wait_drained(q.kick_fd(), 5s));
  ASSERT_OK(fe->get_features());
  ASSERT_EQ(vm.backend.on_backend([&] { return vm.device.held(); }), heads);

  // GET_VRING_BASE: "the index of the first buffer not yet consumed": all three were
  // popped but none returned, so none is consumed.
  auto bases = pause_resume(*fe, vm.dev, *find_sequence("qemu-7.2"));
  ASSERT_OK(bases);
  EXPECT_EQ(bases->at(0), 0);
  // The resumed ring offers them again without a new kick, and they complete.
  ASSERT_OK(fe->get_features());
  EXPECT_EQ(vm.backend.on_backend([&] { return vm.device.held(); }), heads);
  vm.backend.on_backend([&] { vm.device.release(); });
  auto done = q.wait_used(3, 5s);
  ASSERT_OK(done);
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(done->at(i).head, heads[i]);
}

TEST(RingIndices, SixteenBitIndicesWrapAround) {
  DeviceModel model = DeviceModel::rng();
  model.queue_size = 256;
  Vm<rng::RngDevice> vm(model);
  auto fe = vm.connect();
  ASSERT_OK(fe);
  ASSERT_OK(qemu82_realize(*fe, vm.dev));
  ASSERT_OK(qemu82_start(*fe, vm.dev));
  Driver& q = vm.dev.drivers[0];
  ASSERT_TRUE(q.options().event_idx);
  // 70000 requests of 16 bytes: avail->idx, used->idx, used_event and avail_event all wrap.
  auto stats = read_entropy(q, vm.ram, 70000 * 16, 16, 5s);
  ASSERT_OK(stats);
  EXPECT_EQ(stats->requests, 70000U);
  EXPECT_EQ(q.avail_idx(), static_cast<std::uint16_t>(70000));
  auto bases = pause_resume(*fe, vm.dev, *find_sequence("qemu-8.2"));
  ASSERT_OK(bases);
  EXPECT_EQ(bases->at(0), static_cast<std::uint16_t>(70000));
  EXPECT_OK(read_entropy(q, vm.ram, 4096, 16, 5s));
}

// --- more of what QEMU sends while rings run ---------------------------------------------

TEST(RunningRings, SetFeaturesAgainKeepsThemRunning) {
  // QEMU re-sends SET_FEATURES on running rings to toggle dirty logging (LOG_ALL); with
  // bit 30 it must not disable them (rust-vmm/vhost PR #210).
  RngVm vm(DeviceModel::rng());
  std::optional<Frontend> fe;
  ASSERT_TRUE(started(vm, fe));
  ASSERT_OK(fe->set_features(vm.dev.guest_features | bit(vhostuser::protocol_features_bit)));
  EXPECT_OK(read_entropy(vm.dev.drivers[0], vm.ram, 4096, 1024, 5s));
}

TEST(RunningRings, CallWithoutAnFdMeansTheFrontendPolls) {
  // QEMU sends SET_VRING_CALL with the no-fd flag for a queue without an MSI-X vector.
  RngVm vm(DeviceModel::rng());
  std::optional<Frontend> fe;
  ASSERT_TRUE(started(vm, fe));
  Driver& q = vm.dev.drivers[0];
  ASSERT_OK(fe->set_vring_call(0, -1));
  ASSERT_OK(fe->get_features());
  ASSERT_OK(q.add({.segments = {{.len = 128}}}));
  ASSERT_OK(q.kick());
  ASSERT_OK(q.poll_used(1, 5s));
  ASSERT_OK(fe->get_features());
  auto calls = q.take_calls();
  ASSERT_OK(calls);
  EXPECT_EQ(*calls, 0U) << "signalled a call fd the front-end had withdrawn";
}

TEST(ControlRequests, GetVringBaseOnAnUnconfiguredRingAnswersZero) {
  RngVm vm(DeviceModel::rng());
  auto fe = vm.connect();
  ASSERT_OK(fe);
  ASSERT_OK(qemu72_realize(*fe, vm.dev));
  auto base = fe->get_vring_base(0);
  ASSERT_OK(base);
  EXPECT_EQ(base->index, 0U);
  EXPECT_EQ(base->num, 0U);
}

TEST(ControlRequests, StartWithoutTheHandshakeOfARealize) {
  // vhost-user-vsock has no reconnect logic: with `reconnect=` on the chardev, a restarted
  // backend sees start/stop messages without GET_FEATURES, SET_PROTOCOL_FEATURES or
  // SET_OWNER first (reference notes, 2.6). It must answer them or refuse, never crash.
  RngVm vm(DeviceModel::rng());
  auto fe = vm.connect();
  ASSERT_OK(fe);
  const auto region = vm.ram.regions()[0];
  const auto wire = region.wire();
  const int fds[] = {region.fd};
  auto driver = Driver::create(vm.ram, {.index = 0, .size = 4});
  ASSERT_OK(driver);
  const Result<void> steps[] = {
      fe->set_features(bit(virtio::feature::version_1) | bit(vhostuser::protocol_features_bit)),
      fe->set_mem_table(std::span(&wire, 1), fds),
      fe->set_vring_num(0, 4),
      fe->set_vring_base(0, 0),
      fe->set_vring_addr(driver->vring_addr()),
      fe->set_vring_kick(0, driver->kick_fd()),
      fe->set_vring_call(0, driver->call_fd()),
      fe->set_vring_enable(0, true),
  };
  for (const auto& step : steps) {
    if (!step) {
      EXPECT_EQ(step.error().fault, Fault::closed) << step.error();
    }
  }
  auto base = fe->get_vring_base(0);
  if (base) {
    EXPECT_EQ(base->num, 0U);
  } else {
    EXPECT_EQ(base.error().fault, Fault::closed) << base.error();
  }
  (void)fe->disconnect();
  auto fresh = vm.connect();
  ASSERT_OK(fresh);
  ASSERT_OK(qemu72_realize(*fresh, vm.dev));
  ASSERT_OK(qemu72_start(*fresh, vm.dev));
  EXPECT_OK(read_entropy(vm.dev.drivers[0], vm.ram, 1024, 1024, 5s));
}

}  // namespace
}  // namespace vusim
