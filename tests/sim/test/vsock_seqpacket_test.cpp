// SOCK_SEQPACKET over the vsock device (VIRTIO_VSOCK_F_SEQPACKET, virtio 5.10.6.4.1): the
// guest's messages go out as RW fragments whose last one carries EOM; the host side is an
// AF_UNIX SOCK_SEQPACKET socket, where one send is one message. Boundaries must survive
// both ways, guest-initiated (<uds>_<port> listener) and host-initiated (<uds>_seqpacket and
// a CONNECT message).
#include <poll.h>  // POLLIN
#include <sys/socket.h>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "assert_ok.hpp"
#include "vhostuser/wire.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"

namespace vusim::vsock_test {
namespace {

using namespace vsock_guest;

constexpr std::uint32_t host_port_min = 1u << 30;
constexpr std::uint32_t host_port_end = 1u << 31;

struct Message {
  std::size_t size;
  std::size_t fragment;  ///< the guest cuts its message into fragments of this size
};

/// 1 byte, 4 KiB in two fragments, 60 KiB in 4 KiB fragments, and a last 1-byte message so
/// that a lost boundary cannot hide at the end.
const std::vector<Message> messages = {{1, 1}, {4096, 2048}, {60 * 1024, 4096}, {1, 1}};

/// The guest sends each message as EOM-terminated fragments; the host must receive each one
/// whole, as one message.
void guest_to_host(VsockVm& vm, Conn& conn, int host, std::uint64_t seed) {
  for (std::size_t i = 0; i < messages.size(); ++i) {
    SCOPED_TRACE(fmt::format("guest -> host message {} ({} bytes)", i, messages[i].size));
    const auto m = pattern(messages[i].size, seed + i);
    ASSERT_OK(guest_send(vm.guest(), conn, m, flag_eom, messages[i].fragment));
  }
  for (std::size_t i = 0; i < messages.size(); ++i) {
    SCOPED_TRACE(fmt::format("guest -> host message {} ({} bytes)", i, messages[i].size));
    auto got = recv_message(host);
    ASSERT_OK(got);
    EXPECT_EQ(got->size(), messages[i].size) << "message boundary lost";
    EXPECT_TRUE(*got == pattern(messages[i].size, seed + i));
  }
}

/// The host sends each message; the guest reassembles fragments up to EOM, consuming each
/// whole message and advertising it (Linux sends a CREDIT_UPDATE after every dequeue).
void host_to_guest(VsockVm& vm, Conn& conn, int host, std::uint64_t seed) {
  for (std::size_t i = 0; i < messages.size(); ++i) {
    ASSERT_OK(send_message(host, pattern(messages[i].size, seed + i)));
  }
  for (std::size_t i = 0; i < messages.size(); ++i) {
    SCOPED_TRACE(fmt::format("host -> guest message {} ({} bytes)", i, messages[i].size));
    std::vector<std::byte> m;
    std::size_t fragments = 0;
    for (;;) {
      auto p = guest_expect(vm.guest(), conn);
      ASSERT_OK(p);
      ASSERT_EQ(p->op, op_rw) << describe(*p);
      ++fragments;
      m.insert(m.end(), p->payload.begin(), p->payload.end());
      ASSERT_LE(m.size(), messages[i].size) << "fragments of two messages merged (EOM missing)";
      if ((p->flags & flag_eom) != 0) break;
    }
    EXPECT_EQ(m.size(), messages[i].size) << "message boundary lost";
    EXPECT_TRUE(m == pattern(messages[i].size, seed + i));
    // A 60 KiB message cannot fit one 4 KiB rx buffer: it must have come in fragments.
    EXPECT_GE(fragments, (messages[i].size + 4096 - header_size - 1) / (4096 - header_size));
    conn.consume(static_cast<std::uint32_t>(m.size()));
    ASSERT_OK(vm.guest().send(conn.make(op_credit_update)));
  }
}

TEST(VsockSeqpacket, GuestInitiatedKeepsMessageBoundariesBothWays) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  ASSERT_NE(vm.dev.guest_features & vhostuser::bit(feature_seqpacket), 0U) << "SEQPACKET not negotiated";
  auto e = establish(vm, 7000, 50000, 256 * 1024, SOCK_SEQPACKET);
  ASSERT_OK(e);
  guest_to_host(vm, e->conn, e->host.get(), 100);
  host_to_guest(vm, e->conn, e->host.get(), 200);
  // Again, after the credit of the first round was spent and returned.
  guest_to_host(vm, e->conn, e->host.get(), 300);
  host_to_guest(vm, e->conn, e->host.get(), 400);
}

TEST(VsockSeqpacket, HostInitiatedThroughTheSeqpacketSocket) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto host = connect_to(vm.backend.seqpacket_path(), SOCK_SEQPACKET);
  ASSERT_OK(host);
  ASSERT_OK(send_message(host->get(), as_bytes("CONNECT 1234\n")));
  auto request = vm.guest().next();
  ASSERT_OK(request);
  ASSERT_EQ(request->op, op_request) << describe(*request);
  EXPECT_EQ(request->type, type_seqpacket);
  EXPECT_EQ(request->dst_port, 1234U);
  EXPECT_EQ(request->src_cid, host_cid);
  EXPECT_GE(request->src_port, host_port_min);
  EXPECT_LT(request->src_port, host_port_end);
  Conn conn{.port = 1234, .peer_port = request->src_port, .type = type_seqpacket};
  ASSERT_OK(conn.on_packet(*request));
  ASSERT_OK(vm.guest().send(conn.make(op_response)));
  auto ok = recv_message(host->get());
  ASSERT_OK(ok);
  EXPECT_EQ(as_text(*ok), fmt::format("OK {}\n", request->src_port)) << "the answer is one message";
  host_to_guest(vm, conn, host->get(), 500);
  guest_to_host(vm, conn, host->get(), 600);
}

