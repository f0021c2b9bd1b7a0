// The QEMU sequences against the in-process backend: vhostuser::Server with rng::RngDevice
// (and a two-queue device with a config space for the vsock-shaped control path).
#include <algorithm>
#include <iostream>
#include <regex>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "assert_ok.hpp"
#include "test_vm.hpp"
#include "virtio/ring.hpp"
#include "vusim/rng.hpp"
#include "vusim/sequences.hpp"

namespace vusim {
namespace {

using namespace std::chrono_literals;
using test::TwoQueueDevice;
using test::Vm;
using test::wait_drained;
using vhostuser::bit;

constexpr std::uint64_t mib = 1 << 20;

class RngSequence : public ::testing::TestWithParam<std::string_view> {
 protected:
  const Sequence& sequence() const { return *find_sequence(GetParam()); }
  bool has_enable() const { return GetParam() != "pre-7.2"; }
};

TEST_P(RngSequence, ReadsEntropy) {
  Vm<rng::RngDevice> vm(DeviceModel::rng());
  auto fe = vm.connect();
  ASSERT_TRUE(fe) << fe.error();
  ASSERT_OK(sequence().realize(*fe, vm.dev));
  // rng has no config space: QEMU must not acknowledge CONFIG; REPLY_ACK is offered and known.
  EXPECT_EQ(vm.dev.protocol_features & bit(vhostuser::ProtocolFeature::config), 0U);
  EXPECT_TRUE(vm.dev.negotiated(vhostuser::ProtocolFeature::reply_ack));
  auto started = sequence().start(*fe, vm.dev, {});
  ASSERT_TRUE(started) << started.error();

  auto stats = read_entropy(vm.dev.drivers[0], vm.ram, 4 * mib, 64 * 1024, 5s);
  ASSERT_TRUE(stats) << stats.error();
  EXPECT_GE(stats->bytes, 4 * mib);
  // Every byte the used ring reports is a byte the device says it produced.
  EXPECT_EQ(stats->bytes, vm.bytes_served());
  std::cout << fmt::format("{}: {} bytes of entropy in {} requests of 64 KiB, {:.1f} MiB/s\n", GetParam(),
                           stats->bytes, stats->requests, stats->bytes_per_second() / mib);

  auto bases = sequence().stop(*fe, vm.dev);
  ASSERT_TRUE(bases) << bases.error();
  EXPECT_EQ(bases->at(0), vm.dev.drivers[0].avail_idx());
  EXPECT_OK(fe->disconnect());
}

TEST_P(RngSequence, PauseResumeContinuesWhereTheRingStopped) {
  Vm<rng::RngDevice> vm(DeviceModel::rng());
  auto fe = vm.connect();
  ASSERT_TRUE(fe) << fe.error();
  ASSERT_OK(sequence().realize(*fe, vm.dev));
  ASSERT_OK(sequence().start(*fe, vm.dev, {}));
  Driver& q = vm.dev.drivers[0];
  ASSERT_OK(read_entropy(q, vm.ram, 10 * 1000, 1000, 5s));  // 10 requests: indices wrap the 4-entry ring
  const std::uint16_t posted = q.avail_idx();

  auto bases = sequence().stop(*fe, vm.dev);
  ASSERT_TRUE(bases) << bases.error();
  // GET_VRING_BASE: the first entry not consumed, which is everything posted (all used).
  EXPECT_EQ(bases->at(0), posted);
  EXPECT_EQ(q.last_used(), posted);

  // The guest posts and kicks while the ring is stopped. The backend must not touch the
  // ring: after a round trip nothing may have been used. (This catches a backend that acts
  // on messages; one still watching the kick fd might act later. Ours stops watching it.)
  ASSERT_OK(q.add({.segments = {{.len = 512}}}));
  ASSERT_OK(q.add({.segments = {{.len = 512}}}));
  q.publish();
  ASSERT_OK(q.notify());
  ASSERT_OK(fe->get_features());
  EXPECT_EQ(q.device_used_idx(), posted) << "backend used buffers on a stopped ring";

  // ...and serve them once started again from the saved base, writing the used ring on
  // from used->idx as it is in guest memory.
  auto started = sequence().start(*fe, vm.dev, {});
  ASSERT_TRUE(started) << started.error();
  auto done = q.wait_used(2, 5s);
  ASSERT_TRUE(done) << done.error();
  EXPECT_EQ(q.device_used_idx(), static_cast<std::uint16_t>(posted + 2));
  for (const auto& c : *done) EXPECT_EQ(c.len, 512U);
  EXPECT_OK(read_entropy(q, vm.ram, 8 * 1024, 1024, 5s));

  bases = sequence().stop(*fe, vm.dev);
  ASSERT_OK(bases);
  EXPECT_EQ(bases->at(0), q.avail_idx());
}

TEST_P(RngSequence, PauseResumeHelperReturnsTheBases) {
  Vm<rng::RngDevice> vm(DeviceModel::rng());
  auto fe = vm.connect();
  ASSERT_TRUE(fe) << fe.error();
  ASSERT_OK(sequence().realize(*fe, vm.dev));
  ASSERT_OK(sequence().start(*fe, vm.dev, {}));
  ASSERT_OK(read_entropy(vm.dev.drivers[0], vm.ram, 3000, 1000, 5s));
  auto bases = pause_resume(*fe, vm.dev, sequence());
  ASSERT_TRUE(bases) << bases.error();
  EXPECT_EQ(*bases, std::vector<std::uint16_t>{3});
  EXPECT_OK(read_entropy(vm.dev.drivers[0], vm.ram, 3000, 1000, 5s));
}

TEST_P(RngSequence, ReconnectsAndRefusesASecondFrontend) {
  Vm<rng::RngDevice> vm(DeviceModel::rng());
  auto fe = vm.connect();
  ASSERT_TRUE(fe) << fe.error();
  ASSERT_OK(sequence().realize(*fe, vm.dev));
  ASSERT_OK(sequence().start(*fe, vm.dev, {}));
  ASSERT_OK(read_entropy(vm.dev.drivers[0], vm.ram, 4096, 1024, 5s));

  // One front-end at a time: a second one is accepted and closed at once...
  auto second = vm.connect();
  ASSERT_TRUE(second) << second.error();
  auto refused = second->get_features();
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().fault, Fault::closed) << refused.error();
  // ...and the first one is not disturbed.
  EXPECT_OK(read_entropy(vm.dev.drivers[0], vm.ram, 4096, 1024, 5s));

