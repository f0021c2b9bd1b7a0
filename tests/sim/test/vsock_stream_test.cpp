// The vsock device through the simulator: config space, guest- and host-initiated stream
// connections, refusal, half-close, backpressure. vsock::VsockDevice runs behind
// vhostuser::Server on its own io_context thread; QEMU 7.2 and a Linux-like guest are
// simulated; the host applications are AF_UNIX sockets of the test.
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <array>
#include <cstring>
#include <iostream>

#include <boost/endian/conversion.hpp>
#include <fmt/format.h>
#include <gtest/gtest.h>

#include "assert_ok.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"

namespace vusim::vsock_test {
namespace {

using namespace vsock_guest;

constexpr std::uint32_t host_port_min = 1u << 30;
constexpr std::uint32_t host_port_end = 1u << 31;

// --- 1. config space -----------------------------------------------------------------------

TEST(VsockConfig, GetConfigReturnsTheGuestCidAsLe64) {
  // A CID whose four low bytes all differ, so a byte-order or width mistake shows.
  constexpr std::uint64_t cid = 0x89abcdef;
  VsockVm vm(VmOptions{.cid = cid});
  ASSERT_OK(vm.boot());
  std::array<std::byte, 8> expected{};
  const std::uint64_t le = boost::endian::native_to_little(cid);
  std::memcpy(expected.data(), &le, sizeof le);
  // QEMU reads it at realize (GET_CONFIG offset 0, size 8)...
  ASSERT_EQ(vm.dev.config.size(), 8U);
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), vm.dev.config.begin()))
      << "config space is not le64 guest_cid 0x89abcdef";
  // ...and any later read gives the same, also a partial one (the high half: zero).
  auto again = vm.frontend().get_config(0, 8);
  ASSERT_OK(again);
  EXPECT_TRUE(std::equal(expected.begin(), expected.end(), again->begin()));
  auto high = vm.frontend().get_config(4, 4);
  ASSERT_OK(high);
  EXPECT_EQ(*high, std::vector<std::byte>(4, std::byte{0}));
  // The device speaks for that CID: a connection from it works.
  auto listener = listen_at(vm.backend.port_path(9));
  ASSERT_OK(listener);
  Conn conn{.cid = cid, .port = 1025, .peer_port = 9};
  auto answer = guest_connect(vm.guest(), conn);
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_response) << describe(*answer);
}

// --- 2. guest-initiated stream, 4 MiB each way ----------------------------------------------

/// How the guest lays out its rx buffers (virtio-vsock reference §4.2, "RX buffers").
struct RxLayout {
  const char* name;
  ChainLayout layout;
};

void PrintTo(const RxLayout& layout, std::ostream* out) { *out << layout.name; }

class VsockStream4MiB : public ::testing::TestWithParam<RxLayout> {};

TEST_P(VsockStream4MiB, GuestConnectsToHostListenerAndMovesDataEachWay) {
  VsockVm vm(VmOptions{.rx_buffers = 0});
  ASSERT_OK(vm.boot());
  const ChainLayout layout = GetParam().layout;
  vm.guest().set_refill([layout] { return layout; });
  ASSERT_OK(vm.guest().post_rx(64, layout));
  auto listener = listen_at(vm.backend.port_path(5000));
  ASSERT_OK(listener);
  Conn conn{.port = 49152, .peer_port = 5000};
  auto answer = guest_connect(vm.guest(), conn);
  ASSERT_OK(answer);
  ASSERT_EQ(answer->op, op_response) << describe(*answer);
  EXPECT_EQ(answer->src_cid, host_cid);
  EXPECT_EQ(answer->src_port, 5000U);
  EXPECT_EQ(answer->dst_port, 49152U);
  EXPECT_EQ(answer->type, type_stream);
  EXPECT_EQ(answer->len, 0U);
  EXPECT_EQ(answer->buf_alloc, vm.backend.config().tx_buffer_size) << "the device advertises its tx buffer";
  EXPECT_EQ(answer->fwd_cnt, 0U);
  auto host = accept_within(listener->get());
  ASSERT_OK(host);

  constexpr std::size_t size = 4 << 20;
  StreamPump pump{.guest = vm.guest(), .conn = conn, .host_fd = host->get(), .g2h = pattern(size, 1),
                  .h2g = pattern(size, 2)};
  pump.shape = rotating_shape;
  ASSERT_OK(pump.run(120s));
  EXPECT_EQ(checksum(pump.host_received), checksum(pump.g2h));
  EXPECT_TRUE(pump.host_received == pump.g2h) << "guest -> host stream differs";
  EXPECT_EQ(checksum(pump.guest_received), checksum(pump.h2g));
  EXPECT_TRUE(pump.guest_received == pump.h2g) << "host -> guest stream differs";
  // 4 MiB through a 64 KiB credit window: the guest could only go on because the device
  // told it about the room the host made.
  EXPECT_GT(pump.credit_updates_received, 0U);
  std::cout << fmt::format("{}: 4 MiB each way, {} RW packets from the guest, {} packets to it, {} CREDIT_UPDATEs "
                           "from the device, out of credit {} times; checksums {:016x} / {:016x}\n",
                           GetParam().name, pump.packets_sent, vm.guest().rx_received(),
                           pump.credit_updates_received, pump.credit_waits, checksum(pump.host_received),
                           checksum(pump.guest_received));
}

