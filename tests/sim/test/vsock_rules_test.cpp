// What the vsock device answers to packets it cannot take (virtio 5.10.6.4 and Linux
// virtio_transport_common.c): RST for a packet of no connection, never an RST for an RST,
// RST for an unsupported socket type, nothing at all for a packet whose source CID is not the
// guest's. "Nothing" is shown with a marker: a later packet that does earn an RST must get
// the first answer, since the device handles tx in order.
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

/// An RW from guest port `port` to host port `peer` where no connection exists.
Packet stray(std::uint32_t port, std::uint32_t peer) {
  Conn c{.port = port, .peer_port = peer};
  return c.make(op_rw, pattern(10, port));
}

void expect_rst_for(const Packet& p, std::uint32_t guest_port, std::uint32_t host_port, std::uint16_t type) {
  EXPECT_EQ(p.op, op_rst) << describe(p);
  EXPECT_EQ(p.src_cid, host_cid) << describe(p);
  EXPECT_EQ(p.src_port, host_port) << describe(p);
  EXPECT_EQ(p.dst_port, guest_port) << describe(p);
  EXPECT_EQ(p.type, type) << describe(p);
  EXPECT_EQ(p.len, 0U) << describe(p);
}

TEST(VsockRstRules, PacketOfNoConnectionIsAnsweredWithRst) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  const std::uint16_t ops[] = {op_rw, op_shutdown, op_credit_update, op_credit_request, op_response, op_invalid, 9};
  for (std::size_t i = 0; i < std::size(ops); ++i) {
    SCOPED_TRACE(op_name(ops[i]));
    Conn c{.port = static_cast<std::uint32_t>(30000 + i), .peer_port = 6000};
    const Packet p = c.make(ops[i], ops[i] == op_rw ? pattern(10, i) : std::vector<std::byte>{},
                            ops[i] == op_shutdown ? shutdown_rcv | shutdown_send : 0);
    ASSERT_OK(vm.guest().send(p));
    auto answer = vm.guest().next();
    ASSERT_OK(answer);
    expect_rst_for(*answer, c.port, 6000, type_stream);
  }
}

TEST(VsockRstRules, RstOfNoConnectionGetsNoAnswer) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  Conn gone{.port = 31000, .peer_port = 6001};
  ASSERT_OK(vm.guest().send(gone.make(op_rst)));
  ASSERT_OK(vm.guest().send(stray(31001, 6001)));  // the marker
  auto answer = vm.guest().next();
  ASSERT_OK(answer);
  expect_rst_for(*answer, 31001, 6001, type_stream);
  ASSERT_OK(vm.guest().send(stray(31002, 6001)));
  answer = vm.guest().next();
  ASSERT_OK(answer);
  expect_rst_for(*answer, 31002, 6001, type_stream);
}

TEST(VsockRstRules, UnsupportedSocketTypeIsAnsweredWithRst) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  // A listener exists: the type is the only reason to refuse.
  auto listener = listen_at(vm.backend.port_path(6002));
  ASSERT_OK(listener);
  for (std::uint16_t type : {std::uint16_t{3}, std::uint16_t{0}, std::uint16_t{0xffff}}) {
    SCOPED_TRACE(fmt::format("type {}", type));
    Conn c{.port = static_cast<std::uint32_t>(31010 + type % 16), .peer_port = 6002, .type = type};
    ASSERT_OK(vm.guest().send(c.make(op_request)));
    auto answer = vm.guest().next();
    ASSERT_OK(answer);
    expect_rst_for(*answer, c.port, 6002, type);
  }
  auto none = accept_within(listener->get(), 0ms);
  EXPECT_FALSE(none) << "a connection of an unsupported type reached the host";
}

TEST(VsockRstRules, SeqpacketRequestWithoutTheFeatureIsAnsweredWithRst) {
  VmOptions options;
  options.model.driver_features &= ~vhostuser::bit(feature_seqpacket);
  VsockVm vm(options);
  ASSERT_OK(vm.boot());
  ASSERT_EQ(vm.dev.guest_features & vhostuser::bit(feature_seqpacket), 0U);
  auto listener = listen_at(vm.backend.port_path(6003), SOCK_SEQPACKET);
  ASSERT_OK(listener);
  Conn c{.port = 31030, .peer_port = 6003, .type = type_seqpacket};
  auto answer = guest_connect(vm.guest(), c);
  ASSERT_OK(answer);
  expect_rst_for(*answer, 31030, 6003, type_seqpacket);
  EXPECT_FALSE(accept_within(listener->get(), 0ms)) << "SEQPACKET connection without VIRTIO_VSOCK_F_SEQPACKET";
}

