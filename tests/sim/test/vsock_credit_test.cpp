// Credit-based flow control (virtio 5.10.6.3) between the vsock device and the guest, seen
// from the guest: the device never sends more than the guest advertised, asks (CREDIT_REQUEST)
// when starved and resumes on the guest's CREDIT_UPDATE; it answers the guest's requests with
// its own credit; a guest that ignores the device's credit is reset; one starved connection
// does not hold up the others.
#include <sys/socket.h>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "assert_ok.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"

namespace vusim::vsock_test {
namespace {

using namespace vsock_guest;

/// A host application writing `data` without blocking, a piece at a time.
struct HostWriter {
  int fd;
  std::vector<std::byte> data;
  std::size_t written = 0;

  Result<void> pump() {
    while (written < data.size()) {
      const ssize_t n = ::send(fd, data.data() + written, data.size() - written, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (n > 0) {
        written += static_cast<std::size_t>(n);
        continue;
      }
      if (n < 0 && errno != EAGAIN && errno != EINTR) return Failure{Fault::io, std::strerror(errno)};
      break;
    }
    return {};
  }
  [[nodiscard]] pollfd poll_entry() const {
    return {written < data.size() ? fd : -1, POLLOUT, 0};
  }
};

TEST(VsockCredit, DeviceStaysWithinTheGuestCreditAndAsksForMoreWhenStarved) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  constexpr std::uint32_t window = 8192;
  auto e = establish(vm, 6100, 42000, window);
  ASSERT_OK(e);
  HostWriter host{.fd = e->host.get(), .data = pattern(512 * 1024, 20)};
  std::vector<std::byte> received;
  std::size_t requests = 0;
  const auto deadline = Clock::now() + 30s;
  while (received.size() < host.data.size()) {
    ASSERT_OK(host.pump());
    ASSERT_OK(vm.guest().collect());
    bool any = false;
    while (!vm.guest().inbox().empty()) {
      any = true;
      const Packet p = std::move(vm.guest().inbox().front());
      vm.guest().inbox().pop_front();
      ASSERT_TRUE(e->conn.matches(p)) << describe(p);
      // Conn::on_packet fails on any RW beyond the window the guest advertised.
      ASSERT_OK(e->conn.on_packet(p));
      switch (p.op) {
        case op_rw: received.insert(received.end(), p.payload.begin(), p.payload.end()); break;
        case op_credit_update: break;
        case op_credit_request:
          // A slow reader: it reads only when the device has nothing left to send with.
          ++requests;
          e->conn.consume(e->conn.unconsumed());
          ASSERT_OK(vm.guest().send(e->conn.make(op_credit_update)));
          break;
        default: FAIL() << "unexpected " << describe(p);
      }
    }
    if (any) continue;
    ASSERT_LT(Clock::now(), deadline) << fmt::format(
        "{} of {} bytes received, {} credit requests; guest holds {} unread bytes of a {}-byte window (the "
        "device neither sends nor asks for credit)",
        received.size(), host.data.size(), requests, e->conn.unconsumed(), window);
    pollfd h = host.poll_entry();
    ASSERT_OK(vm.guest().wait(std::span(&h, 1), deadline));
  }
  EXPECT_TRUE(received == host.data);
  // The guest only made room when asked, so every 8 KiB window but the last ended in a request.
  EXPECT_GE(requests, host.data.size() / window - 1);
}

TEST(VsockCredit, GuestCreditRequestIsAnsweredWithTheDeviceCredit) {
  VsockVm vm(VmOptions{.tweak = [](vsock::DeviceConfig& c) { c.tx_buffer_size = 32768; }});
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 6101, 42001);
  ASSERT_OK(e);
  EXPECT_EQ(e->conn.peer_buf_alloc, 32768U);
  const auto data = pattern(3000, 21);
  ASSERT_OK(guest_send(vm.guest(), e->conn, data));
  auto got = read_exact(e->host.get(), data.size());
  ASSERT_OK(got);
  ASSERT_OK(vm.guest().send(e->conn.make(op_credit_request)));
  auto answer = vm.guest().next();
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_credit_update) << describe(*answer);
  EXPECT_EQ(answer->buf_alloc, 32768U);
  EXPECT_EQ(answer->fwd_cnt, 3000U) << "fwd_cnt counts the bytes that reached the host socket";
  EXPECT_EQ(answer->len, 0U);
}

TEST(VsockCredit, GuestSendingBeyondTheDeviceCreditIsReset) {
  VsockVm vm(VmOptions{.tweak = [](vsock::DeviceConfig& c) { c.tx_buffer_size = 16384; }});
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 6102, 42002);
  ASSERT_OK(e);
  ASSERT_EQ(e->conn.peer_free(), 16384U);
  const auto too_much = pattern(20000, 22);
  ASSERT_OK(vm.guest().send(e->conn.make(op_rw, too_much)));
  auto answer = guest_expect(vm.guest(), e->conn);
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_rst) << describe(*answer);
  {
    const auto eof = expect_eof(e->host.get());
    EXPECT_TRUE(eof) << eof.error() << ": " << "the host must not get a stream the guest corrupted";
  }
}

