// What the vsock device counts for operators (vsock/counters.hpp): packets, bytes and RSTs as
// they cross the rings, per VM and per host connection, drops by reason, and credit stalls.
// Each figure is checked against what the simulated guest and host application really did.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "assert_ok.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"

namespace vusim::vsock_test {
namespace {

using namespace vsock_guest;
using vsock::Drop;

vsock::DeviceCounters counters_of(VsockVm& vm) {
  return vm.backend.on_backend([&] { return vm.backend.device().counters(); });
}

std::vector<vsock::HostSide::ConnectionInfo> connections_of(VsockVm& vm) {
  return vm.backend.on_backend([&] { return vm.backend.device().host().connections(); });
}

TEST(VsockCounters, TrafficIsCountedAtTheRingsAndPerConnection) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 9100, 45000);
  ASSERT_OK(e);
  StreamPump pump{.guest = vm.guest(), .conn = e->conn, .host_fd = e->host.get()};
  pump.g2h = pattern(300 * 1024, 1);
  pump.h2g = pattern(200 * 1024, 2);
  ASSERT_OK(pump.run());

  const auto c = counters_of(vm);
  EXPECT_EQ(c.tx.bytes, pump.g2h.size());
  EXPECT_EQ(c.rx.bytes, pump.h2g.size());
  EXPECT_EQ(c.tx.rsts, 0U);
  EXPECT_EQ(c.rx.rsts, 0U);
  const auto conns = connections_of(vm);
  ASSERT_EQ(conns.size(), 1U);
  const auto& conn = conns[0];
  EXPECT_EQ(conn.ends.peer.port, 45000U);
  EXPECT_EQ(conn.state, vsock::Connection::State::established);
  EXPECT_EQ(conn.counters.from_guest.bytes, pump.g2h.size());
  EXPECT_EQ(conn.counters.to_guest.bytes, pump.h2g.size());
  // Every packet of the VM belongs to this connection, except the guest's REQUEST, which
  // came before the connection existed.
  EXPECT_EQ(c.tx.packets, conn.counters.from_guest.packets + 1);
  EXPECT_EQ(c.rx.packets, conn.counters.to_guest.packets);
  EXPECT_GE(c.tx.packets, pump.packets_sent);
  for (std::size_t i = 0; i < vsock::drop_reasons; ++i) {
    EXPECT_EQ(c.drops[i], 0U) << vsock::to_string(static_cast<Drop>(i));
  }

  // The guest resets: one RST each way is what the counters see, and the connection is gone.
  ASSERT_OK(vm.guest().send(e->conn.make(op_rst)));
  ASSERT_OK(expect_eof(e->host.get()));
  const auto after = counters_of(vm);
  EXPECT_EQ(after.tx.rsts, 1U);
  EXPECT_EQ(after.tx.packets, c.tx.packets + 1);
  EXPECT_TRUE(connections_of(vm).empty());
}

TEST(VsockCounters, DropsAreCountedByReason) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  // An RW of no connection: RST, no_connection.
  Conn stray{.port = 46000, .peer_port = 7000};
  ASSERT_OK(vm.guest().send(stray.make(op_rw, pattern(10, 1))));
  auto answer = vm.guest().next();
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_rst);
  // A connect to a host port nobody listens on: RST, host_unreachable.
  Conn nobody{.port = 46001, .peer_port = 7001};
  answer = guest_connect(vm.guest(), nobody);
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_rst);
  // A connect to a CID no VM has (this VM has no router): RST, unknown_cid.
  Conn elsewhere{.port = 46002, .peer_port = 7002, .peer_cid = 7};
  answer = guest_connect(vm.guest(), elsewhere);
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_rst);
  // A spoofed source: nothing back, spoofed_source. The stray RW after it is the marker that
  // the device has handled it (tx is handled in order).
  Conn spoofed{.cid = 9, .port = 46003, .peer_port = 7003};
  ASSERT_OK(vm.guest().send(spoofed.make(op_request)));
  ASSERT_OK(vm.guest().send(stray.make(op_rw, pattern(10, 2))));
  answer = vm.guest().next();
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_rst);

  const auto c = counters_of(vm);
  EXPECT_EQ(c.dropped(Drop::no_connection), 2U);
  EXPECT_EQ(c.dropped(Drop::host_unreachable), 1U);
  EXPECT_EQ(c.dropped(Drop::unknown_cid), 1U);
  EXPECT_EQ(c.dropped(Drop::spoofed_source), 1U);
  EXPECT_EQ(c.dropped(Drop::no_shared_group), 0U);
  EXPECT_EQ(c.tx.packets, 5U);
  EXPECT_EQ(c.rx.packets, 4U);
  EXPECT_EQ(c.rx.rsts, 4U);
}

TEST(VsockCounters, CreditStallsAreCounted) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  // A guest socket with a 4 KiB receive buffer whose application does not read.
  auto e = establish(vm, 9101, 45001, 4096);
  ASSERT_OK(e);
  StreamPump pump{.guest = vm.guest(), .conn = e->conn, .host_fd = e->host.get()};
  pump.h2g = pattern(16 * 1024, 3);
  pump.guest_consumes = false;
  // The device sends what the credit allows, then has data and no credit: it asks for credit
  // (after counting the stall).
  ASSERT_OK(pump.run_until([&] { return pump.credit_requests_received > 0; }));
  EXPECT_EQ(pump.guest_received.size(), 4096U);
  const auto c = counters_of(vm);
  EXPECT_GE(c.credit_stalls, 1U);
  const auto conns = connections_of(vm);
  ASSERT_EQ(conns.size(), 1U);
  EXPECT_EQ(conns[0].counters.credit_stalls, c.credit_stalls);

  // Stalls of a connection that ended stay in the VM's count.
  ASSERT_OK(vm.guest().send(e->conn.make(op_rst)));
  ASSERT_OK(expect_eof(e->host.get()));
  EXPECT_TRUE(connections_of(vm).empty());
  EXPECT_EQ(counters_of(vm).credit_stalls, c.credit_stalls);
}

}  // namespace
}  // namespace vusim::vsock_test