INSTANTIATE_TEST_SUITE_P(
    RxLayouts, VsockStream4MiB,
    ::testing::Values(
        // Linux 6.3 to 6.16: one buffer of 4 KiB + header.
        RxLayout{"Linux63", {.segments = {{.len = 4096 + header_size}}}},
        // Before 6.3: the header and 4 KiB in two descriptors.
        RxLayout{"LinuxBefore63", {.segments = {{.len = header_size}, {.len = 4096}}}},
        // Since 2025: SKB_WITH_OVERHEAD(4096), header included.
        RxLayout{"Linux2025", {.segments = {{.len = 3776}}}},
        // Header split over two descriptors, data over two more, all in an indirect table.
        RxLayout{"IndirectSplit", {.segments = {{.len = 20}, {.len = 24}, {.len = 1000}, {.len = 3000}},
                                   .indirect_from = 0}},
        // Small buffers: many packets.
        RxLayout{"Small512", {.segments = {{.len = 512}}}}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

TEST(VsockStream, BuffersStraddlingTwoRamRegionsCarryData) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto listener = listen_at(vm.backend.port_path(5010));
  ASSERT_OK(listener);
  Conn conn{.port = 49160, .peer_port = 5010};
  auto answer = guest_connect(vm.guest(), conn);
  ASSERT_OK(answer);
  ASSERT_EQ(answer->op, op_response) << describe(*answer);
  auto host = accept_within(listener->get());
  ASSERT_OK(host);
  // tx: the payload buffer lies across the region boundary (virtio 2.7.5: contiguous for the
  // guest, two mappings for any host).
  const auto out = pattern(10000, 12);
  ASSERT_OK(vm.guest().send(conn.make(op_rw, out), TxShape{.segments = {header_size, 10000}, .straddle = 1}));
  auto got = read_exact(host->get(), out.size());
  ASSERT_OK(got);
  EXPECT_TRUE(*got == out);
  ASSERT_OK(vm.guest().drain_tx());  // the straddling tx buffer is free again
  // rx: one straddling buffer behind the 64 posted; 1 MiB goes through all of them.
  ASSERT_OK(vm.guest().post_rx(1, ChainLayout{.segments = {{.len = 8192, .straddle = true}}}));
  StreamPump pump{.guest = vm.guest(), .conn = conn, .host_fd = host->get(), .h2g = pattern(1 << 20, 13)};
  ASSERT_OK(pump.run());
  EXPECT_TRUE(pump.guest_received == pump.h2g);
}

// --- 3. refused connect ------------------------------------------------------------------------

TEST(VsockStream, ConnectToAPortWithoutListenerIsResetAtOnce) {
  // Long timeouts: an RST that only a timer could produce would not arrive within the wait.
  VsockVm vm(VmOptions{.tweak = [](vsock::DeviceConfig& c) {
    c.connect_timeout = 60s;
    c.shutdown_timeout = 60s;
  }});
  ASSERT_OK(vm.boot());
  Conn conn{.port = 40000, .peer_port = 5001};
  auto answer = guest_connect(vm.guest(), conn, 5s);
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_rst) << describe(*answer);
  EXPECT_EQ(answer->src_cid, host_cid);
  EXPECT_EQ(answer->src_port, 5001U);
  EXPECT_EQ(answer->dst_port, 40000U);
  EXPECT_EQ(answer->type, type_stream);
  EXPECT_EQ(answer->len, 0U);

  // A listener of the other type refuses a stream connection just as promptly.
  auto seq = listen_at(vm.backend.port_path(5002), SOCK_SEQPACKET);
  ASSERT_OK(seq);
  Conn other{.port = 40001, .peer_port = 5002};
  answer = guest_connect(vm.guest(), other, 5s);
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_rst) << describe(*answer);
  EXPECT_EQ(vm.backend.connection_count(), 0U);
}

