// Sibling VMs: two (or more) vsock devices attached to one vsock::Router, each served on its
// own backend thread as the daemon's worker threads would, each with its simulated guest.
// A guest connects to another VM's CID; the daemon relays every packet with its header as
// the sender wrote it, and credit runs end to end between the two guests.
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <rapidcheck.h>

#include "assert_ok.hpp"
#include "rc_require.hpp"
#include "virtio/le.hpp"
#include "vsock/router.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"

namespace vusim::vsock_test {
namespace {

using namespace vsock_guest;

/// A VM on `router` with CID `cid` in `groups`, booted, with rx buffers of `rx_buffer_size`.
std::unique_ptr<VsockVm> sibling(vsock::Router& router, std::uint64_t cid, std::set<std::string, std::less<>> groups,
                                 std::uint32_t rx_buffer_size = 4096) {
  auto vm = std::make_unique<VsockVm>(VmOptions{.cid = cid,
                                                .tweak = [groups](vsock::DeviceConfig& c) { c.groups = groups; },
                                                .rx_buffer_size = rx_buffer_size,
                                                .router = &router});
  EXPECT_OK(vm->boot());
  // QEMU sends the last start messages without waiting for a reply; a round trip makes sure
  // the device has taken them (its rx ring runs), so the VM is reachable before a sibling
  // connects. Connecting earlier is refused with RST, as it should be.
  EXPECT_OK(vm->frontend().get_features());
  return vm;
}

/// VMs 3 and 4 in the default group, on one router (which outlives them).
struct TwoSiblings {
  vsock::Router router;
  std::unique_ptr<VsockVm> a = sibling(router, 3, {"default"});
  std::unique_ptr<VsockVm> b = sibling(router, 4, {"default"});
};

/// Both ends of one sibling connection.
struct SiblingPair {
  Conn client;  ///< on the connecting VM
  Conn server;  ///< on the accepting VM
};

/// `from` connects to `to`:`port`; `to`'s guest accepts. Fails the test on anything else.
std::optional<SiblingPair> connect_siblings(VsockVm& from, VsockVm& to, std::uint32_t port, std::uint32_t src_port,
                                            std::uint16_t type = type_stream) {
  SiblingPair p{
      .client = Conn{.cid = from.options_.cid, .port = src_port, .peer_port = port, .peer_cid = to.options_.cid, .type = type},
      .server = Conn{.cid = to.options_.cid, .port = port, .peer_port = src_port, .peer_cid = from.options_.cid, .type = type}};
  EXPECT_OK(from.guest().send(p.client.make(op_request)));
  auto request = to.guest().next();
  EXPECT_OK(request);
  if (!request) return std::nullopt;
  EXPECT_EQ(request->op, op_request) << describe(*request);
  EXPECT_TRUE(p.server.matches(*request)) << "relayed with another header: " << describe(*request);
  EXPECT_OK(p.server.on_packet(*request));
  EXPECT_OK(to.guest().send(p.server.make(op_response)));
  auto response = guest_expect(from.guest(), p.client);
  EXPECT_OK(response);
  if (!response) return std::nullopt;
  EXPECT_EQ(response->op, op_response) << describe(*response);
  return p;
}

/// `conn` connects from `vm` and is refused with RST.
void expect_refused(VsockVm& vm, Conn& conn) {
  ASSERT_OK(vm.guest().send(conn.make(op_request)));
  auto answer = guest_expect(vm.guest(), conn);
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_rst) << describe(*answer);
}

TEST(VsockSiblings, TwoVmsExchangeDataBothWaysWithCreditEndToEnd) {
  TwoSiblings vms;
  auto& [router, a, b] = vms;
  auto pair = connect_siblings(*a, *b, 5000, 40000);
  ASSERT_TRUE(pair);
  // Rounds of 192 KiB each way, within the receiving guest's 256 KiB window; the second
  // round and later need the CREDIT_UPDATEs of the first, which travel through the router.
  for (std::uint64_t round = 0; round < 4; ++round) {
    SCOPED_TRACE(fmt::format("round {}", round));
    const auto a_to_b = pattern(192 * 1024, 10 + round);
    ASSERT_OK(guest_send(a->guest(), pair->client, a_to_b, 0, max_payload));
    auto got_b = guest_receive(b->guest(), pair->server, a_to_b.size());
    ASSERT_OK(got_b);
    EXPECT_TRUE(*got_b == a_to_b) << "bytes changed on the way from VM 3 to VM 4";
    const auto b_to_a = pattern(192 * 1024, 20 + round);
    ASSERT_OK(guest_send(b->guest(), pair->server, b_to_a, 0, max_payload));
    auto got_a = guest_receive(a->guest(), pair->client, b_to_a.size());
    ASSERT_OK(got_a);
    EXPECT_TRUE(*got_a == b_to_a) << "bytes changed on the way from VM 4 to VM 3";
  }
  EXPECT_EQ(router.connection_count(3), 1U);
  // The guest closes: its RST reaches the other guest and the router forgets the connection.
  ASSERT_OK(a->guest().send(pair->client.make(op_rst)));
  auto rst = guest_expect(b->guest(), pair->server);
  ASSERT_OK(rst);
  EXPECT_EQ(rst->op, op_rst) << describe(*rst);
  EXPECT_EQ(router.connection_count(3), 0U);
}

TEST(VsockSiblings, PayloadsAreCutToTheReceiversRxBuffers) {
  vsock::Router router;
  auto a = sibling(router, 3, {"default"});
  auto b = sibling(router, 4, {"default"}, 1024);
  auto pair = connect_siblings(*a, *b, 5001, 40001);
  ASSERT_TRUE(pair);
  const auto data = pattern(60 * 1024, 3);
  ASSERT_OK(guest_send(a->guest(), pair->client, data, 0, max_payload));  // one 60 KiB packet
  auto got = guest_receive(b->guest(), pair->server, data.size());
  ASSERT_OK(got);
  EXPECT_TRUE(*got == data);
}

TEST(VsockSiblings, SeqpacketMessagesKeepTheirBoundaries) {
  TwoSiblings vms;
  auto& [router, a, b] = vms;
  auto pair = connect_siblings(*a, *b, 5002, 40002, type_seqpacket);
  ASSERT_TRUE(pair);
  // One 10 KiB message in one packet: the 4 KiB rx buffers get fragments, EOM on the last.
  const auto message = pattern(10 * 1024, 4);
  ASSERT_OK(a->guest().send(pair->client.make(op_rw, message, flag_eom), linux_paged(message.size())));
  std::vector<std::byte> got;
  for (;;) {
    auto p = guest_expect(b->guest(), pair->server);
    ASSERT_OK(p);
    ASSERT_EQ(p->op, op_rw) << describe(*p);
    got.insert(got.end(), p->payload.begin(), p->payload.end());
    ASSERT_LE(got.size(), message.size());
    if ((p->flags & flag_eom) != 0) break;
  }
  EXPECT_TRUE(got == message) << "the message arrived cut or changed";
}

TEST(VsockSiblings, ConnectsThatCannotBeRoutedAreResetAtOnce) {
  vsock::Router router;
  auto a = sibling(router, 3, {"g1"});
  auto b = sibling(router, 4, {"g1"});
  auto c = sibling(router, 5, {"g2"});
  for (std::uint64_t dst : {5u, 9u}) {  // another group; no such VM
    SCOPED_TRACE(fmt::format("connect to CID {}", dst));
    Conn conn{.cid = 3, .port = 41000, .peer_port = 80, .peer_cid = dst};
    expect_refused(*a, conn);
  }
  // The guest of the other group got nothing: a relay would have been handed to its
  // backend thread before the RST was written, and one round trip there lets it finish.
  c->backend.on_backend([] { return 0; });
  EXPECT_EQ(c->guest().rx().device_used_idx(), 0U);
}

TEST(VsockSiblings, SpoofedSourceCidIsNotRelayed) {
  TwoSiblings vms;
  auto& [router, a, b] = vms;
  Conn liar{.cid = 5, .port = 41000, .peer_port = 80, .peer_cid = 4};  // VM 3 claims CID 5
  ASSERT_OK(a->guest().send(liar.make(op_request)));
  // A packet that is relayed arrives before one sent after it: the honest connect goes
  // through, and B's first packet is its REQUEST, not the spoofed one.
  auto pair = connect_siblings(*a, *b, 5003, 40003);
  ASSERT_TRUE(pair);
}

TEST(VsockSiblings, AVmThatGoesAwayResetsItsSiblingConnections) {
  TwoSiblings vms;
  auto& [router, a, b] = vms;
  auto pair = connect_siblings(*a, *b, 5004, 40004);
  ASSERT_TRUE(pair);
  b.reset();  // the daemon closes VM 4 (removed, or its QEMU went away)
  auto rst = guest_expect(a->guest(), pair->client);
  ASSERT_OK(rst);
  EXPECT_EQ(rst->op, op_rst) << describe(*rst);
  Conn again{.cid = 3, .port = 40005, .peer_port = 5004, .peer_cid = 4};
  expect_refused(*a, again);
}

TEST(VsockSiblings, ChangingGroupsResetsOnlyTheConnectionsAcrossARemovedGroup) {
  // VM 4 is in g1 (with VM 3) and g2 (with VM 5), and leaves g1 at run time (`ctl groups`).
  vsock::Router router;
  auto a = sibling(router, 3, {"g1"});
  auto b = sibling(router, 4, {"g1", "g2"});
  auto c = sibling(router, 5, {"g2"});
  auto ab = connect_siblings(*a, *b, 5006, 40008);
  ASSERT_TRUE(ab);
  auto bc = connect_siblings(*b, *c, 5007, 40009);
  ASSERT_TRUE(bc);
  const auto data = pattern(1000, 6);
  ASSERT_OK(guest_send(a->guest(), ab->client, data));
  ASSERT_OK(guest_receive(b->guest(), ab->server, data.size()));
  // The router counts what it relayed, per connection and direction.
  const auto seen = router.connections(3);
  ASSERT_EQ(seen.size(), 1U);
  EXPECT_EQ(seen[0].peer.cid, 4U);
  EXPECT_EQ(seen[0].sent.bytes, data.size());

  b->backend.on_backend([&] {
    b->backend.device().set_groups({"g2"});
    return 0;
  });
  // Both ends of the connection across g1 hear RST, as if the other end had closed.
  auto rst = guest_expect(a->guest(), ab->client);
  ASSERT_OK(rst);
  EXPECT_EQ(rst->op, op_rst) << describe(*rst);
  rst = guest_expect(b->guest(), ab->server);
  ASSERT_OK(rst);
  EXPECT_EQ(rst->op, op_rst) << describe(*rst);
  EXPECT_EQ(router.connection_count(3), 0U);
  EXPECT_EQ(router.connection_count(5), 1U);
  // The connection within g2 goes on.
  ASSERT_OK(guest_send(b->guest(), bc->client, data));
  auto got = guest_receive(c->guest(), bc->server, data.size());
  ASSERT_OK(got);
  EXPECT_TRUE(*got == data);
  // A new connect across the removed group is refused at once, and counted as such.
  Conn again{.cid = 3, .port = 40010, .peer_port = 5006, .peer_cid = 4};
  expect_refused(*a, again);
  EXPECT_EQ(a->backend.on_backend([&] { return a->backend.device().counters().dropped(vsock::Drop::no_shared_group); }),
            1U);
}

TEST(VsockSiblings, AVmWhoseRxRingBrokeHoldsUpNoSender) {
  // VM 4's guest breaks its rx ring (avail->idx far ahead of what it posted). The daemon
  // stops using that ring; VM 3's packet to it must not hold VM 3's tx queue: the
  // connection is reset and VM 3 goes on talking to others.
  TwoSiblings vms;
  auto& [router, a, b] = vms;
  auto pair = connect_siblings(*a, *b, 5005, 40006);
  ASSERT_TRUE(pair);
  auto* avail = reinterpret_cast<std::byte*>(b->guest().rx().vring_addr().avail_user_addr);
  virtio::Le16 far_ahead;
  far_ahead = static_cast<std::uint16_t>(b->guest().rx().avail_idx() + 1000);
  std::memcpy(avail + 2, &far_ahead, sizeof far_ahead);  // struct virtq_avail { le16 flags; le16 idx; ... }
  ASSERT_OK(a->guest().send(pair->client.make(op_rw, pattern(1000, 5))));
  auto rst = guest_expect(a->guest(), pair->client);
  ASSERT_OK(rst);
  EXPECT_EQ(rst->op, op_rst) << describe(*rst);
  EXPECT_TRUE(test::wait_readable(b->dev.error_notifiers[0].get(), 5s)) << "the broken rx ring was not reported";
  // VM 3's tx goes on: a connect to the host is answered (RST: nobody listens there).
  ASSERT_OK(a->guest().drain_tx());
  Conn to_host{.cid = 3, .port = 40007, .peer_port = 7777};
  expect_refused(*a, to_host);
}

TEST(VsockSiblings, SixtyFourVmsExchangeChecksummedDataPairwise) {
  // 64 VMs on one router, each on its own backend thread: VM 2k and VM 2k+1 open a
  // connection and exchange 64 KiB each way, all connections open at once. Every pair's
  // bytes arrive intact and nothing crosses to a VM of another pair.
  constexpr std::uint64_t vm_count = 64;
  vsock::Router router;
  std::vector<std::unique_ptr<VsockVm>> vms;
  for (std::uint64_t i = 0; i < vm_count; ++i) {
    auto vm = std::make_unique<VsockVm>(VmOptions{.cid = 3 + i, .region_mib = 2, .router = &router});
    ASSERT_OK(vm->boot());
    ASSERT_OK(vm->frontend().get_features());  // its rx ring runs (see sibling())
    vms.push_back(std::move(vm));
  }
  std::vector<SiblingPair> pairs;
  for (std::uint64_t k = 0; k < vm_count / 2; ++k) {
    auto pair = connect_siblings(*vms[2 * k], *vms[2 * k + 1], 6000, static_cast<std::uint32_t>(50000 + k));
    ASSERT_TRUE(pair) << "pair " << k;
    pairs.push_back(*pair);
  }
  for (std::uint64_t k = 0; k < vm_count / 2; ++k) {
    SCOPED_TRACE(fmt::format("pair {} (CIDs {} and {})", k, 3 + 2 * k, 4 + 2 * k));
    VsockVm& a = *vms[2 * k];
    VsockVm& b = *vms[2 * k + 1];
    const auto a_to_b = pattern(64 * 1024, 100 + k);
    const auto b_to_a = pattern(64 * 1024, 200 + k);
    ASSERT_OK(guest_send(a.guest(), pairs[k].client, a_to_b));
    auto got_b = guest_receive(b.guest(), pairs[k].server, a_to_b.size());
    ASSERT_OK(got_b);
    EXPECT_EQ(checksum(*got_b), checksum(a_to_b));
    ASSERT_OK(guest_send(b.guest(), pairs[k].server, b_to_a));
    auto got_a = guest_receive(a.guest(), pairs[k].client, b_to_a.size());
    ASSERT_OK(got_a);
    EXPECT_EQ(checksum(*got_a), checksum(b_to_a));
  }
  for (std::uint64_t i = 0; i < vm_count; ++i) EXPECT_EQ(router.connection_count(3 + i), 1U) << "CID " << 3 + i;
}

// Random traffic between four VMs in overlapping groups, against a model of the router:
// every packet whose source is genuine and whose destination shares a group with the
// sender arrives at that destination with its header as sent, its payload whole and in
// order (cut into fragments only); every other genuine packet is answered with RST to the
// sender; a spoofed packet reaches nobody; and nothing else arrives anywhere.
TEST(VsockSiblings, RandomTrafficGoesExactlyWhereTheGroupsAllowAndArrivesWhole) {
  vsock::Router router;
  const std::vector<std::pair<std::uint64_t, std::set<std::string, std::less<>>>> layout = {
      {3, {"g1"}}, {4, {"g1"}}, {5, {"g1", "g2"}}, {6, {"g2"}}};
  std::map<std::uint64_t, std::unique_ptr<VsockVm>> vms;
  for (const auto& [cid, groups] : layout) vms[cid] = sibling(router, cid, groups);
  auto shares = [&](std::uint64_t a, std::uint64_t b) { return router.reachable(a, b); };

  struct Flow {  // what one receiver expects from one sender
    std::vector<std::byte> bytes;           // RW payloads, concatenated
    std::vector<std::uint16_t> control;     // other ops, in order
  };
  std::uint32_t next_port = 1;
  const bool ok = rc::check("sibling traffic", [&] {
    std::map<std::pair<std::uint64_t, std::uint64_t>, Flow> expected;  // (receiver, sender)
    std::map<std::uint64_t, std::size_t> expected_rsts;                // at each sender
    const auto count = *rc::gen::inRange(1, 10);
    for (int i = 0; i < count; ++i) {
      const std::uint64_t from = *rc::gen::element<std::uint64_t>(3, 4, 5, 6);
      const std::uint64_t to = *rc::gen::element<std::uint64_t>(3, 4, 5, 6, 9);
      const bool spoof = *rc::gen::inRange(0, 5) == 0;
      const std::uint16_t op = *rc::gen::element(op_rw, op_rw, op_rw, op_request, op_shutdown, op_credit_update);
      Packet p;
      p.src_cid = spoof ? (from == 6 ? 3 : from + 1) : from;
      p.dst_cid = to;
      p.src_port = next_port++;
      p.dst_port = *rc::gen::inRange<std::uint32_t>(1, 1000);
      p.type = type_stream;
      p.op = op;
      p.buf_alloc = *rc::gen::arbitrary<std::uint32_t>();
      p.fwd_cnt = *rc::gen::arbitrary<std::uint32_t>();
      if (op == op_rw) p.payload = pattern(*rc::gen::inRange<std::size_t>(1, 16 * 1024), next_port);
      p.len = static_cast<std::uint32_t>(p.payload.size());
      test::require(vms.at(from)->guest().send(p, rotating_shape(p.payload.size(), next_port)), "send");
      if (spoof) continue;
      if (to != from && vms.contains(to) && shares(from, to)) {  // to itself: RST too
        Flow& flow = expected[{to, from}];
        if (op == op_rw) {
          flow.bytes.insert(flow.bytes.end(), p.payload.begin(), p.payload.end());
        } else {
          flow.control.push_back(op);
        }
      } else {
        ++expected_rsts[from];
      }
    }
    // Each VM takes what the model says it must get; anything else fails.
    for (auto& [cid, vm] : vms) {
      std::map<std::uint64_t, Flow> got;
      std::size_t rsts = 0;
      auto complete = [&] {
        if (rsts != expected_rsts[cid]) return false;
        for (const auto& [key, flow] : expected) {
          if (key.first != cid) continue;
          const Flow& g = got[key.second];
          if (g.bytes.size() != flow.bytes.size() || g.control.size() != flow.control.size()) return false;
        }
        return true;
      };
      while (!complete()) {
        const auto p = test::require(vm->guest().next(5s), fmt::format("CID {} receives", cid));
        RC_ASSERT(p.dst_cid == cid);
        if (p.op == op_rst) {  // no guest sends one here: the daemon's answer to an unroutable packet
          ++rsts;
          continue;
        }
        RC_ASSERT(vms.contains(p.src_cid));
        RC_ASSERT(shares(cid, p.src_cid));
        Flow& g = got[p.src_cid];
        if (p.op == op_rw) {
          g.bytes.insert(g.bytes.end(), p.payload.begin(), p.payload.end());
        } else {
          g.control.push_back(p.op);
        }
        RC_ASSERT(g.bytes.size() <= expected[std::make_pair(cid, p.src_cid)].bytes.size());
      }
      for (const auto& [sender, flow] : got) {
        RC_ASSERT(flow.bytes == expected[std::make_pair(cid, sender)].bytes);
        RC_ASSERT(flow.control == expected[std::make_pair(cid, sender)].control);
      }
    }
    // Nothing else is on its way: every sender's tx chains came back (so every relay was
    // copied), one round trip on every backend, and no guest has anything left.
    for (auto& [cid, vm] : vms) test::require(vm->guest().drain_tx(), "tx chains back");
    for (auto& [cid, vm] : vms) {
      vm->backend.on_backend([] { return 0; });
      test::require(vm->guest().collect(), "collect");
      RC_ASSERT(vm->guest().inbox().empty());
    }
  });
  EXPECT_TRUE(ok);
}

}  // namespace
}  // namespace vusim::vsock_test
