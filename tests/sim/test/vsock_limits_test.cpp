// Bounded resources per VM: a maximum number of connections and a maximum of buffered bytes
// (each connection reserves its whole tx buffer, buf_alloc, when it opens). Beyond either, a
// new connection is refused (RST for a guest REQUEST, a closed socket for a host client)
// while the open ones keep working, and a slot comes back when a connection ends.
#include <sys/socket.h>

#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "assert_ok.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"

namespace vusim::vsock_test {
namespace {

using namespace vsock_guest;

/// Opens `count` guest connections to host ports 8000.. from guest ports 60000...
std::vector<Established> open_connections(VsockVm& vm, std::uint32_t count) {
  std::vector<Established> open;
  for (std::uint32_t i = 0; i < count; ++i) {
    SCOPED_TRACE(fmt::format("connection {} of {}", i, count));
    auto e = establish(vm, 8000 + i, 60000 + i);
    EXPECT_OK(e);
    if (!e) break;
    open.push_back(std::move(*e));
  }
  return open;
}

/// The next guest connection (to a live listener) is refused with RST, and a host client is
/// closed before it can send its CONNECT line.
void expect_refused(VsockVm& vm, std::uint32_t host_port, std::uint32_t guest_port) {
  auto listener = listen_at(vm.backend.port_path(host_port));
  ASSERT_OK(listener);
  Conn extra{.cid = vm.options_.cid, .port = guest_port, .peer_port = host_port};
  auto answer = guest_connect(vm.guest(), extra);
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_rst) << "a connection beyond the limit was not refused: " << describe(*answer);
  auto client = connect_to(vm.backend.uds());
  ASSERT_OK(client);
  {
    SCOPED_TRACE("a host client beyond the limit was not closed");
    EXPECT_OK(expect_eof(client->get()));
  }
}

/// The open connections still carry data both ways.
void expect_working(VsockVm& vm, std::vector<Established>& open) {
  for (std::size_t i = 0; i < open.size(); ++i) {
    SCOPED_TRACE(fmt::format("open connection {}", i));
    StreamPump pump{.guest = vm.guest(),
                    .conn = open[i].conn,
                    .host_fd = open[i].host.get(),
                    .g2h = pattern(32 * 1024, 10 + i),
                    .h2g = pattern(32 * 1024, 20 + i)};
    ASSERT_OK(pump.run());
  }
}

/// Ends `e` from the guest (RST) and waits until the host application has seen it.
void close_from_guest(VsockVm& vm, Established& e) {
  ASSERT_OK(vm.guest().send(e.conn.make(op_rst)));
  ASSERT_OK(expect_eof(e.host.get()));
}

TEST(VsockLimits, ConnectionCapRefusesNewConnectionsAndFreesASlotOnClose) {
  VsockVm vm(VmOptions{.tweak = [](vsock::DeviceConfig& c) { c.max_connections = 4; }});
  ASSERT_OK(vm.boot());
  auto open = open_connections(vm, 4);
  ASSERT_EQ(open.size(), 4U);
  expect_refused(vm, 8100, 60100);
  EXPECT_EQ(vm.backend.connection_count(), 4U);
  expect_working(vm, open);

  close_from_guest(vm, open.back());
  open.pop_back();
  auto again = establish(vm, 8200, 60200);
  {
    SCOPED_TRACE("the slot of a closed connection did not come back");
    EXPECT_OK(again);
  }
}

TEST(VsockLimits, BufferedBytesCapCountsEachConnectionsWholeBuffer) {
  // 64 KiB per connection, 3 × 64 KiB per VM: the fourth connection would exceed it.
  VsockVm vm(VmOptions{.tweak = [](vsock::DeviceConfig& c) {
    c.tx_buffer_size = 64 * 1024;
    c.max_buffered_bytes = 3 * 64 * 1024;
  }});
  ASSERT_OK(vm.boot());
  auto open = open_connections(vm, 3);
  ASSERT_EQ(open.size(), 3U);
  // The device advertises exactly the buffer it reserved.
  EXPECT_EQ(open[0].conn.peer_buf_alloc, 64U * 1024);
  expect_refused(vm, 8100, 60100);
  expect_working(vm, open);
}

TEST(VsockLimits, HostClientsWaitingForTheirConnectLineCountTowardsTheCap) {
  // A host client that sent nothing yet holds a slot (and a socket): a flood of idle clients
  // cannot exceed the cap either.
  VsockVm vm(VmOptions{.tweak = [](vsock::DeviceConfig& c) { c.max_connections = 3; }});
  ASSERT_OK(vm.boot());
  auto open = open_connections(vm, 2);
  ASSERT_EQ(open.size(), 2U);
  auto idle = connect_to(vm.backend.uds());
  ASSERT_OK(idle);
  // Clients are accepted in order: once the next one is refused, the idle one holds the
  // third slot.
  auto late = connect_to(vm.backend.uds());
  ASSERT_OK(late);
  {
    SCOPED_TRACE("a host client beyond the limit was not closed");
    ASSERT_OK(expect_eof(late->get()));
  }
  expect_refused(vm, 8100, 60100);
  // The idle client still gets its connection once it speaks.
  ASSERT_OK(write_all(idle->get(), "CONNECT 5000\n"));
  auto request = vm.guest().next();
  ASSERT_OK(request);
  EXPECT_EQ(request->op, op_request) << describe(*request);
  EXPECT_EQ(request->dst_port, 5000U);
}

}  // namespace
}  // namespace vusim::vsock_test
