// Regression tests for the sibling data path (vsock/sibling_link.cpp, vsock/relay.cpp): VMs on
// one vsock::Router, each on its own backend thread (vsock_fixture.hpp).
#include <cstring>
#include <future>
#include <memory>
#include <thread>

#include <gtest/gtest.h>

#include "assert_ok.hpp"
#include "virtio/le.hpp"
#include "vsock/router.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"

namespace vusim::vsock_test {
namespace {

using namespace vsock_guest;

std::unique_ptr<VsockVm> sibling(vsock::Router& router, std::uint64_t cid, std::size_t rx_buffers = 64) {
  auto vm = std::make_unique<VsockVm>(VmOptions{.cid = cid, .rx_buffers = rx_buffers, .router = &router});
  EXPECT_OK(vm->boot());
  EXPECT_OK(vm->frontend().get_features());  // the device took the start messages: reachable
  return vm;
}

/// Waits until the router has seen `count` sibling connections of `cid`. There is no event
/// for it: polled, with a deadline.
bool wait_connections(const vsock::Router& router, std::uint64_t cid, std::size_t count) {
  const auto deadline = Clock::now() + 10s;
  while (router.connection_count(cid) != count) {
    if (Clock::now() >= deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

// A VM whose own rx ring breaks is gone for its siblings (device.cpp, rx_broken): packets on
// their way to it and from it end. Its tx ring still runs, though, so the tx chain of the
// packet it had on its way must go back to its guest, and its tx must go on. The chain used
// to be dropped with the packet: it never came back, and tx stayed paused for good.
TEST(VsockSiblingRegression, AVmWhoseRxRingBreaksGetsBackThePacketItHadOnItsWay) {
  vsock::Router router;
  auto a = sibling(router, 3);
  auto b = sibling(router, 4, /*rx_buffers=*/0);
  // VM 3 connects to VM 4, which posts no rx buffers: the REQUEST waits, holding VM 3's chain.
  Conn to_b{.cid = 3, .port = 40000, .peer_port = 5000, .peer_cid = 4};
  ASSERT_OK(a->guest().send(to_b.make(op_request)));
  ASSERT_TRUE(wait_connections(router, 3, 1)) << "the REQUEST was not routed";
  // VM 3's guest breaks its rx ring (avail->idx far ahead of what it posted), and VM 4 sends
  // it a packet: the device finds the ring broken.
  auto* avail = reinterpret_cast<std::byte*>(a->guest().rx().vring_addr().avail_user_addr);
  virtio::Le16 far_ahead;
  far_ahead = static_cast<std::uint16_t>(a->guest().rx().avail_idx() + 1000);
  std::memcpy(avail + 2, &far_ahead, sizeof far_ahead);  // struct virtq_avail { le16 flags; le16 idx; ... }
  Conn to_a{.cid = 4, .port = 5001, .peer_port = 40001, .peer_cid = 3};
  ASSERT_OK(b->guest().send(to_a.make(op_rw, pattern(100, 1))));
  EXPECT_TRUE(test::wait_readable(a->dev.error_notifiers[0].get(), 5s)) << "the broken rx ring was not reported";
  // VM 3 gets its chain back, and its tx goes on: a connect to the host is taken (its RST
  // cannot reach the guest, whose rx ring is broken), and that chain comes back too.
  ASSERT_OK(a->guest().drain_tx());
  Conn to_host{.cid = 3, .port = 40002, .peer_port = 7777};
  ASSERT_OK(a->guest().send(to_host.make(op_request)));
  ASSERT_OK(a->guest().drain_tx());
  // VM 4's packet to the VM that is gone came back as well.
  ASSERT_OK(b->guest().drain_tx());
}

// The daemon removes VM 4 (ServedVm::close, then its destruction, on its strand) while VM 3's
// packet to it is already queued on that strand; the pool runs on. The offer's handler then
// runs after VM 4's device is gone, and must abandon the packet so that VM 3 gets its chain
// back. It used to take the slot out of the offer before the liveness check, and lose it:
// VM 3's tx stayed blocked for good. Found by e2e.vsock_runtime (remove mid-transfer).
// Gates on VM 4's thread fix the one order that loses the slot: VM 3 hears the RST of VM 4's
// front-end going away while VM 4 is still attached (so it keeps waiting for its packet),
// and the offer runs after the device is destroyed.
TEST(VsockSiblingRegression, APacketOfferedToAVmBeingRemovedComesBackToItsSender) {
  vsock::Router router;
  auto a = sibling(router, 3);
  auto b = sibling(router, 4);
  std::promise<void> open_first;
  std::promise<void> open_second;
  b->backend.post([gate = open_first.get_future().share()] { gate.wait(); });
  b->backend.post([&] { b->backend.close_server(); });
  b->backend.post([gate = open_second.get_future().share()] { gate.wait(); });
  b->backend.post([&] { b->backend.destroy_device(); });
  // VM 4 is still attached and running: VM 3's REQUEST is routed, its offer queued last.
  Conn to_b{.cid = 3, .port = 40010, .peer_port = 5010, .peer_cid = 4};
  ASSERT_OK(a->guest().send(to_b.make(op_request)));
  ASSERT_TRUE(wait_connections(router, 3, 1)) << "the REQUEST was not routed";
  open_first.set_value();  // VM 4's front-end goes: VM 3 hears RST, VM 4 still attached
  auto rst = guest_expect(a->guest(), to_b);
  ASSERT_OK(rst);
  EXPECT_EQ(rst->op, op_rst) << describe(*rst);
  open_second.set_value();  // VM 4's device is destroyed, then the offer runs
  ASSERT_OK(a->guest().drain_tx());  // VM 3's tx chain came back
  // And VM 3's tx goes on: a connect to the host is answered (RST: nobody listens there).
  Conn to_host{.cid = 3, .port = 40011, .peer_port = 7777};
  ASSERT_OK(a->guest().send(to_host.make(op_request)));
  auto answer = guest_expect(a->guest(), to_host);
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_rst) << describe(*answer);
}

}  // namespace
}  // namespace vusim::vsock_test