// --- 4. host-initiated -------------------------------------------------------------------------

TEST(VsockHostInitiated, SplitConnectLineThenPayloadReachTheGuest) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto host = connect_to(vm.backend.uds());
  ASSERT_OK(host);
  ASSERT_OK(write_all(host->get(), "CONNECT 12"));
  // The daemon has read the first half before the second is written: the line really
  // arrives in two pieces.
  ASSERT_OK(wait_peer_consumed(host->get()));
  const auto payload = pattern(3000, 7);
  std::vector<std::byte> second;
  for (char c : std::string_view("34\n")) second.push_back(static_cast<std::byte>(c));
  second.insert(second.end(), payload.begin(), payload.end());
  ASSERT_OK(write_all(host->get(), second));

  auto request = vm.guest().next();
  ASSERT_OK(request);
  ASSERT_EQ(request->op, op_request) << describe(*request);
  EXPECT_EQ(request->src_cid, host_cid);
  EXPECT_EQ(request->dst_cid, 3U);
  EXPECT_EQ(request->dst_port, 1234U);
  EXPECT_EQ(request->type, type_stream);
  EXPECT_EQ(request->len, 0U);
  EXPECT_GE(request->src_port, host_port_min);
  EXPECT_LT(request->src_port, host_port_end);
  EXPECT_GT(request->buf_alloc, 0U);

  Conn conn{.port = 1234, .peer_port = request->src_port};
  ASSERT_OK(conn.on_packet(*request));
  ASSERT_OK(vm.guest().send(conn.make(op_response)));
  auto line = read_line(host->get());
  ASSERT_OK(line);
  EXPECT_EQ(*line, fmt::format("OK {}\n", request->src_port));

  // The bytes written right after the newline are the start of the stream.
  auto got = guest_receive(vm.guest(), conn, payload.size());
  ASSERT_OK(got);
  EXPECT_TRUE(*got == payload) << "payload after the CONNECT line was altered or lost";
  // And the other way.
  ASSERT_OK(guest_send(vm.guest(), conn, as_bytes("pong")));
  auto pong = read_exact(host->get(), 4);
  ASSERT_OK(pong);
  EXPECT_EQ(as_text(*pong), "pong");

  // A second client to a port where the guest refuses: EOF, no "OK".
  auto refused = connect_to(vm.backend.uds());
  ASSERT_OK(refused);
  ASSERT_OK(write_all(refused->get(), "CONNECT 5678\n"));
  auto request2 = vm.guest().next();
  ASSERT_OK(request2);
  ASSERT_EQ(request2->op, op_request) << describe(*request2);
  EXPECT_EQ(request2->dst_port, 5678U);
  EXPECT_NE(request2->src_port, request->src_port) << "two live connections got the same host port";
  Conn conn2{.port = 5678, .peer_port = request2->src_port};
  ASSERT_OK(vm.guest().send(conn2.make(op_rst)));
  EXPECT_OK(expect_eof(refused->get()));
  // The first connection is untouched.
  ASSERT_OK(guest_send(vm.guest(), conn, as_bytes("still")));
  auto still = read_exact(host->get(), 5);
  ASSERT_OK(still);
  EXPECT_EQ(as_text(*still), "still");
}

