// Credit invariants under random interleavings (virtio spec 5.10.6.3).
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include "vsock/credit.hpp"

namespace vsock {
namespace {

// The daemon sends host -> guest data only within the guest's credit, whatever order the
// guest's updates arrive in; the guest (modelled here) consumes at random.
RC_GTEST_PROP(CreditProperties, NeverSendsBeyondThePeersCredit, ()) {
  const auto guest_buf = *rc::gen::inRange<std::uint32_t>(1, 1 << 20);
  Credit c(64 * 1024);
  c.on_peer_credit(guest_buf, 0);
  std::uint32_t guest_fwd = 0;       // what the guest consumed
  std::uint64_t sent = 0, consumed = 0;
  const auto steps = *rc::gen::inRange(1, 200);
  for (int i = 0; i < steps; ++i) {
    if (*rc::gen::arbitrary<bool>()) {
      const std::uint32_t want = *rc::gen::inRange<std::uint32_t>(0, 70000);
      const std::uint32_t n = std::min(want, c.peer_free());
      c.on_sent(n);
      sent += n;
    } else {
      const auto n = *rc::gen::inRange<std::uint64_t>(0, sent - consumed + 1);
      consumed += n;
      guest_fwd += static_cast<std::uint32_t>(n);
      c.on_peer_credit(guest_buf, guest_fwd);
    }
    RC_ASSERT(sent - consumed <= guest_buf);  // the guest's buffer never overflows
    RC_ASSERT(c.peer_free() == guest_buf - (sent - consumed));
  }
}

// Guest -> host: fwd_cnt only moves forward, bytes are conserved, and an update is always
// due before the guest could run out of credit while the daemon has forwarded bytes.
RC_GTEST_PROP(CreditProperties, ReceiverSideIsMonotonicAndNeverStalls, ()) {
  const auto buf = *rc::gen::inRange<std::uint32_t>(4096, 1 << 20);
  Credit c(buf);
  std::uint32_t guest_view_fwd = 0;  // last fwd_cnt the guest saw
  std::uint64_t received = 0, forwarded = 0;
  const auto steps = *rc::gen::inRange(1, 300);
  for (int i = 0; i < steps; ++i) {
    const std::uint32_t before = c.fwd_cnt();
    switch (*rc::gen::inRange(0, 3)) {
      case 0: {  // the guest sends within the credit it knows of
        const std::uint32_t guest_free = buf - static_cast<std::uint32_t>(received - guest_view_fwd);
        const auto n = *rc::gen::inRange<std::uint32_t>(0, guest_free + 1);
        RC_ASSERT(c.fits(n));
        c.on_received(n);
        received += n;
        break;
      }
      case 1: {  // the host socket takes some
        const auto n = *rc::gen::inRange<std::uint64_t>(0, received - forwarded + 1);
        c.on_forwarded(static_cast<std::uint32_t>(n));
        forwarded += n;
        break;
      }
      default:  // the daemon sends a packet if its policy says so (any packet advertises)
        if (c.update_due()) {
          c.on_advertised();
          guest_view_fwd = c.fwd_cnt();
        }
    }
    RC_ASSERT(static_cast<std::uint32_t>(c.fwd_cnt() - before) <= buf);  // monotonic mod 2^32
    RC_ASSERT(c.buffered() == received - forwarded);
    // No stall: if the guest has no credit left but bytes were forwarded since it last
    // heard, an update is due.
    const bool guest_starved = received - guest_view_fwd == buf;
    if (guest_starved && c.fwd_cnt() != guest_view_fwd) RC_ASSERT(c.update_due());
  }
}

TEST(Credit, HostileFwdCntGivesNoCredit) {
  Credit c(4096);
  c.on_peer_credit(1000, 0);
  c.on_sent(500);
  c.on_peer_credit(1000, 900);  // claims to have consumed more than was ever sent
  EXPECT_EQ(c.peer_free(), 0u);
}

TEST(Credit, BeyondCreditDoesNotFit) {
  Credit c(4096);
  EXPECT_TRUE(c.fits(4096));
  c.on_received(4000);
  EXPECT_FALSE(c.fits(97));
  c.on_forwarded(1000);
  EXPECT_TRUE(c.fits(1096));
}

}  // namespace
}  // namespace vsock