TEST(VsockCredit, StarvedConnectionDoesNotHoldUpAnother) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto a = establish(vm, 6103, 42003, 4096);  // its reader never reads
  ASSERT_OK(a);
  auto b = establish(vm, 6104, 42004);
  ASSERT_OK(b);
  HostWriter host_a{.fd = a->host.get(), .data = pattern(128 * 1024, 23)};
  HostWriter host_b{.fd = b->host.get(), .data = pattern(1 << 20, 24)};
  std::vector<std::byte> got_b;
  std::size_t got_a = 0;
  const auto deadline = Clock::now() + 30s;
  while (got_b.size() < host_b.data.size()) {
    ASSERT_OK(host_a.pump());
    ASSERT_OK(host_b.pump());
    ASSERT_OK(vm.guest().collect());
    bool any = false;
    while (!vm.guest().inbox().empty()) {
      any = true;
      const Packet p = std::move(vm.guest().inbox().front());
      vm.guest().inbox().pop_front();
      if (a->conn.matches(p)) {
        ASSERT_OK(a->conn.on_packet(p));
        if (p.op == op_rw) got_a += p.len;
        ASSERT_TRUE(p.op == op_rw || p.op == op_credit_request || p.op == op_credit_update) << describe(p);
        continue;  // A's application sleeps: no read, no answer
      }
      ASSERT_TRUE(b->conn.matches(p)) << describe(p);
      ASSERT_OK(b->conn.on_packet(p));
      if (p.op == op_rw) {
        got_b.insert(got_b.end(), p.payload.begin(), p.payload.end());
        b->conn.consume(p.len);
      } else if (p.op == op_credit_request) {
        ASSERT_OK(vm.guest().send(b->conn.make(op_credit_update)));
      } else {
        ASSERT_EQ(p.op, op_credit_update) << describe(p);
      }
    }
    if (b->conn.update_due()) ASSERT_OK(vm.guest().send(b->conn.make(op_credit_update)));
    if (any) continue;
    ASSERT_LT(Clock::now(), deadline) << got_b.size() << " of " << host_b.data.size() << " bytes on B";
    pollfd fds[] = {host_a.poll_entry(), host_b.poll_entry()};
    ASSERT_OK(vm.guest().wait(fds, deadline));
  }
  EXPECT_TRUE(got_b == host_b.data);
  EXPECT_LE(got_a, 4096U);
}

TEST(VsockCredit, StarvedDeviceWaitsForNewCreditInsteadOfRepeatingCreditRequests) {
  // A Linux guest answers every CREDIT_REQUEST with a CREDIT_UPDATE
  // (virtio_transport_recv_connected), carrying whatever credit it has: none while its
  // application does not read. A device that asks again on such an update gets another
  // update, and so on: a packet storm that lasts as long as the application sleeps.
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto a = establish(vm, 6105, 42005, 8192);
  ASSERT_OK(a);
  auto b = establish(vm, 6106, 42006);
  ASSERT_OK(b);
  ASSERT_OK(write_all(a->host.get(), pattern(64 * 1024, 25)));
  // A's window fills; then the device asks.
  std::size_t got_a = 0;
  const auto deadline = Clock::now() + 10s;
  for (;;) {
    auto p = vm.guest().next(std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()));
    ASSERT_OK(p);
    ASSERT_TRUE(a->conn.matches(*p)) << describe(*p);
    ASSERT_OK(a->conn.on_packet(*p));
    if (p->op == op_rw) {
      got_a += p->len;
      continue;
    }
    ASSERT_EQ(p->op, op_credit_request) << describe(*p);
    break;
  }
  EXPECT_EQ(got_a, 8192U);
  // The guest answers as Linux does (no new credit), then asks on B: the marker. The device
  // handles tx in order, so a repeated request on A would come before B's update.
  ASSERT_OK(vm.guest().send(a->conn.make(op_credit_update)));
  ASSERT_OK(vm.guest().send(b->conn.make(op_credit_request)));
  auto next = vm.guest().next();
  ASSERT_OK(next);
  EXPECT_TRUE(b->conn.matches(*next) && next->op == op_credit_update)
      << "expected B's CREDIT_UPDATE, got " << describe(*next)
      << (a->conn.matches(*next) && next->op == op_credit_request
              ? " (the device asked again although the guest's update gave it no credit)"
              : "");
  // And A goes on as soon as the application reads.
  a->conn.consume(a->conn.unconsumed());
  ASSERT_OK(vm.guest().send(a->conn.make(op_credit_update)));
  std::size_t more = 0;
  while (more == 0) {
    auto p = vm.guest().next();
    ASSERT_OK(p);
    if (b->conn.matches(*p)) continue;
    ASSERT_TRUE(a->conn.matches(*p)) << describe(*p);
    ASSERT_OK(a->conn.on_packet(*p));
    if (p->op == op_rw) more += p->len;
  }
  EXPECT_GT(more, 0U);
}

}  // namespace
}  // namespace vusim::vsock_test