TEST(VsockHostInitiated, GuestThatNeverAnswersIsResetAfterTheConnectTimeout) {
  VsockVm vm(VmOptions{.tweak = [](vsock::DeviceConfig& c) { c.connect_timeout = 300ms; }});
  ASSERT_OK(vm.boot());
  auto host = connect_to(vm.backend.uds());
  ASSERT_OK(host);
  ASSERT_OK(write_all(host->get(), "connect 4321\n"));  // the keyword is case-insensitive
  auto request = vm.guest().next();
  ASSERT_OK(request);
  ASSERT_EQ(request->op, op_request) << describe(*request);
  // The guest stays silent: the daemon gives up, tells the guest and closes the client.
  auto rst = vm.guest().next(5s);
  ASSERT_OK(rst);
  EXPECT_EQ(rst->op, op_rst) << describe(*rst);
  EXPECT_EQ(rst->src_port, request->src_port);
  EXPECT_EQ(rst->dst_port, 4321U);
  EXPECT_OK(expect_eof(host->get()));
}

TEST(VsockHostInitiated, MalformedConnectLineIsDroppedWithoutReachingTheGuest) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto bad = connect_to(vm.backend.uds());
  ASSERT_OK(bad);
  ASSERT_OK(write_all(bad->get(), "CONNECT twelve\n"));
  EXPECT_OK(expect_eof(bad->get()));
  // The first REQUEST the guest sees is the next, valid client's.
  auto good = connect_to(vm.backend.uds());
  ASSERT_OK(good);
  ASSERT_OK(write_all(good->get(), "CONNECT 77\n"));
  auto request = vm.guest().next();
  ASSERT_OK(request);
  EXPECT_EQ(request->op, op_request) << describe(*request);
  EXPECT_EQ(request->dst_port, 77U);
}

TEST(VsockHostInitiated, ClientThatConnectsBeforeTheGuestDriverIsReadyIsServedOnceItIs) {
  VsockVm vm(VmOptions{.rx_buffers = 0});
  ASSERT_OK(vm.boot());
  auto host = connect_to(vm.backend.uds());
  ASSERT_OK(host);
  ASSERT_OK(write_all(host->get(), "CONNECT 88\n"));
  ASSERT_OK(wait_peer_consumed(host->get()));  // the daemon took the line; the guest has no buffers yet
  ASSERT_OK(vm.guest().post_rx(64));
  auto request = vm.guest().next();
  ASSERT_OK(request);
  ASSERT_EQ(request->op, op_request) << describe(*request);
  EXPECT_EQ(request->dst_port, 88U);
  Conn conn{.port = 88, .peer_port = request->src_port};
  ASSERT_OK(conn.on_packet(*request));
  ASSERT_OK(vm.guest().send(conn.make(op_response)));
  auto line = read_line(host->get());
  ASSERT_OK(line);
  EXPECT_EQ(*line, fmt::format("OK {}\n", request->src_port));
}

// --- 5. half-close -------------------------------------------------------------------------------

/// The guest sends `data` while the host application does not read, until the host socket
/// is full and the daemon holds the rest of what it took in its own buffer: the guest is out
/// of credit and the host socket has fewer bytes queued than the guest sent. Returns how many
/// bytes the guest sent.
Result<std::size_t> fill_daemon_buffer(VsockVm& vm, Established& e, const std::vector<std::byte>& data) {
  StreamPump pump{.guest = vm.guest(), .conn = e.conn, .host_fd = e.host.get(), .g2h = data};
  pump.host_reads = false;
  pump.shape = rotating_shape;
  const auto queued_for_host = [&] {
    int n = 0;
    return ::ioctl(e.host.get(), FIONREAD, &n) == 0 ? static_cast<std::size_t>(n) : 0;
  };
  if (auto ok = pump.run_until([&] { return pump.out_of_credit && queued_for_host() < pump.g2h_sent; }, 20s); !ok) {
    return ok.error();
  }
  if (pump.g2h_sent == data.size()) return Failure{Fault::guest, "the guest sent everything: no backpressure"};
  return pump.g2h_sent;
}

