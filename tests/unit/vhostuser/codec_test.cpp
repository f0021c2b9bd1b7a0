// The codec against the request table: every request id decodes with its layout and fd
// rule, and each malformation is refused with its own error.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <sys/eventfd.h>

#include <vector>

#include "vhostuser/codec.hpp"
#include "vhostuser/request_table.hpp"

namespace vhostuser {
namespace {

Header header_for(Request r, std::size_t size, std::uint32_t flags = header_flags::version) {
  return {static_cast<std::uint32_t>(r), flags, static_cast<std::uint32_t>(size)};
}

std::vector<UniqueFd> eventfds(std::size_t n) {
  std::vector<UniqueFd> fds;
  for (std::size_t i = 0; i < n; ++i) fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
  return fds;
}

template <class T>
std::vector<std::byte> bytes(const T& v) {
  auto b = bytes_of(v);
  return {b.begin(), b.end()};
}

std::vector<std::byte> mem_table_body(std::uint32_t n, std::uint32_t declared) {
  std::vector<std::byte> body(sizeof(MemTableHeader) + n * sizeof(MemRegion));
  const MemTableHeader h{declared, 0};
  std::memcpy(body.data(), &h, sizeof h);
  for (std::uint32_t i = 0; i < n; ++i) {
    const MemRegion r{i * 0x1000ull, 0x1000, 0x7f0000000000ull + i * 0x1000ull, 0};
    std::memcpy(body.data() + sizeof h + i * sizeof r, &r, sizeof r);
  }
  return body;
}

TEST(RequestTable, CoversEveryRequestIdInOrder) {
  for (std::uint32_t id = 1; id <= max_request_id; ++id) {
    const RequestRule* rule = find_rule(id);
    ASSERT_NE(rule, nullptr) << id;
    EXPECT_EQ(static_cast<std::uint32_t>(rule->request), id);
    EXPECT_FALSE(rule->name.empty());
  }
  EXPECT_EQ(find_rule(0), nullptr);
  EXPECT_EQ(find_rule(max_request_id + 1), nullptr);
  EXPECT_EQ(to_string(Request::set_vring_kick), "SET_VRING_KICK");
  EXPECT_EQ(to_string(static_cast<Request>(999)), "UNKNOWN");
}

TEST(Codec, HeaderChecksComeBeforeTheBody) {
  EXPECT_EQ(check_request_header(header_for(Request::get_features, 0, 0x2)).error(), Errc::bad_version);
  EXPECT_EQ(check_request_header(header_for(Request::get_features, 0, 0x5)).error(), Errc::unexpected_reply_flag);
  EXPECT_EQ(check_request_header(header_for(Request::get_features, max_payload_size + 1)).error(),
            Errc::oversized_message);
  EXPECT_TRUE(check_request_header(header_for(Request::get_features, max_payload_size)));
  EXPECT_TRUE(check_request_header(header_for(Request::get_features, 0, 0x9)));  // NEED_REPLY is fine
}

TEST(Codec, UnknownRequestIsRefused) {
  const Header h{0, header_flags::version, 0};
  EXPECT_EQ(decode_request(h, {}, {}).error(), Errc::unknown_request);
  const Header h44{44, header_flags::version, 0};
  EXPECT_EQ(decode_request(h44, {}, {}).error(), Errc::unknown_request);
}

TEST(Codec, DecodesFixedLayouts) {
  const VringAddr addr{1, 0, 0x1000, 0x2000, 0x3000, 0};
  auto body = bytes(addr);
  auto msg = decode_request(header_for(Request::set_vring_addr, body.size()), body, {});
  ASSERT_TRUE(msg);
  EXPECT_EQ(msg->request, Request::set_vring_addr);
  EXPECT_EQ(msg->as<VringAddr>().used_user_addr, 0x2000u);

  const std::uint64_t features = 0x1'0000'0000ull;
  body = bytes(features);
  msg = decode_request(header_for(Request::set_features, body.size()), body, {});
  ASSERT_TRUE(msg);
  EXPECT_EQ(msg->as<U64Payload>().value, features);
}

TEST(Codec, WrongSizeIsRefusedForEveryFixedLayout) {
  for (std::uint32_t id = 1; id <= max_request_id; ++id) {
    const RequestRule& rule = *find_rule(id);
    if (rule.layout == Layout::opaque || rule.layout == Layout::mem_table || rule.layout == Layout::config) continue;
    // One byte more than any fixed layout is always wrong.
    std::vector<std::byte> body(rule.layout == Layout::none ? 1 : 41);
    auto fds = eventfds(rule.fds == FdRule::one ? 1 : 0);
    EXPECT_EQ(decode_request(header_for(rule.request, body.size()), body, std::move(fds)).error(), Errc::wrong_size)
        << rule.name;
  }
}

TEST(Codec, VringFdRule) {
  const std::uint64_t with_fd = 1;
  auto body = bytes(with_fd);
  EXPECT_TRUE(decode_request(header_for(Request::set_vring_kick, 8), body, eventfds(1)));
  EXPECT_EQ(decode_request(header_for(Request::set_vring_kick, 8), body, {}).error(), Errc::wrong_fd_count);

  const std::uint64_t no_fd = 1 | vring_fd_no_fd;
  body = bytes(no_fd);
  auto msg = decode_request(header_for(Request::set_vring_call, 8), body, {});
  ASSERT_TRUE(msg);
  EXPECT_TRUE(msg->as<VringFd>().no_fd);
  EXPECT_EQ(msg->as<VringFd>().index, 1);
  EXPECT_EQ(decode_request(header_for(Request::set_vring_call, 8), body, eventfds(1)).error(), Errc::wrong_fd_count);

  const std::uint64_t reserved = 0x200;
  body = bytes(reserved);
  EXPECT_EQ(decode_request(header_for(Request::set_vring_err, 8), body, eventfds(1)).error(), Errc::bad_payload);
}

TEST(Codec, MemTableNeedsOneFdPerRegion) {
  auto body = mem_table_body(2, 2);
  auto msg = decode_request(header_for(Request::set_mem_table, body.size()), body, eventfds(2));
  ASSERT_TRUE(msg);
  EXPECT_EQ(msg->as<MemTable>().regions.size(), 2u);
  EXPECT_EQ(msg->fds.size(), 2u);
  EXPECT_EQ(decode_request(header_for(Request::set_mem_table, body.size()), body, eventfds(1)).error(),
            Errc::wrong_fd_count);
  EXPECT_EQ(decode_request(header_for(Request::set_mem_table, body.size()), body, eventfds(3)).error(),
            Errc::wrong_fd_count);
}

TEST(Codec, MemTableAcceptsTheFullEightRegionArrayToo) {
  auto body = mem_table_body(8, 3);  // struct VhostUserMemory sent whole, 3 regions used
  auto msg = decode_request(header_for(Request::set_mem_table, body.size()), body, eventfds(3));
  ASSERT_TRUE(msg);
  EXPECT_EQ(msg->as<MemTable>().regions.size(), 3u);
}

TEST(Codec, MemTableRegionCountAndSize) {
  auto body = mem_table_body(0, 0);
  EXPECT_EQ(decode_request(header_for(Request::set_mem_table, body.size()), body, {}).error(), Errc::bad_payload);
  body = mem_table_body(8, 9);
  EXPECT_EQ(decode_request(header_for(Request::set_mem_table, body.size()), body, eventfds(8)).error(),
            Errc::bad_payload);
  body = mem_table_body(2, 3);  // claims 3, carries 2
  EXPECT_EQ(decode_request(header_for(Request::set_mem_table, body.size()), body, eventfds(3)).error(),
            Errc::wrong_size);
}

TEST(Codec, ConfigPayloadSizeMustMatchItsHeader) {
  std::vector<std::byte> body(sizeof(ConfigHeader) + 8);
  ConfigHeader h{0, 8, 0};
  std::memcpy(body.data(), &h, sizeof h);
  auto msg = decode_request(header_for(Request::get_config, body.size()), body, {});
  ASSERT_TRUE(msg);
  EXPECT_EQ(msg->as<ConfigPayload>().data.size(), 8u);

  h.size = 9;
  std::memcpy(body.data(), &h, sizeof h);
  EXPECT_EQ(decode_request(header_for(Request::get_config, body.size()), body, {}).error(), Errc::wrong_size);

  h.size = max_config_size + 1;
  body.resize(sizeof(ConfigHeader) + h.size);
  std::memcpy(body.data(), &h, sizeof h);
  EXPECT_EQ(decode_request(header_for(Request::set_config, body.size()), body, {}).error(), Errc::bad_payload);
}

TEST(Codec, RemMemRegMayCarryOneFd) {
  const SingleMemRegion r{0, {0, 0x1000, 0x7f0000000000ull, 0}};
  auto body = bytes(r);
  EXPECT_TRUE(decode_request(header_for(Request::rem_mem_reg, body.size()), body, {}));
  EXPECT_TRUE(decode_request(header_for(Request::rem_mem_reg, body.size()), body, eventfds(1)));
  EXPECT_EQ(decode_request(header_for(Request::rem_mem_reg, body.size()), body, eventfds(2)).error(),
            Errc::wrong_fd_count);
}

TEST(Codec, StrayFdsAreRefusedAndClosed) {
  auto fds = eventfds(1);
  const int raw = fds.front().get();
  EXPECT_EQ(decode_request(header_for(Request::get_features, 0), {}, std::move(fds)).error(), Errc::wrong_fd_count);
  EXPECT_EQ(::fcntl(raw, F_GETFD), -1) << "a refused message must close the fds it carried";
}

TEST(Codec, RepliesAreEncodedAsQemuChecksThem) {
  auto reply = encode_reply(Request::get_vring_base, VringState{1, 42});
  ASSERT_EQ(reply.size(), sizeof(Header) + sizeof(VringState));
  const auto h = load<Header>(reply);
  EXPECT_EQ(h.flags, 0x5u);
  EXPECT_EQ(h.request, static_cast<std::uint32_t>(Request::get_vring_base));
  EXPECT_EQ(h.size, 8u);
  EXPECT_TRUE(check_reply_header(Request::get_vring_base, h, 8));
  EXPECT_EQ(check_reply_header(Request::get_features, h, 8).error(), Errc::bad_reply);
  EXPECT_EQ(check_reply_header(Request::get_vring_base, h, 12).error(), Errc::wrong_size);
  Header need_reply = h;
  need_reply.flags = 0xd;
  EXPECT_EQ(check_reply_header(Request::get_vring_base, need_reply, 8).error(), Errc::bad_reply);
}

}  // namespace
}  // namespace vhostuser
