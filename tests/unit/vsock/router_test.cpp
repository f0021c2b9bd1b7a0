// vsock::Router: routes between sibling VMs by group, and the table of sibling connections
// whose other ends are reset when a VM goes away or stops sharing a group.
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <map>
#include <optional>
#include <set>

#include "vsock/router.hpp"

namespace vsock {
namespace {

using Refusal = Router::Refusal;

struct Tag : Router::Endpoint {
  explicit Tag(std::uint64_t c) : cid(c) {}
  std::uint64_t cid;
};

Header packet(Op op, std::uint64_t src_cid, std::uint32_t src_port, std::uint64_t dst_cid, std::uint32_t dst_port,
              Type type = Type::stream) {
  Header h;
  h.src = {src_cid, src_port};
  h.dst = {dst_cid, dst_port};
  h.op = static_cast<std::uint16_t>(op);
  h.type = static_cast<std::uint16_t>(type);
  return h;
}

/// Three started VMs: 3 and 4 in g1, 5 in g2.
void three_vms(Router& r) {
  r.attach(3, {"g1"}, std::make_shared<Tag>(3));
  r.attach(4, {"g1"}, std::make_shared<Tag>(4));
  r.attach(5, {"g2"}, std::make_shared<Tag>(5));
  for (std::uint64_t cid : {3, 4, 5}) r.set_started(cid, true);
}

std::uint64_t dest(const boost::system::result<std::shared_ptr<Router::Endpoint>, Refusal>& route) {
  return static_cast<const Tag&>(**route).cid;
}

/// Why `p` was refused; nothing if it was routed.
std::optional<Refusal> refusal_of(Router& r, const Header& p) {
  auto route = r.route(p);
  if (route) return std::nullopt;
  return route.error();
}

TEST(Router, RoutesWithinAGroupAndRefusesAcross) {
  Router r;
  three_vms(r);
  auto to4 = r.route(packet(Op::request, 3, 1000, 4, 80));
  ASSERT_TRUE(to4);
  EXPECT_EQ(dest(to4), 4U);
  EXPECT_EQ(refusal_of(r, packet(Op::request, 3, 1000, 5, 80)), Refusal::no_shared_group);
  EXPECT_EQ(refusal_of(r, packet(Op::request, 3, 1000, 9, 80)), Refusal::unknown_cid);
}

TEST(Router, AVmWhoseGuestIsNotRunningIsRefused) {
  Router r;
  three_vms(r);
  r.set_started(4, false);
  EXPECT_EQ(refusal_of(r, packet(Op::request, 3, 1000, 4, 80)), Refusal::not_started);
}

TEST(Router, AVmDoesNotRouteToItself) {
  Router r;
  three_vms(r);
  EXPECT_EQ(refusal_of(r, packet(Op::request, 3, 1000, 3, 80)), Refusal::own_cid);
}

TEST(Router, AttachRefusesATakenCid) {
  Router r;
  three_vms(r);
  EXPECT_FALSE(r.attach(4, {"g1"}, std::make_shared<Tag>(4)));
}

TEST(Router, RequestOpensAndRstClosesAConnectionFromEitherSide) {
  Router r;
  three_vms(r);
  ASSERT_TRUE(r.route(packet(Op::request, 3, 1000, 4, 80)));
  ASSERT_TRUE(r.route(packet(Op::response, 4, 80, 3, 1000)));
  EXPECT_EQ(r.connection_count(3), 1U);
  EXPECT_EQ(r.connection_count(4), 1U);
  ASSERT_TRUE(r.route(packet(Op::rst, 4, 80, 3, 1000)));  // the other direction's RST
  EXPECT_EQ(r.connection_count(3), 0U);
  EXPECT_EQ(r.connection_count(4), 0U);
}

TEST(Router, DetachResetsTheOtherSideOnly) {
  Router r;
  three_vms(r);
  ASSERT_TRUE(r.route(packet(Op::request, 3, 1000, 4, 80, Type::seqpacket)));
  const auto resets = r.detach(4);
  ASSERT_EQ(resets.size(), 1U);
  EXPECT_EQ(resets[0].to, 3U);
  const Header& rst = resets[0].rst;
  EXPECT_TRUE(rst.is(Op::rst));
  EXPECT_EQ(rst.src, (Address{4, 80}));
  EXPECT_EQ(rst.dst, (Address{3, 1000}));
  EXPECT_EQ(rst.type, static_cast<std::uint16_t>(Type::seqpacket));
  EXPECT_EQ(r.connection_count(3), 0U);
  EXPECT_FALSE(r.route(packet(Op::rw, 3, 1000, 4, 80)));
}

TEST(Router, StoppingAGuestResetsItsConnectionsAndARestartRoutesAgain) {
  Router r;
  three_vms(r);
  ASSERT_TRUE(r.route(packet(Op::request, 4, 2000, 3, 90)));
  const auto resets = r.set_started(3, false);
  ASSERT_EQ(resets.size(), 1U);
  EXPECT_EQ(resets[0].to, 4U);
  r.set_started(3, true);
  EXPECT_TRUE(r.route(packet(Op::request, 4, 2001, 3, 90)));
}

TEST(Router, LeavingASharedGroupResetsBothEnds) {
  Router r;
  three_vms(r);
  ASSERT_TRUE(r.route(packet(Op::request, 3, 1000, 4, 80)));
  EXPECT_TRUE(r.set_groups(3, {"g1", "g2"}).empty()) << "still shares g1 with 4";
  ASSERT_TRUE(r.route(packet(Op::request, 3, 1001, 5, 80)));
  const auto resets = r.set_groups(3, {"g2"});
  ASSERT_EQ(resets.size(), 2U);
  std::set<std::uint64_t> told;
  for (const auto& reset : resets) told.insert(reset.to);
  EXPECT_EQ(told, (std::set<std::uint64_t>{3, 4}));
  EXPECT_EQ(r.connection_count(5), 1U) << "the connection to 5 still shares g2";
}

TEST(Router, SiblingConnectionsAreCappedPerVm) {
  Router r(2);
  r.attach(3, {"g"}, std::make_shared<Tag>(3));
  r.attach(4, {"g"}, std::make_shared<Tag>(4));
  r.set_started(3, true);
  r.set_started(4, true);
  ASSERT_TRUE(r.route(packet(Op::request, 3, 1, 4, 80)));
  ASSERT_TRUE(r.route(packet(Op::request, 3, 2, 4, 80)));
  EXPECT_EQ(refusal_of(r, packet(Op::request, 3, 3, 4, 80)), Refusal::connection_limit);
  ASSERT_TRUE(r.route(packet(Op::rst, 3, 1, 4, 80)));
  EXPECT_TRUE(r.route(packet(Op::request, 3, 3, 4, 80)));
}

// Random attach / detach / start / stop / group changes / packets over 6 CIDs and 3 groups,
// against a model: a packet is routed exactly when both VMs are attached, the destination is
// started and they share a group; the table holds exactly the REQUESTs routed and not yet
// closed by an RST or a reset; every reset goes to an attached VM, never to the one that
// departed, and names a connection that was open.
RC_GTEST_PROP(RouterProperties, RoutesExactlyWithinGroupsAndResetsEveryDeadConnection, ()) {
  const std::vector<std::string> all_groups = {"a", "b", "c"};
  Router r;
  struct ModelVm {
    Router::Groups groups;
    bool started = false;
  };
  std::map<std::uint64_t, ModelVm> vms;
  std::set<std::tuple<std::uint64_t, std::uint32_t, std::uint64_t, std::uint32_t>> open;  // low, high ends
  auto shares = [&](std::uint64_t a, std::uint64_t b) {
    const auto& ga = vms.at(a).groups;
    const auto& gb = vms.at(b).groups;
    return std::any_of(ga.begin(), ga.end(), [&](const auto& g) { return gb.contains(g); });
  };
  auto norm = [](std::uint64_t c1, std::uint32_t p1, std::uint64_t c2, std::uint32_t p2) {
    return std::tie(c1, p1) < std::tie(c2, p2) ? std::tuple{c1, p1, c2, p2} : std::tuple{c2, p2, c1, p1};
  };
  auto gen_groups = [&] {
    Router::Groups g;
    for (const auto& name : all_groups) {
      if (*rc::gen::inRange(0, 3) == 0) g.insert(name);
    }
    return g;
  };
  // A change that kills the connections `dies` selects: the router must send exactly one RST
  // per end that is not on the departed VM, each to an attached VM, each naming a
  // connection that was open.
  auto expect_killed = [&](auto dies, std::uint64_t departed, const std::vector<Router::Reset>& resets) {
    std::set<std::tuple<std::uint64_t, std::uint32_t, std::uint64_t, std::uint32_t>> dead;
    std::size_t expected = 0;
    for (const auto& k : open) {
      if (!dies(std::get<0>(k), std::get<2>(k))) continue;
      dead.insert(k);
      expected += (std::get<0>(k) != departed) + (std::get<2>(k) != departed);
    }
    RC_ASSERT(resets.size() == expected);
    for (const auto& reset : resets) {
      RC_ASSERT(reset.to != departed);
      RC_ASSERT(vms.contains(reset.to));
      RC_ASSERT(reset.rst.is(Op::rst));
      RC_ASSERT(reset.rst.dst.cid == reset.to);
      RC_ASSERT(dead.contains(norm(reset.rst.src.cid, reset.rst.src.port, reset.rst.dst.cid, reset.rst.dst.port)));
    }
    for (const auto& k : dead) open.erase(k);
  };
  auto involves = [](std::uint64_t cid) { return [cid](std::uint64_t a, std::uint64_t b) { return a == cid || b == cid; }; };

  const int steps = *rc::gen::inRange(1, 200);
  for (int step = 0; step < steps; ++step) {
    const std::uint64_t cid = *rc::gen::inRange<std::uint64_t>(3, 9);
    switch (*rc::gen::inRange(0, 6)) {
      case 0: {  // attach
        auto groups = gen_groups();
        const bool ok = r.attach(cid, groups, std::make_shared<Tag>(cid));
        RC_ASSERT(ok == !vms.contains(cid));
        if (ok) vms[cid] = ModelVm{groups};
        break;
      }
      case 1: {  // detach
        const auto resets = r.detach(cid);
        if (vms.contains(cid)) {
          expect_killed(involves(cid), cid, resets);
        } else {
          RC_ASSERT(resets.empty());
        }
        vms.erase(cid);
        break;
      }
      case 2: {  // start / stop
        const bool start = *rc::gen::arbitrary<bool>();
        const auto resets = r.set_started(cid, start);
        if (!vms.contains(cid) || start) {
          RC_ASSERT(resets.empty());
          if (vms.contains(cid)) vms[cid].started = true;
          break;
        }
        vms[cid].started = false;
        expect_killed(involves(cid), cid, resets);
        break;
      }
      case 3: {  // new groups
        auto groups = gen_groups();
        const auto resets = r.set_groups(cid, groups);
        if (!vms.contains(cid)) {
          RC_ASSERT(resets.empty());
          break;
        }
        vms[cid].groups = groups;
        expect_killed([&](std::uint64_t a, std::uint64_t b) { return (a == cid || b == cid) && !shares(a, b); }, 0,
                      resets);
        break;
      }
      default: {  // a packet
        const std::uint64_t dst = *rc::gen::inRange<std::uint64_t>(3, 9);
        const auto sport = *rc::gen::inRange<std::uint32_t>(1, 4);
        const auto dport = *rc::gen::inRange<std::uint32_t>(1, 4);
        const Op op = *rc::gen::element(Op::request, Op::response, Op::rw, Op::rst, Op::shutdown);
        const auto route = r.route(packet(op, cid, sport, dst, dport));
        const bool allowed =
            cid != dst && vms.contains(cid) && vms.contains(dst) && vms.at(dst).started && shares(cid, dst);
        RC_ASSERT(static_cast<bool>(route) == allowed);
        if (!allowed) break;
        RC_ASSERT(dest(route) == dst);
        const auto key = norm(cid, sport, dst, dport);
        if (op == Op::request) open.insert(key);
        if (op == Op::rst) open.erase(key);
        break;
      }
    }
    for (const auto& [cid_, vm] : vms) {
      const auto n = std::count_if(open.begin(), open.end(), [&](const auto& k) {
        return std::get<0>(k) == cid_ || std::get<2>(k) == cid_;
      });
      RC_ASSERT(r.connection_count(cid_) == static_cast<std::size_t>(n));
    }
  }
}

}  // namespace
}  // namespace vsock
