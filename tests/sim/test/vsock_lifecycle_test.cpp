// Open vsock connections across the device's life cycle: a VM pause/resume (QEMU 7.2 stop:
// SET_VRING_ENABLE 0 and GET_VRING_BASE; start again from the saved bases) keeps them
// working, host data that arrived during the pause included; a front-end disconnect closes
// the host sockets, and a reconnected front-end gets a working device; a guest driver that
// restarts its rings from index 0 has lost its sockets, so the host's are closed too.
#include <sys/socket.h>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "assert_ok.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"

namespace vusim::vsock_test {
namespace {

using namespace vsock_guest;

/// A host-initiated connection: the host client, and the guest socket that accepted it.
struct Accepted {
  UniqueFd host;
  Conn conn;
};

Result<Accepted> accept_from_host(VsockVm& vm, std::uint32_t port) {
  auto host = connect_to(vm.backend.uds());
  if (!host) return host.error();
  if (auto ok = write_all(host->get(), fmt::format("CONNECT {}\n", port)); !ok) return ok.error();
  auto request = vm.guest().next();
  if (!request) return request.error();
  if (request->op != op_request || request->dst_port != port) {
    return Failure{Fault::guest, "expected a REQUEST: " + describe(*request)};
  }
  Accepted a{std::move(*host), Conn{.port = port, .peer_port = request->src_port}};
  if (auto ok = a.conn.on_packet(*request); !ok) return ok.error();
  if (auto ok = vm.guest().send(a.conn.make(op_response)); !ok) return ok.error();
  auto line = read_line(a.host.get());
  if (!line) return line.error();
  if (*line != fmt::format("OK {}\n", request->src_port)) return Failure{Fault::bad_reply, "host got " + *line};
  return a;
}

Result<void> exchange(VsockVm& vm, Conn& conn, int host, std::size_t size, std::uint64_t seed) {
  StreamPump pump{.guest = vm.guest(), .conn = conn, .host_fd = host, .g2h = pattern(size, seed),
                  .h2g = pattern(size, seed + 1)};
  pump.shape = rotating_shape;
  if (auto ok = pump.run(); !ok) return ok;
  if (pump.host_received != pump.g2h) return Failure{Fault::guest, "guest -> host stream differs"};
  if (pump.guest_received != pump.h2g) return Failure{Fault::guest, "host -> guest stream differs"};
  return {};
}

TEST(VsockLifecycle, PauseResumeKeepsAnOpenConnectionWorking) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 8000, 43000);
  ASSERT_OK(e);
  ASSERT_OK(exchange(vm, e->conn, e->host.get(), 200 * 1024, 30));

  // stop: the bases are what the device consumed, which for tx is everything posted.
  auto bases = vm.sequence().stop(vm.frontend(), vm.dev);
  ASSERT_OK(bases);
  EXPECT_EQ(bases->at(1), vm.guest().tx().avail_idx());
  EXPECT_EQ(bases->at(0), vm.guest().rx().device_used_idx()) << "rx base: buffers used, not the ones only posted";

  // The host writes while the VM is paused: the device cannot deliver, and must not lose it.
  const auto during = pattern(20 * 1024, 31);
  ASSERT_OK(write_all(e->host.get(), during));
  ASSERT_OK(vm.frontend().get_features());  // a round trip: the device had its chance to misbehave
  EXPECT_EQ(vm.guest().rx().device_used_idx(), bases->at(0)) << "the device used an rx buffer while stopped";

  // cont: start from the saved bases. The guest does not kick (it never knew it was paused):
  // the data must come anyway.
  ASSERT_OK(vm.sequence().start(vm.frontend(), vm.dev, {}));
  auto got = guest_receive(vm.guest(), e->conn, during.size());
  ASSERT_OK(got);
  EXPECT_TRUE(*got == during);
  ASSERT_OK(exchange(vm, e->conn, e->host.get(), 200 * 1024, 32));

  // The helper (stop + start) too, twice in a row.
  ASSERT_OK(vm.pause_resume());
  ASSERT_OK(vm.pause_resume());
  ASSERT_OK(exchange(vm, e->conn, e->host.get(), 64 * 1024, 33));
}

TEST(VsockLifecycle, FrontendDisconnectClosesHostSocketsAndAReconnectedFrontendIsServed) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto guest_side = establish(vm, 8001, 43001);
  ASSERT_OK(guest_side);
  auto host_side = accept_from_host(vm, 8002);
  ASSERT_OK(host_side);
  ASSERT_OK(exchange(vm, guest_side->conn, guest_side->host.get(), 10 * 1024, 40));
  ASSERT_OK(exchange(vm, host_side->conn, host_side->host.get(), 10 * 1024, 41));
  EXPECT_EQ(vm.backend.connection_count(), 2U);

  ASSERT_OK(vm.frontend().disconnect());
  EXPECT_OK(expect_eof(guest_side->host.get()));
  EXPECT_OK(expect_eof(host_side->host.get()));
  EXPECT_EQ(vm.backend.connection_count(), 0U);

  // QEMU reconnects (the guest's rings resume where the used index is).
  vm.dev.forget_backend();
  auto fresh = Frontend::connect(vm.backend.socket(), test::traced_options(vm.log));
  ASSERT_OK(fresh);
  vm.frontend_slot().emplace(std::move(*fresh));
  ASSERT_OK(vm.sequence().realize(vm.frontend(), vm.dev));
  ASSERT_OK(vm.sequence().start(vm.frontend(), vm.dev, {}));
  auto again = establish(vm, 8003, 43002);
  ASSERT_OK(again);
  ASSERT_OK(exchange(vm, again->conn, again->host.get(), 64 * 1024, 42));
}

TEST(VsockLifecycle, GuestDriverRestartClosesHostSockets) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 8004, 43003);
  ASSERT_OK(e);
  ASSERT_OK(exchange(vm, e->conn, e->host.get(), 10 * 1024, 50));
  // The driver is reset (reboot, module reload): QEMU stops the device, the guest builds new
  // rings, and the device starts again from index 0.
  ASSERT_OK(vm.sequence().stop(vm.frontend(), vm.dev));
  vm.dev.drivers.clear();
  ASSERT_OK(vm.sequence().start(vm.frontend(), vm.dev, {}));
  ASSERT_EQ(vm.guest().rx().avail_idx(), 0);
  {
    const auto eof = expect_eof(e->host.get());
    EXPECT_TRUE(eof) << eof.error() << ": " << "the guest's socket died with its driver; the host's must close";
  }
  ASSERT_OK(vm.guest().post_rx(64));
  auto again = establish(vm, 8005, 43004);
  ASSERT_OK(again);
  ASSERT_OK(exchange(vm, again->conn, again->host.get(), 10 * 1024, 51));
}

}  // namespace
}  // namespace vusim::vsock_test