TEST(VsockRstRules, SpoofedSourceCidGetsNothingAndTheDeviceKeepsWorking) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto listener = listen_at(vm.backend.port_path(6004));
  ASSERT_OK(listener);
  // Another guest's CID, the host's, and ours with the reserved upper half set (5.10.4).
  for (std::uint64_t cid : {std::uint64_t{4}, host_cid, std::uint64_t{3} | (std::uint64_t{1} << 32)}) {
    Conn spoofed{.cid = cid, .port = 31040, .peer_port = 6004};
    ASSERT_OK(vm.guest().send(spoofed.make(op_request)));
    ASSERT_OK(vm.guest().send(spoofed.make(op_rw, pattern(10, 1))));
  }
  // Guest::collect fails on any packet addressed to another CID, so an RST sent back to the
  // spoofed address shows up here as an error rather than as the marker's answer.
  ASSERT_OK(vm.guest().send(stray(31041, 6999)));
  auto answer = vm.guest().next();
  ASSERT_OK(answer);
  expect_rst_for(*answer, 31041, 6999, type_stream);
  EXPECT_FALSE(accept_within(listener->get(), 0ms)) << "a spoofed REQUEST reached the host";
  EXPECT_EQ(vm.backend.connection_count(), 0U);

  // The device goes on serving the genuine guest.
  Conn real{.port = 31042, .peer_port = 6004};
  auto response = guest_connect(vm.guest(), real);
  ASSERT_OK(response);
  ASSERT_EQ(response->op, op_response) << describe(*response);
  auto host = accept_within(listener->get());
  ASSERT_OK(host);
  ASSERT_OK(guest_send(vm.guest(), real, as_bytes("genuine")));
  auto got = read_exact(host->get(), 7);
  ASSERT_OK(got);
  EXPECT_EQ(as_text(*got), "genuine");
}

TEST(VsockRstRules, GuestRstClosesTheHostSocketAndForgetsTheConnection) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 6005, 31050);
  ASSERT_OK(e);
  ASSERT_OK(vm.guest().send(e->conn.make(op_rst)));
  EXPECT_OK(expect_eof(e->host.get()));
  // The connection is gone: its next packet is one of no connection.
  ASSERT_OK(vm.guest().send(e->conn.make(op_rw, pattern(10, 2))));
  auto answer = vm.guest().next();
  ASSERT_OK(answer);
  expect_rst_for(*answer, 31050, 6005, type_stream);
  EXPECT_EQ(vm.backend.connection_count(), 0U);
}

/// A malformed packet on an open connection is answered with RST, which ends the connection
/// for the guest (Linux closes the socket on RST); the host application must see the end
/// too, not keep a half-dead connection open.
void check_malformed_on_open_connection(const std::function<void(VsockVm&, Conn&)>& send_bad) {
  VsockVm vm;
  ASSERT_OK(vm.boot());
  auto e = establish(vm, 6006, 31060);
  ASSERT_OK(e);
  send_bad(vm, e->conn);
  auto answer = guest_expect(vm.guest(), e->conn);
  ASSERT_OK(answer);
  expect_rst_for(*answer, 31060, 6006, type_stream);
  {
    const auto eof = expect_eof(e->host.get(), 5s);
    EXPECT_TRUE(eof) << eof.error() << ": " << "the guest was told the connection is reset; the host was not";
  }
}

TEST(VsockRstRules, PayloadLengthBeyondTheChainResetsBothEnds) {
  check_malformed_on_open_connection([](VsockVm& vm, Conn& conn) {
    Packet p = conn.make(op_rw, pattern(10, 3));
    conn.tx_cnt -= p.len;
    p.len = 1000;  // the chain holds 10 bytes of payload
    ASSERT_OK(vm.guest().send(p));
  });
}

TEST(VsockRstRules, PayloadOver64KiBResetsBothEnds) {
  check_malformed_on_open_connection([](VsockVm& vm, Conn& conn) {
    const auto big = pattern(64 * 1024 + 1, 4);
    ASSERT_OK(vm.guest().send(conn.make(op_rw, big), linux_paged(big.size())));
  });
}

}  // namespace
}  // namespace vusim::vsock_test