TEST(VsockHalfClose, GuestShutdownSendGivesHostEofAfterAllDataAndHostCanStillSend) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 5003, 41000);
  ASSERT_OK(e);
  const auto data = pattern(4 << 20, 3);
  auto sent = fill_daemon_buffer(vm, *e, data);
  ASSERT_OK(sent);
  ASSERT_OK(vm.guest().send(e->conn.make(op_shutdown, {}, shutdown_send)));
  auto all = read_to_eof(e->host.get());
  ASSERT_OK(all);
  EXPECT_EQ(all->size(), *sent) << "the host's EOF came before all the guest's data";
  EXPECT_TRUE(std::equal(all->begin(), all->end(), data.begin())) << "data changed";

  // Half-close: host -> guest still works.
  const auto back = pattern(50 * 1024, 4);
  ASSERT_OK(write_all(e->host.get(), back));
  auto got = guest_receive(vm.guest(), e->conn, back.size());
  ASSERT_OK(got);
  EXPECT_TRUE(*got == back);
  EXPECT_FALSE(e->conn.reset);
  EXPECT_EQ(e->conn.peer_shutdown, 0U);
}

TEST(VsockHalfClose, HostShutWrGivesGuestShutdownSendAfterAllDataAndGuestCanStillSend) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 5004, 41001);
  ASSERT_OK(e);
  StreamPump pump{.guest = vm.guest(), .conn = e->conn, .host_fd = e->host.get(), .h2g = pattern(300 * 1024, 5)};
  ASSERT_OK(pump.run_until([&] { return pump.h2g_written == pump.h2g.size(); }));
  ASSERT_EQ(::shutdown(e->host.get(), SHUT_WR), 0);
  auto rest = guest_receive(vm.guest(), e->conn, pump.h2g.size() - pump.guest_received.size());
  ASSERT_OK(rest);
  pump.guest_received.insert(pump.guest_received.end(), rest->begin(), rest->end());
  EXPECT_TRUE(pump.guest_received == pump.h2g);
  auto shutdown = guest_expect(vm.guest(), e->conn);
  ASSERT_OK(shutdown);
  ASSERT_EQ(shutdown->op, op_shutdown) << describe(*shutdown);
  EXPECT_EQ(shutdown->flags, shutdown_send) << "host SHUT_WR is SHUTDOWN(SEND) only: the host still reads";

  // Guest -> host still works.
  const auto data = pattern(10 * 1024, 6);
  ASSERT_OK(guest_send(vm.guest(), e->conn, data));
  auto got = read_exact(e->host.get(), data.size());
  ASSERT_OK(got);
  EXPECT_TRUE(*got == data);
  EXPECT_FALSE(e->conn.reset);
}

TEST(VsockHalfClose, GuestShutdownBothIsAnsweredWithRstAndHostEof) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 5005, 41002);
  ASSERT_OK(e);
  // The guest closes while the daemon still holds some of its data: the host gets all of it,
  // then EOF, and the guest its RST.
  const auto data = pattern(4 << 20, 8);
  auto sent = fill_daemon_buffer(vm, *e, data);
  ASSERT_OK(sent);
  ASSERT_OK(vm.guest().send(e->conn.make(op_shutdown, {}, shutdown_rcv | shutdown_send)));
  auto all = read_to_eof(e->host.get());
  ASSERT_OK(all);
  EXPECT_EQ(all->size(), *sent) << "the host must get everything the guest sent before closing";
  EXPECT_TRUE(std::equal(all->begin(), all->end(), data.begin())) << "data changed";
  auto rst = guest_expect(vm.guest(), e->conn);
  ASSERT_OK(rst);
  EXPECT_EQ(rst->op, op_rst) << describe(*rst);
}

// --- 8. backpressure ---------------------------------------------------------------------------

