// The session state machine against the rules of vhost-user.rst, message by message.
#include <gtest/gtest.h>

#include <algorithm>

#include "session_fixture.hpp"

namespace vhostuser::testing {
namespace {

constexpr std::uint64_t bit30 = bit(protocol_features_bit);
constexpr std::uint64_t version_1 = bit(virtio::feature::version_1);

class SessionTest : public ::testing::Test, public SessionFixture {
 protected:
  bool saw(const std::string& event) const {
    return std::find(device.events.begin(), device.events.end(), event) != device.events.end();
  }
  std::size_t count(const std::string& event) const {
    return static_cast<std::size_t>(std::count(device.events.begin(), device.events.end(), event));
  }
  /// QEMU 7.2 up to the rings: protocol features, owner, features with bit 30, memory.
  void handshake(std::uint64_t features = version_1 | bit30) {
    ASSERT_OK(send(raw(Request::set_protocol_features, session.offered_protocol_features())));
    ASSERT_OK(send(empty(Request::set_owner)));
    ASSERT_OK(send(raw(Request::set_features, features)));
    set_mem_table();
  }
  void enable(std::uint16_t q, std::uint32_t on) { ASSERT_OK(send(raw(Request::set_vring_enable, VringState{q, on}))); }
};

TEST_F(SessionTest, OffersLayerAndDeviceFeatures) {
  auto reply = send(empty(Request::get_features));
  ASSERT_TRUE(reply);
  const std::uint64_t offered = u64_of(*reply);
  for (unsigned b : {virtio::feature::version_1, virtio::feature::event_idx, virtio::feature::indirect_desc,
                     virtio::feature::notify_on_empty, protocol_features_bit, 0u}) {
    EXPECT_NE(offered & bit(b), 0u) << "bit " << b;
  }
  reply = send(empty(Request::get_protocol_features));
  ASSERT_TRUE(reply);
  const std::uint64_t protocol = u64_of(*reply);
  for (auto f : {ProtocolFeature::mq, ProtocolFeature::reply_ack, ProtocolFeature::config,
                 ProtocolFeature::configure_mem_slots, ProtocolFeature::status, ProtocolFeature::reset_device}) {
    EXPECT_NE(protocol & bit(f), 0u) << static_cast<unsigned>(f);
  }
}

TEST_F(SessionTest, UnofferedFeatureBitsAreRefused) {
  EXPECT_EQ(send(raw(Request::set_features, bit(40))).error(), Errc::feature_not_offered);
  auto nack = send(raw(Request::set_features, bit(40), {}, header_flags::need_reply));
  ASSERT_TRUE(nack);
  EXPECT_NE(u64_of(*nack), 0u);
  EXPECT_EQ(send(raw(Request::set_protocol_features, bit(ProtocolFeature::log_shmfd))).error(),
            Errc::feature_not_offered);
}

TEST_F(SessionTest, NeedReplyGetsAnAck) {
  auto ack = send(empty(Request::set_owner, header_flags::need_reply));
  ASSERT_TRUE(ack);
  ASSERT_EQ(ack->size(), sizeof(Header) + 8);
  EXPECT_EQ(load<Header>(*ack).flags, 0x5u);
  EXPECT_EQ(u64_of(*ack), 0u);
  auto nack = send(empty(Request::set_owner, header_flags::need_reply));  // second owner
  ASSERT_TRUE(nack);
  EXPECT_EQ(u64_of(*nack), 1u);
  // Without NEED_REPLY a successful ack-only request sends nothing back.
  auto none = send(raw(Request::set_vring_num, VringState{0, 64}));
  ASSERT_TRUE(none);
  EXPECT_TRUE(none->empty());
}

TEST_F(SessionTest, RequestsBehindUnnegotiatedFeaturesAreRefused) {
  EXPECT_EQ(send(empty(Request::get_queue_num)).error(), Errc::feature_not_negotiated);
  EXPECT_EQ(send(raw(Request::set_vring_enable, VringState{0, 1})).error(), Errc::feature_not_negotiated);
  ASSERT_OK(send(raw(Request::set_protocol_features, bit(ProtocolFeature::mq))));
  auto n = send(empty(Request::get_queue_num));
  ASSERT_TRUE(n);
  EXPECT_EQ(u64_of(*n), 2u);
  EXPECT_EQ(send(empty(Request::get_status)).error(), Errc::feature_not_negotiated);
}

TEST_F(SessionTest, VringIndexAndSizeAreChecked) {
  EXPECT_EQ(send(raw(Request::set_vring_num, VringState{2, 64})).error(), Errc::bad_vring_index);
  EXPECT_EQ(send(raw(Request::set_vring_num, VringState{0, 100})).error(), Errc::bad_queue_size);
  EXPECT_EQ(send(raw(Request::set_vring_num, VringState{0, 512})).error(), Errc::bad_queue_size);
  EXPECT_EQ(send(raw(Request::set_vring_num, VringState{0, 0})).error(), Errc::bad_queue_size);
  EXPECT_EQ(send(raw(Request::get_vring_base, VringState{7, 0})).error(), Errc::bad_vring_index);
  EXPECT_EQ(send(raw(Request::set_vring_base, VringState{0, 0x10000})).error(), Errc::bad_payload);
}

TEST_F(SessionTest, RingAddressesMustLieInGuestMemory) {
  EXPECT_EQ(send(raw(Request::set_vring_addr, VringAddr{0, 0, 1, 2, 3, 0})).error(), Errc::no_memory_table);
  handshake();
  EXPECT_EQ(send(raw(Request::set_vring_addr, VringAddr{0, 0, 0x1000, 0x2000, 0x3000, 0})).error(),
            Errc::unmapped_ring);
  EXPECT_EQ(send(raw(Request::set_vring_addr, VringAddr{0, 1, GuestRam::frontend_base, GuestRam::frontend_base,
                                                        GuestRam::frontend_base, 0}))
                .error(),
            Errc::feature_not_negotiated);  // F_LOG without LOG_ALL
}

TEST_F(SessionTest, Qemu72RingStartsOnKickAndRunsOnlyOnceEnabled) {
  handshake();
  configure_ring(0);
  EXPECT_FALSE(session.ring_active(0)) << "started but not enabled";
  EXPECT_EQ(watcher.watched.count(0), 1u);
  enable(0, 1);
  EXPECT_TRUE(session.ring_active(0));
  EXPECT_EQ(count("started 0"), 1u);
  enable(0, 0);
  EXPECT_FALSE(session.ring_active(0));
  EXPECT_EQ(count("stopped 0"), 1u);
}

TEST_F(SessionTest, Pre72FrontendsNeverEnableAndRingsRunAnyway) {
  handshake(version_1);  // no bit 30: no SET_VRING_ENABLE in this protocol
  configure_ring(0);
  configure_ring(1);
  EXPECT_TRUE(session.ring_active(0));
  EXPECT_TRUE(session.ring_active(1));
}

TEST_F(SessionTest, KickWhileDisabledIsDeferredNotDropped) {
  handshake();
  configure_ring(0);
  session.kick(0);
  EXPECT_FALSE(saw("kicked 0"));
  post_buffer(0, 0, 0, 1);
  enable(0, 1);
  EXPECT_EQ(count("kicked 0"), 1u) << "the deferred kick is delivered on enable";
  session.kick(0);
  EXPECT_EQ(count("kicked 0"), 2u);
}

TEST_F(SessionTest, BuffersPendingAtStartAreServedWithoutAKick) {
  handshake();
  post_buffer(0, 3, 0, 1);
  configure_ring(0);
  enable(0, 1);
  EXPECT_EQ(count("kicked 0"), 1u);
}

TEST_F(SessionTest, GetVringBaseStopsTheRingAndRewindsUnfinishedChains) {
  handshake();
  device.on_kick = [](Vring& v) {
    auto chain = v.queue().pop();
    ASSERT_TRUE(chain && *chain);  // popped, never pushed
  };
  post_buffer(0, 0, 0, 1);
  configure_ring(0);
  enable(0, 1);
  ASSERT_EQ(session.vring(0).index(), 0);
  auto reply = send(raw(Request::get_vring_base, VringState{0, 0}));
  ASSERT_TRUE(reply);
  const auto state = load<VringState>(std::span(*reply).subspan(sizeof(Header)));
  EXPECT_EQ(state.num, 0u) << "the popped chain was not consumed: the driver must see it again";
  EXPECT_TRUE(saw("stopped 0"));
  EXPECT_EQ(watcher.watched.count(0), 0u) << "a stopped ring's kick fd is no longer watched";
  EXPECT_FALSE(session.ring_active(0));
}

TEST_F(SessionTest, UsedIndexIsResumedFromGuestMemory) {
  handshake();
  ram.put(RingLayout::of(0).used + 2, virtio::Le16{5});
  configure_ring(0, 128, 5);
  enable(0, 1);
  std::uint16_t next_used = 0;
  device.on_kick = [&](Vring& v) { next_used = v.queue().next_used(); };
  post_buffer(0, 0, 5, 6);
  session.kick(0);
  EXPECT_EQ(next_used, 5);
}

TEST_F(SessionTest, ConfiguringARunningRingIsRefused) {
  handshake();
  configure_ring(0);
  EXPECT_EQ(send(raw(Request::set_vring_num, VringState{0, 64})).error(), Errc::ring_busy);
  EXPECT_EQ(send(raw(Request::set_vring_base, VringState{0, 1})).error(), Errc::ring_busy);
}

TEST_F(SessionTest, MemoryTableSwapUnderARunningRing) {
  handshake();
  configure_ring(0);
  enable(0, 1);
  std::shared_ptr<const virtio::GuestMemory> seen;
  device.on_kick = [&](Vring& v) { seen = v.queue().memory(); };
  set_mem_table();  // same layout, new mapping (memory hot-plug sends a whole new table)
  session.kick(0);
  ASSERT_TRUE(seen);
  EXPECT_EQ(seen, session.memory().snapshot()) << "the running queue moved to the new snapshot";
  EXPECT_TRUE(saw("memory"));
}

TEST_F(SessionTest, RemovingTheRingsMemoryBreaksOnlyThatRing) {
  ASSERT_OK(send(raw(Request::set_protocol_features, session.offered_protocol_features())));
  ASSERT_OK(send(raw(Request::set_features, version_1 | bit30)));
  std::vector<UniqueFd> fd;
  fd.push_back(ram.dup_fd());
  const MemRegion region{0, GuestRam::size, GuestRam::frontend_base, 0};
  ASSERT_OK(send(raw(Request::add_mem_reg, SingleMemRegion{0, region}, std::move(fd))));
  configure_ring(0);
  enable(0, 1);
  ASSERT_OK(send(raw(Request::rem_mem_reg, SingleMemRegion{0, region})));
  EXPECT_TRUE(session.vring(0).broken());
  session.kick(0);
  EXPECT_FALSE(saw("kicked 0")) << "a broken ring gets no more work";
  auto reply = send(raw(Request::get_vring_base, VringState{0, 0}));
  ASSERT_TRUE(reply);
  EXPECT_TRUE(saw("stopped 0"));
}

TEST_F(SessionTest, GetConfigAndItsErrorForm) {
  ASSERT_OK(send(raw(Request::set_protocol_features, session.offered_protocol_features())));
  ConfigPayload ok{{0, 8, 0}, std::vector<std::byte>(8)};
  auto reply = send(raw_bytes(Request::get_config, encode_payload(ok)));
  ASSERT_TRUE(reply);
  ASSERT_EQ(reply->size(), sizeof(Header) + sizeof(ConfigHeader) + 8);
  EXPECT_EQ((*reply)[sizeof(Header) + sizeof(ConfigHeader)], std::byte{3});

  ConfigPayload beyond{{4, 8, 0}, std::vector<std::byte>(8)};
  reply = send(raw_bytes(Request::get_config, encode_payload(beyond)));
  ASSERT_TRUE(reply);
  EXPECT_EQ(load<Header>(*reply).size, sizeof(ConfigHeader)) << "error form: size 0, no data";
  EXPECT_EQ(send(raw_bytes(Request::set_config, encode_payload(ok))).error(), Errc::not_supported);
}

TEST_F(SessionTest, ResetDeviceStopsRingsAndKeepsTheSession) {
  handshake();
  configure_ring(0);
  enable(0, 1);
  ASSERT_OK(send(empty(Request::reset_device)));
  EXPECT_TRUE(saw("stopped 0"));
  EXPECT_TRUE(saw("reset"));
  EXPECT_FALSE(session.ring_active(0));
  EXPECT_TRUE(watcher.watched.empty());
  EXPECT_EQ(session.acked_features(), 0u);
  ASSERT_OK(send(raw(Request::set_features, version_1 | bit30)));  // the driver negotiates again
  configure_ring(0);  // memory survives a device reset
  enable(0, 1);
  EXPECT_TRUE(session.ring_active(0));
}

TEST_F(SessionTest, DisconnectReturnsToTheInitialState) {
  handshake();
  configure_ring(0);
  configure_ring(1);
  enable(0, 1);
  session.reset();
  EXPECT_TRUE(saw("stopped 0"));
  EXPECT_FALSE(saw("stopped 1")) << "ring 1 never ran, the device never saw it start";
  EXPECT_TRUE(saw("reset"));
  EXPECT_TRUE(watcher.watched.empty());
  EXPECT_TRUE(session.memory().empty());
  EXPECT_EQ(session.acked_protocol_features(), 0u);
  ASSERT_OK(send(empty(Request::set_owner)));  // a new front-end may own the session again
}

TEST_F(SessionTest, StatusIsRecordedNotTakenAsReset) {
  ASSERT_OK(send(raw(Request::set_protocol_features, bit(ProtocolFeature::status))));
  ASSERT_OK(send(raw(Request::set_status, std::uint64_t{0xf})));
  auto reply = send(empty(Request::get_status));
  ASSERT_TRUE(reply);
  EXPECT_EQ(u64_of(*reply), 0xfu);
  EXPECT_EQ(send(raw(Request::set_status, std::uint64_t{0x100})).error(), Errc::bad_payload);
}

TEST_F(SessionTest, KickWithoutFdIsRefusedClearly) {
  handshake();
  EXPECT_EQ(send(raw(Request::set_vring_kick, std::uint64_t{vring_fd_no_fd})).error(), Errc::not_supported);
}

TEST_F(SessionTest, MalformedMessagesDropOrNack) {
  EXPECT_EQ(send(raw_bytes(Request::set_features, std::vector<std::byte>(4))).error(), Errc::wrong_size);
  auto nack = send(raw_bytes(Request::set_features, std::vector<std::byte>(4), {}, header_flags::need_reply));
  ASSERT_TRUE(nack);
  EXPECT_EQ(u64_of(*nack), 1u);
  RawMessage unknown;
  unknown.header = {99, header_flags::version | header_flags::need_reply, 0};
  nack = send(std::move(unknown));
  ASSERT_TRUE(nack);
  EXPECT_EQ(load<Header>(*nack).request, 99u);
  EXPECT_EQ(u64_of(*nack), 1u);
}

}  // namespace
}  // namespace vhostuser::testing
