// Frontend: QEMU's side of the socket against a scripted backend on a socketpair. Replies
// are written into the socket before the request is made, so no thread is needed, and what
// the frontend sent is read back and checked afterwards.
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <gtest/gtest.h>

#include "vhostuser/codec.hpp"
#include "vusim/frontend.hpp"

namespace vusim {
namespace {

using vhostuser::Request;
namespace hf = vhostuser::header_flags;

class FrontendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    int sv[2];
    ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    backend_.reset(sv[1]);
    auto fe =
        Frontend::adopt(vhostuser::UniqueFd{sv[0]}, {.timeout = std::chrono::milliseconds(200), .trace = {}});
    ASSERT_TRUE(fe) << fe.error();
    frontend_.emplace(std::move(*fe));
  }

  /// Queues a reply as the backend would send it (or not quite).
  void reply(std::uint32_t request, std::uint32_t flags, std::span<const std::byte> payload) {
    vhostuser::Header h{request, flags, static_cast<std::uint32_t>(payload.size())};
    std::vector<std::byte> bytes(sizeof h + payload.size());
    std::memcpy(bytes.data(), &h, sizeof h);
    if (!payload.empty()) std::memcpy(bytes.data() + sizeof h, payload.data(), payload.size());
    ASSERT_TRUE(vhostuser::send_message(backend_.get(), bytes));
  }
  void reply_u64(Request r, std::uint64_t v) {
    reply(static_cast<std::uint32_t>(r), hf::version | hf::reply, vhostuser::bytes_of(v));
  }

  /// The next request the frontend sent.
  vhostuser::RawMessage sent() {
    for (;;) {
      auto msg = reader_.read(backend_.get());
      EXPECT_TRUE(msg) << msg.error().message();
      if (!msg) return {};
      if (*msg) return std::move(**msg);
    }
  }

  vhostuser::UniqueFd backend_;
  vhostuser::MessageReader reader_{vhostuser::Direction::requests};
  std::optional<Frontend> frontend_;
};

TEST_F(FrontendTest, AcceptsAWellFormedReply) {
  reply_u64(Request::get_features, 0x140000000);
  auto features = frontend_->get_features();
  ASSERT_TRUE(features) << features.error();
  EXPECT_EQ(*features, 0x140000000U);
  const auto req = sent();
  EXPECT_EQ(req.header.request, static_cast<std::uint32_t>(Request::get_features));
  EXPECT_EQ(req.header.flags, hf::version);
  EXPECT_EQ(req.header.size, 0U);
}

TEST_F(FrontendTest, RefusesRepliesQemuWouldRefuse) {
  // Missing REPLY bit.
  reply(static_cast<std::uint32_t>(Request::get_features), hf::version,
        vhostuser::bytes_of(std::uint64_t{1}));
  auto r = frontend_->get_features();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().fault, Fault::bad_reply) << r.error();
}

TEST_F(FrontendTest, RefusesAReplyToAnotherRequest) {
  reply_u64(Request::get_protocol_features, 1);
  auto r = frontend_->get_features();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().fault, Fault::bad_reply) << r.error();
}

TEST_F(FrontendTest, RefusesAReplyOfTheWrongSize) {
  const std::uint32_t four = 4;
  reply(static_cast<std::uint32_t>(Request::get_features), hf::version | hf::reply,
        vhostuser::bytes_of(four));
  auto r = frontend_->get_features();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().fault, Fault::bad_reply) << r.error();
}

TEST_F(FrontendTest, GetConfigNeedsExactlyTheRequestedSize) {
  // The spec's error form of GET_CONFIG (size 0, header only) fails QEMU's size check.
  const vhostuser::ConfigHeader h{0, 0, 0};
  reply(static_cast<std::uint32_t>(Request::get_config), hf::version | hf::reply, vhostuser::bytes_of(h));
  auto r = frontend_->get_config(0, 8);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().fault, Fault::bad_reply) << r.error();
  EXPECT_EQ(sent().header.size, 12U + 8U);
}

TEST_F(FrontendTest, ABackendThatSaysNothingIsATimeoutNotAHang) {
  auto r = frontend_->get_vring_base(0);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().fault, Fault::timeout);
  EXPECT_NE(r.error().message.find("GET_VRING_BASE"), std::string::npos) << r.error();
}

TEST_F(FrontendTest, AClosedConnectionIsReportedAsSuch) {
  backend_.reset();
  auto r = frontend_->get_features();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().fault, Fault::closed) << r.error();
}

TEST_F(FrontendTest, NeedReplyOnlyOnceReplyAckIsNegotiated) {
  const int fd = ::eventfd(0, EFD_CLOEXEC);
  vhostuser::UniqueFd owner{fd};
  const vhostuser::MemRegion region{0, 4096, 0x1000, 0};
  const int fds[] = {fd};
  // Without REPLY_ACK: no NEED_REPLY, nothing awaited.
  ASSERT_TRUE(frontend_->set_mem_table(std::span(&region, 1), fds));
  auto req = sent();
  EXPECT_EQ(req.header.flags, hf::version);
  EXPECT_EQ(req.header.size, 8U + 32U);  // QEMU sends only the regions in use
  EXPECT_EQ(req.fds.size(), 1U);

  ASSERT_TRUE(frontend_->set_protocol_features(vhostuser::bit(vhostuser::ProtocolFeature::reply_ack)));
  (void)sent();
  reply_u64(Request::set_mem_table, 0);
  ASSERT_TRUE(frontend_->set_mem_table(std::span(&region, 1), fds));
  EXPECT_EQ(sent().header.flags, hf::version | hf::need_reply);

  // A non-zero ack is the backend refusing.
  reply_u64(Request::add_mem_reg, 1);
  auto r = frontend_->add_mem_reg(region, fd);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().fault, Fault::nack) << r.error();
  const auto add = sent();
  EXPECT_EQ(add.header.request, static_cast<std::uint32_t>(Request::add_mem_reg));
  EXPECT_EQ(add.header.flags, hf::version | hf::need_reply);

  // Requests QEMU never waits for go without NEED_REPLY even with REPLY_ACK.
  ASSERT_TRUE(frontend_->set_vring_num(0, 256));
  EXPECT_EQ(sent().header.flags, hf::version);
}

TEST_F(FrontendTest, EnforceWithoutReplyAckIsFollowedByAGetFeaturesBarrier) {
  reply_u64(Request::get_features, 0);
  ASSERT_TRUE(frontend_->set_vring_enable(0, true, Wait::enforce));
  const auto enable = sent();
  EXPECT_EQ(enable.header.request, static_cast<std::uint32_t>(Request::set_vring_enable));
  EXPECT_EQ(enable.header.flags, hf::version);
  EXPECT_EQ(sent().header.request, static_cast<std::uint32_t>(Request::get_features));
}

TEST_F(FrontendTest, VringFdWithoutAnFdSetsBit8) {
  ASSERT_TRUE(frontend_->set_vring_call(3, -1));
  const auto req = sent();
  EXPECT_EQ(vhostuser::load<std::uint64_t>(req.body), 3U | vhostuser::vring_fd_no_fd);
  EXPECT_TRUE(req.fds.empty());
}

TEST_F(FrontendTest, DisconnectSucceedsOnceTheBackendClosed) {
  backend_.reset();
  EXPECT_TRUE(frontend_->disconnect());
}

TEST_F(FrontendTest, DisconnectWaitsForTheBackendToClose) {
  // The backend has not closed: the handshake times out rather than pretending.
  auto r = frontend_->disconnect();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().fault, Fault::timeout) << r.error();
}

}  // namespace
}  // namespace vusim