TEST(VsockBackpressure, HostDataWaitsForRxBuffersWithoutSpinningAndArrivesInOrder) {
  VsockVm vm(VmOptions{.rx_buffers = 1});
  ASSERT_OK(vm.boot());
  vm.guest().set_refill({});  // the one buffer carries the RESPONSE; then none is left
  auto e = establish(vm, 5006, 41003);
  ASSERT_OK(e);
  ASSERT_EQ(vm.guest().rx().outstanding(), 0U);

  // The host writes until its socket is full: with no rx buffer the daemon must leave the
  // data in the socket (it reads straight into guest buffers), not drop it.
  std::vector<std::byte> written;
  std::uint64_t seed = 100;
  for (;;) {
    const auto chunk = pattern(16 * 1024, seed++);
    const ssize_t n = ::send(e->host.get(), chunk.data(), chunk.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0) {
      ASSERT_EQ(errno, EAGAIN) << std::strerror(errno);
      break;
    }
    written.insert(written.end(), chunk.begin(), chunk.begin() + n);
    ASSERT_LT(written.size(), 64u << 20) << "the host socket never filled: the daemon is reading without buffers";
  }
  ASSERT_GT(written.size(), 0U);

  // No busy spin while it waits: the daemon's thread stays nearly idle over a window in which
  // nothing can happen (no buffer may be used: none is posted). A round trip first, so that
  // the interrupt of the last buffer's packet has been sent and can be cleared.
  ASSERT_OK(vm.frontend().get_features());
  ASSERT_OK(vm.guest().rx().take_calls());
  vm.guest().rx().enable_interrupts();
  EXPECT_OK(vm.backend.expect_quiet(vm.guest().rx().call_fd(), POLLIN, 300ms, "an rx interrupt with no rx buffer"));

  // Buffers come: everything arrives, in order, and the stream goes on.
  vm.guest().set_refill([] { return ChainLayout{.segments = {{.len = 4096}}}; });
  ASSERT_OK(vm.guest().post_rx(64));
  auto got = guest_receive(vm.guest(), e->conn, written.size());
  ASSERT_OK(got);
  EXPECT_TRUE(*got == written) << "host data was lost or reordered while the guest had no rx buffers";
  StreamPump pump{.guest = vm.guest(), .conn = e->conn, .host_fd = e->host.get(), .h2g = pattern(256 * 1024, 9)};
  ASSERT_OK(pump.run());
  EXPECT_TRUE(pump.guest_received == pump.h2g);
}

TEST(VsockBackpressure, RepliesWaitForRxBuffersAndTxPausesInsteadOfDropping) {
  VsockVm vm(VmOptions{.rx_buffers = 0});
  ASSERT_OK(vm.boot());
  Guest& guest = vm.guest();
  guest.set_refill({});
  // 400 packets that each earn an RST (no such connection), while the guest posts no rx
  // buffer: the device may hold a bounded number of replies, then must stop taking tx.
  constexpr std::size_t total = 400;
  const auto packet = [&](std::size_t i) {
    Conn c{.port = static_cast<std::uint32_t>(20000 + i), .peer_port = 7777};
    return c.make(op_rw, pattern(16, i));
  };
  std::size_t next = 0;
  auto deadline = Clock::now() + 10s;
  for (;;) {
    if (next < total) {
      auto sent = guest.try_send(packet(next));
      ASSERT_OK(sent);
      if (*sent) {
        ++next;
        continue;
      }
    }
    auto got = guest.collect();
    ASSERT_OK(got);
    if (*got) continue;
    if (guest.tx().free_descriptors() == 0 && guest.tx_completed() >= vsock::VsockDevice::max_pending_replies) break;
    ASSERT_FALSE(next == total && guest.tx().outstanding() == 0)
        << "the device took all " << total << " packets with no rx buffer to answer them in";
    ASSERT_LT(Clock::now(), deadline) << "tx stalled after " << guest.tx_completed() << " packets";
    ASSERT_OK(guest.wait({}, deadline));
  }
  // Let the device finish with the last kick, then look: it stopped at its bound.
  ASSERT_TRUE(test::wait_drained(guest.tx().kick_fd(), 5s));
  ASSERT_OK(vm.frontend().get_features());
  EXPECT_EQ(guest.tx().device_used_idx(), vsock::VsockDevice::max_pending_replies);
  EXPECT_EQ(guest.rx().device_used_idx(), 0);

  // rx buffers come: every reply arrives, in order, and tx resumes until all 400 are done.
  guest.set_refill([] { return ChainLayout{.segments = {{.len = 4096}}}; });
  ASSERT_OK(guest.post_rx(64));
  std::size_t received = 0;
  deadline = Clock::now() + 20s;
  while (received < total) {
    if (next < total) {
      auto sent = guest.try_send(packet(next));
      ASSERT_OK(sent);
      if (*sent) {
        ++next;
        continue;
      }
    }
    ASSERT_OK(guest.collect());
    while (!guest.inbox().empty()) {
      const Packet p = std::move(guest.inbox().front());
      guest.inbox().pop_front();
      ASSERT_EQ(p.op, op_rst) << describe(p);
      ASSERT_EQ(p.src_port, 7777U) << describe(p);
      ASSERT_EQ(p.dst_port, 20000 + received) << "reply " << received << " out of order: " << describe(p);
      ++received;
    }
    if (received == total) break;
    ASSERT_LT(Clock::now(), deadline) << received << " of " << total << " replies";
    ASSERT_OK(guest.wait({}, deadline));
  }
  EXPECT_EQ(next, total);
}