TEST(VsockSeqpacket, GuestShutdownBothEndsTheHostSocket) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 7001, 50001, 256 * 1024, SOCK_SEQPACKET);
  ASSERT_OK(e);
  ASSERT_OK(guest_send(vm.guest(), e->conn, as_bytes("last"), flag_eom));
  ASSERT_OK(vm.guest().send(e->conn.make(op_shutdown, {}, shutdown_rcv | shutdown_send)));
  auto rst = guest_expect(vm.guest(), e->conn);
  ASSERT_OK(rst);
  EXPECT_EQ(rst->op, op_rst) << describe(*rst);
  auto last = recv_message(e->host.get());
  ASSERT_OK(last);
  EXPECT_EQ(as_text(*last), "last");
  EXPECT_OK(expect_eof(e->host.get()));
}

TEST(VsockSeqpacket, ShutdownSendInTheMiddleOfAMessageDropsItAndEndsTheHostsInput) {
  // The guest stops sending after a fragment without EOM. The message can never be finished
  // (data after SHUTDOWN(SEND) is a reset), and a SEQPACKET reader must never see part of a
  // message: the host gets the whole messages before it, then EOF, and can still send.
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 7002, 50002, 256 * 1024, SOCK_SEQPACKET);
  ASSERT_OK(e);
  ASSERT_OK(guest_send(vm.guest(), e->conn, as_bytes("whole"), flag_eom));
  ASSERT_OK(vm.guest().send(e->conn.make(op_rw, as_bytes("unfinished"))));

  // While the message is unfinished nothing reaches the host, and the daemon does not spin
  // waiting for the socket to take bytes that cannot go yet.
  auto whole = recv_message(e->host.get());
  ASSERT_OK(whole);
  EXPECT_EQ(as_text(*whole), "whole");
  EXPECT_OK(vm.backend.expect_quiet(e->host.get(), POLLIN, 300ms, "part of a message reached the host"));

  ASSERT_OK(vm.guest().send(e->conn.make(op_shutdown, {}, shutdown_send)));
  {
    SCOPED_TRACE("the unfinished message was delivered, or the host never saw EOF");
    EXPECT_OK(expect_eof(e->host.get()));
  }

  ASSERT_OK(send_message(e->host.get(), as_bytes("reply")));
  auto reply = guest_expect(vm.guest(), e->conn);
  ASSERT_OK(reply);
  ASSERT_EQ(reply->op, op_rw) << describe(*reply);
  EXPECT_EQ(as_text(reply->payload), "reply");
  EXPECT_NE(reply->flags & flag_eom, 0U);
}

}  // namespace
}  // namespace vusim::vsock_test