  auto fresh = reconnect(*fe, vm.dev, sequence(), vm.backend.socket(), test::traced_options(vm.log));
  ASSERT_TRUE(fresh) << fresh.error();
  auto stats = read_entropy(vm.dev.drivers[0], vm.ram, 4096, 1024, 5s);
  ASSERT_TRUE(stats) << stats.error();
  EXPECT_EQ(vm.backend.connections_served(), 2U);
  auto bases = sequence().stop(*fresh, vm.dev);
  ASSERT_TRUE(bases) << bases.error();
  EXPECT_EQ(bases->at(0), vm.dev.drivers[0].avail_idx());
}

TEST_P(RngSequence, KickBeforeEnableIsServedAfterEnable) {
  Vm<rng::RngDevice> vm(DeviceModel::rng());
  auto fe = vm.connect();
  ASSERT_TRUE(fe) << fe.error();
  ASSERT_OK(sequence().realize(*fe, vm.dev));
  // Like a Linux guest filling a queue right after DRIVER_OK: the kick arrives while the
  // ring is started (it has its kick fd) but not yet enabled.
  const bool disabled_until_enable = has_enable();
  StartHooks hooks{.before_enable = [&](VhostDev& dev) -> Result<void> {
    Driver& q = dev.drivers[0];
    if (auto head = q.add({.segments = {{.len = 256}}}); !head) return head.error();
    if (auto kicked = q.kick(); !kicked) return kicked.error();
    if (disabled_until_enable) {
      // Started but disabled: the backend reads the kick and must keep it for later (spec
      // "Ring states"). Once it has read it, a round trip lets its handler finish.
      EXPECT_TRUE(test::wait_drained(q.kick_fd(), 5s)) << "the backend never read the kick";
      if (auto barrier = fe->get_features(); !barrier) return barrier.error();
      EXPECT_EQ(q.device_used_idx(), 0) << "served on a disabled ring";
    }
    return {};
  }};
  auto started = sequence().start(*fe, vm.dev, hooks);
  ASSERT_TRUE(started) << started.error();
  auto done = vm.dev.drivers[0].wait_used(1, 5s);
  ASSERT_TRUE(done) << done.error() << " (the kick sent before SET_VRING_ENABLE was dropped)";
  EXPECT_EQ(done->front().len, 256U);
}

/// Interrupts off while A is used, on again for B: exactly one notification, B's. Without
/// EVENT_IDX the driver sets VIRTQ_AVAIL_F_NO_INTERRUPT; with it, it moves used_event away.
void check_interrupt_suppression(const Sequence& sequence, bool event_idx) {
  SCOPED_TRACE(event_idx ? "EVENT_IDX" : "NO_INTERRUPT");
  DeviceModel model = DeviceModel::rng();
  if (!event_idx) model.driver_features &= ~bit(virtio::feature::event_idx);
  Vm<rng::RngDevice> vm(model);
  auto fe = vm.connect();
  ASSERT_TRUE(fe) << fe.error();
  ASSERT_OK(sequence.realize(*fe, vm.dev));
  ASSERT_OK(sequence.start(*fe, vm.dev, {}));
  Driver& q = vm.dev.drivers[0];
  ASSERT_EQ(q.options().event_idx, event_idx);
  // One request first: the device's first notification decision after a start may notify
  // regardless (it has no previous decision to compare with); and 7.2 does not wait for
  // SET_VRING_ENABLE, so this also makes sure the ring is enabled before A is posted.
  ASSERT_OK(read_entropy(q, vm.ram, 64, 64, 5s));
  ASSERT_OK(fe->get_features());
  ASSERT_OK(q.take_calls());
  std::uint64_t calls = 0;
  const auto count_calls = [&](Result<std::uint64_t> n) {
    ASSERT_TRUE(n) << n.error();
    calls += *n;
  };

  // A: interrupts off; the driver polls the used ring.
  q.disable_interrupts();
  ASSERT_OK(q.add({.segments = {{.len = 64}}}));
  ASSERT_OK(q.kick());
  ASSERT_OK(q.poll_used(1, 5s));
  count_calls(q.take_calls());
  // B: interrupts on again; B's notification must come (2.7.7.2: MUST with flags 0, and
  // MUST when the entry at used_event is written).
  EXPECT_FALSE(q.enable_interrupts());
  ASSERT_OK(q.add({.segments = {{.len = 64}}}));
  ASSERT_OK(q.kick());
  count_calls(q.wait_call(5s));
  ASSERT_OK(q.poll_used(1, 5s));
  // One thread serves kicks and messages: once a request sent after B was seen used is
  // answered, the backend has finished with B's kick, notification included. Every
  // notification since A was posted has now been counted exactly once.
  ASSERT_OK(fe->get_features());
  count_calls(q.take_calls());
  EXPECT_EQ(calls, 1U) << "expected B's notification only: interrupts were off while A was used";
}

TEST_P(RngSequence, InterruptSuppressionIsHonoured) {
  check_interrupt_suppression(sequence(), false);
  check_interrupt_suppression(sequence(), true);
}

INSTANTIATE_TEST_SUITE_P(Qemu, RngSequence, ::testing::Values("pre-7.2", "qemu-7.2", "qemu-8.2"),
                         [](const auto& param_info) {
                           std::string name(param_info.param);
                           std::replace_if(
                               name.begin(), name.end(), [](char c) { return !std::isalnum(c); }, '_');
                           return name;
                         });

// --- the vsock-shaped control path ------------------------------------------------------

/// "-> 13 SET_VRING_CALL   flags=0x1 size=8 fds=1 index=0" -> "SET_VRING_CALL flags=0x1
/// fds=1 index=0": what the 7.2 trace fixes, without sizes, addresses and file offsets.
std::vector<std::string> requests_sent(const std::vector<std::string>& log) {
  static const std::regex prefix(R"(^-> +\d+ +(\S+) +(flags=\S+) size=\d+(.*)$)");
  static const std::regex addresses(R"( (desc|used|avail|log|gpa|size|uva|mmap_offset)=0x[0-9a-f]+)");
  std::vector<std::string> out;
  for (const auto& line : log) {
    std::smatch m;
    if (!std::regex_match(line, m, prefix)) continue;
    out.push_back(m[1].str() + " " + m[2].str() + std::regex_replace(m[3].str(), addresses, ""));
  }
  return out;
}

TEST(VsockShapedSequence, MatchesTheRecordedQemu72Trace) {
  // ../shared/reference/qemu-7.2-vhost-user-vsock-trace.txt, profile "many": a backend
  // offering features 0x171000002 and protocol features 0x1a209, which is what the
  // vhostuser layer offers for a device with a config space and feature bit 1.
  Vm<TwoQueueDevice> vm(DeviceModel::vsock(), 1);
  auto fe = vm.connect();
  ASSERT_TRUE(fe) << fe.error();
  ASSERT_OK(qemu72_realize(*fe, vm.dev));
  ASSERT_OK(qemu72_start(*fe, vm.dev));
  ASSERT_OK(qemu72_stop(*fe, vm.dev));
  const std::vector<std::string> expected = {
      "GET_FEATURES flags=0x1",
      "GET_PROTOCOL_FEATURES flags=0x1",
      "SET_PROTOCOL_FEATURES flags=0x1 0x1a209",
      "GET_QUEUE_NUM flags=0x1",
      "GET_MAX_MEM_SLOTS flags=0x1",
      "SET_OWNER flags=0x1",
      "GET_FEATURES flags=0x1",
      "SET_VRING_CALL flags=0x1 fds=1 index=0",
      "SET_VRING_ERR flags=0x1 fds=1 index=0",
      "SET_VRING_CALL flags=0x1 fds=1 index=1",
      "SET_VRING_ERR flags=0x1 fds=1 index=1",
      "GET_CONFIG flags=0x1 offset=0 size=8 flags=0x0 data=0000000000000000",
      "SET_VRING_CALL flags=0x1 fds=1 index=1",
      "SET_VRING_CALL flags=0x1 fds=1 index=0",
      "SET_FEATURES flags=0x1 0x170000002",
      "GET_STATUS flags=0x1",
      "SET_STATUS flags=0x1 0x8",
      "ADD_MEM_REG flags=0x9 fds=1",
      "SET_VRING_NUM flags=0x1 index=0 num=128",
      "SET_VRING_BASE flags=0x1 index=0 num=0",
      "SET_VRING_ADDR flags=0x1 index=0 flags=0x0",
      "SET_VRING_KICK flags=0x1 fds=1 index=0",
      "SET_VRING_NUM flags=0x1 index=1 num=128",
      "SET_VRING_BASE flags=0x1 index=1 num=0",
      "SET_VRING_ADDR flags=0x1 index=1 flags=0x0",
      "SET_VRING_KICK flags=0x1 fds=1 index=1",
      "SET_VRING_ENABLE flags=0x1 index=0 num=1",
      "SET_VRING_ENABLE flags=0x1 index=1 num=1",
      "SET_VRING_CALL flags=0x1 fds=1 index=0",
      "SET_VRING_CALL flags=0x1 fds=1 index=1",
      "SET_VRING_ENABLE flags=0x1 index=0 num=0",
      "SET_VRING_ENABLE flags=0x1 index=1 num=0",
      "GET_VRING_BASE flags=0x1 index=0 num=0",
      "GET_VRING_BASE flags=0x1 index=1 num=0",
      "SET_VRING_CALL flags=0x1 fds=1 index=1",
      "SET_VRING_CALL flags=0x1 fds=1 index=0",
  };
  EXPECT_EQ(requests_sent(vm.log), expected);
  // The config space reached the simulator: guest_cid 3, little-endian.
  ASSERT_EQ(vm.dev.config.size(), 8U);
  EXPECT_EQ(vm.dev.config[0], std::byte{3});
}

TEST(VsockShapedSequence, BothQueuesRunAndMemorySlotsAreNotResentOnResume) {
  Vm<TwoQueueDevice> vm(DeviceModel::vsock(), 3, Backing::memfd_per_region);
  auto fe = vm.connect();
  ASSERT_TRUE(fe) << fe.error();
  ASSERT_OK(qemu82_realize(*fe, vm.dev));
  ASSERT_OK(qemu82_start(*fe, vm.dev));
  for (auto& q : vm.dev.drivers) {
    ASSERT_OK(q.add({.segments = {{.len = 100, .writable = false}}}));
    ASSERT_OK(q.kick());
    auto done = q.wait_used(1, 5s);
    ASSERT_TRUE(done) << done.error();
    EXPECT_EQ(done->front().len, 0U);
  }
  const auto adds = [&] {
    const auto sent = requests_sent(vm.log);
    return std::count_if(sent.begin(), sent.end(),
                         [](const auto& s) { return s.starts_with("ADD_MEM_REG"); });
  };
  EXPECT_EQ(adds(), 3);
  auto bases = pause_resume(*fe, vm.dev, *find_sequence("qemu-8.2"));
  ASSERT_TRUE(bases) << bases.error();
  EXPECT_EQ(*bases, (std::vector<std::uint16_t>{1, 1}));
  EXPECT_EQ(adds(), 3) << "QEMU sends only the difference to what the backend already has";
}

TEST(VsockShapedSequence, DriverOkStatusWhenTheDeviceModelSendsIt) {
  // Devices that set vq_index_end (vhost-user-net, -blk) reach vhost_user_dev_start():
  // DRIVER_OK at the end of start, status 0 first thing at stop (vhost_dev_stop calls
  // vhost_dev_start(false) before disabling the rings).
  DeviceModel model = DeviceModel::vsock();
  model.driver_ok_status = true;
  Vm<TwoQueueDevice> vm(model, 1);
  auto fe = vm.connect();
  ASSERT_OK(fe);
  ASSERT_OK(qemu82_realize(*fe, vm.dev));
  ASSERT_OK(qemu82_start(*fe, vm.dev));
  auto status = fe->get_status();
  ASSERT_OK(status);
  EXPECT_EQ(*status, 0xfU) << "ACKNOWLEDGE | DRIVER | DRIVER_OK | FEATURES_OK";
  ASSERT_OK(qemu82_stop(*fe, vm.dev));
  const auto sent = requests_sent(vm.log);
  const auto at = [&](std::string_view what) {
    return std::find(sent.begin(), sent.end(), what) - sent.begin();
  };
  const auto driver_ok = at("SET_STATUS flags=0x1 0xf");
  const auto reset = at("SET_STATUS flags=0x1 0x0");
  ASSERT_LT(driver_ok, std::ssize(sent));
  ASSERT_LT(reset, std::ssize(sent));
  EXPECT_GT(driver_ok, at("SET_VRING_ENABLE flags=0x9 index=1 num=1"));
  EXPECT_LT(reset, at("SET_VRING_ENABLE flags=0x9 index=0 num=0"));
}

// --- notifications --------------------------------------------------------------------

TEST(RngNotifications, AKickWithoutNewBuffersSendsNoNotification) {
  Vm<rng::RngDevice> vm(DeviceModel::rng());
  auto fe = vm.connect();
  ASSERT_TRUE(fe) << fe.error();
  ASSERT_OK(qemu82_realize(*fe, vm.dev));
  ASSERT_OK(qemu82_start(*fe, vm.dev));
  Driver& q = vm.dev.drivers[0];
  ASSERT_OK(read_entropy(q, vm.ram, 64, 64, 5s));
  ASSERT_OK(fe->get_features());  // everything of that request handled, notification included
  ASSERT_OK(q.take_calls());
  // A kick with nothing new in the avail ring (Linux can send one when its kick races the
  // device's avail_event update). Notifications follow used buffers (virtio 2.7.7.2: "After
  // the device writes a descriptor index into the used ring"); none was written here.
  ASSERT_OK(q.notify());
  // The backend drains the kick eventfd at the start of its kick handler; a request sent
  // after that is answered once the handler (and any notification it sends) is done.
  ASSERT_TRUE(wait_drained(q.kick_fd(), 5s)) << "the backend never read the kick";
  ASSERT_OK(fe->get_features());
  auto calls = q.take_calls();
  ASSERT_OK(calls);
  EXPECT_EQ(*calls, 0U) << "interrupt without a used buffer (the guest sees a spurious interrupt)";
}

// --- EVENT_IDX, as a Linux guest negotiates it ------------------------------------------

TEST(RngEventIdx, ServesRequestsOneAtATimeLikeLinuxHwrng) {
  // DeviceModel::rng() acks EVENT_IDX as Linux does. Linux's virtio-rng posts one buffer,
  // kicks, waits for it, and posts the next: each kick goes out only if avail_event asks
  // for it (virtqueue_kick_prepare). A device that never publishes avail_event leaves it
  // at 0, so only the very first buffer gets a kick.
  Vm<rng::RngDevice> vm(DeviceModel::rng());
  auto fe = vm.connect();
  ASSERT_TRUE(fe) << fe.error();
  ASSERT_OK(qemu72_realize(*fe, vm.dev));
  ASSERT_OK(qemu72_start(*fe, vm.dev));
  Driver& q = vm.dev.drivers[0];
  ASSERT_TRUE(q.options().event_idx);
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK(q.add({.segments = {{.len = 64}}}));
    ASSERT_OK(q.kick());
    auto done = q.wait_used(1, 2s);
    ASSERT_TRUE(done) << "request " << i << ": " << done.error();
  }
}

}  // namespace
}  // namespace vusim