TEST(VsockBackpressure, TxResumesAfterTheReplyQueueFilledJustAsTheTxRingEmptied) {
  // Exactly as many reply-earning packets as the device holds replies: the last one fills
  // its reply queue and empties the tx ring in the same turn. Once the replies are delivered,
  // the guest's next packet must still be served (it kicks only if the device asked for it).
  VsockVm vm(VmOptions{.rx_buffers = 0});
  ASSERT_OK(vm.boot());
  Guest& guest = vm.guest();
  guest.set_refill({});
  auto listener = listen_at(vm.backend.port_path(5020));
  ASSERT_OK(listener);
  constexpr std::size_t total = vsock::VsockDevice::max_pending_replies;
  std::size_t next = 0;
  auto deadline = Clock::now() + 10s;
  while (guest.tx_completed() < total) {
    if (next < total) {
      Conn c{.port = static_cast<std::uint32_t>(21000 + next), .peer_port = 7778};
      auto sent = guest.try_send(c.make(op_rw, pattern(16, next)));
      ASSERT_OK(sent);
      if (*sent) {
        ++next;
        continue;
      }
    }
    auto got = guest.collect();
    ASSERT_OK(got);
    if (*got) continue;
    ASSERT_LT(Clock::now(), deadline) << "tx stalled after " << guest.tx_completed() << " packets";
    ASSERT_OK(guest.wait({}, deadline));
  }
  guest.set_refill([] { return ChainLayout{.segments = {{.len = 4096}}}; });
  ASSERT_OK(guest.post_rx(64));
  for (std::size_t i = 0; i < total; ++i) {
    auto p = guest.next();
    ASSERT_OK(p);
    ASSERT_EQ(p->op, op_rst) << describe(*p);
    ASSERT_EQ(p->dst_port, 21000 + i) << describe(*p);
  }
  // The device has seen the guest's last rx refill before the next packet goes out: nothing
  // but the tx kick (or the device's own bookkeeping) can bring that packet to its attention.
  ASSERT_TRUE(test::wait_drained(guest.rx().kick_fd(), 5s));
  ASSERT_OK(vm.frontend().get_features());
  Conn conn{.port = 21999, .peer_port = 5020};
  auto answer = guest_connect(guest, conn, 5s);
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_response) << describe(*answer);
}

TEST(VsockBackpressure, RxBufferOfExactlyHeaderSizeDoesNotStallHostData) {
  // A 44-byte rx buffer holds a header and nothing else. The device may put a control
  // packet in it or return it unused, but host data must still flow through the buffers
  // posted behind it.
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 5007, 41004);
  ASSERT_OK(e);
  // Behind the 64 buffers already posted: one of exactly 44 bytes, then the usual refills.
  ASSERT_OK(vm.guest().post_rx(1, ChainLayout{.segments = {{.len = header_size}}}));
  StreamPump pump{.guest = vm.guest(), .conn = e->conn, .host_fd = e->host.get(), .h2g = pattern(1 << 20, 11)};
  const auto cpu_before = vm.backend.cpu_time();
  const auto ok = pump.run(10s);
  const auto cpu = vm.backend.cpu_time() - cpu_before;
  EXPECT_OK(ok);
  EXPECT_TRUE(pump.guest_received == pump.h2g);
  std::cout << "daemon CPU while delivering 1 MiB: "
            << std::chrono::duration_cast<std::chrono::milliseconds>(cpu).count() << " ms\n";
}

}  // namespace
}  // namespace vusim::vsock_test
