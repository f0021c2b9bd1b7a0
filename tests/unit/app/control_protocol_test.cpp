// The control protocol's grammar (control_protocol.hpp), shared by the daemon and ctl.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "control_protocol.hpp"

namespace vsockd::control {
namespace {

using testing::HasSubstr;

TEST(ControlProtocol, ParsesEveryCommandOfTheTable) {
  for (const CommandSpec& spec : commands) {
    std::string line{spec.name};
    for (std::size_t i = 0; i < spec.args; ++i) line += " 4";
    auto request = parse_request(line);
    ASSERT_TRUE(request) << line << ": " << request.error().message;
    EXPECT_EQ(request->command, spec.command);
    EXPECT_EQ(request->args.size(), spec.args);
  }
}

TEST(ControlProtocol, TheLastArgumentTakesTheRestOfTheLine) {
  auto add = parse_request("add guest-cid=4,socket=/run/my vm.vhost,uds-path=/run/u");
  ASSERT_TRUE(add);
  EXPECT_EQ(add->args, std::vector<std::string>{"guest-cid=4,socket=/run/my vm.vhost,uds-path=/run/u"});
  auto groups = parse_request("groups 4 a+b");
  ASSERT_TRUE(groups);
  EXPECT_EQ(groups->args, (std::vector<std::string>{"4", "a+b"}));
}

TEST(ControlProtocol, RefusesWhatIsNotARequest) {
  EXPECT_THAT(parse_request("").error().message, HasSubstr("unknown command ''"));
  EXPECT_THAT(parse_request("LIST").error().message, HasSubstr("unknown command 'LIST'"));
  EXPECT_THAT(parse_request("list ").error().message, HasSubstr("usage: list"));
  EXPECT_THAT(parse_request("stats").error().message, HasSubstr("usage: stats CID"));
  EXPECT_THAT(parse_request("stats ").error().message, HasSubstr("usage: stats CID"));
  EXPECT_THAT(parse_request("groups 4").error().message, HasSubstr("usage: groups CID G1+G2"));
  EXPECT_THAT(parse_request("groups  a").error().message, HasSubstr("usage"));
  EXPECT_THAT(parse_request("remove 4 5").error().message, HasSubstr("usage: remove CID"));
  EXPECT_THAT(parse_request(std::string("list\0", 5)).error().message, HasSubstr("NUL"));
  EXPECT_THAT(parse_request("list\r").error().message, HasSubstr("line break"));
  EXPECT_THAT(parse_request("add " + std::string(max_request, 'x')).error().message, HasSubstr("longer than"));
}

TEST(ControlProtocol, CidsAreDecimalWithin32Bits) {
  EXPECT_EQ(*parse_cid("4"), 4u);
  EXPECT_EQ(*parse_cid("4294967295"), 4294967295u);
  for (const char* bad : {"", "-1", "+4", " 4", "4x", "0x10", "4294967296", "99999999999999999999999"}) {
    EXPECT_FALSE(parse_cid(bad)) << bad;
  }
}

TEST(ControlProtocol, RepliesRoundTrip) {
  auto ok = parse_reply(ok_reply("{\"vms\":[]}\n"));
  ASSERT_TRUE(ok);
  EXPECT_TRUE(ok->ok);
  EXPECT_EQ(ok->text, "{\"vms\":[]}\n");
  auto error = parse_reply(error_reply("no VM with guest_cid 9"));
  ASSERT_TRUE(error);
  EXPECT_FALSE(error->ok);
  EXPECT_EQ(error->text, "no VM with guest_cid 9");
  EXPECT_THAT(parse_reply("").error().message, HasSubstr("without a reply"));
  EXPECT_THAT(parse_reply("okay").error().message, HasSubstr("not in the control protocol"));
}

TEST(ControlProtocol, FormatRequestChecksTheWords) {
  const std::vector<std::string> words{"groups", "4", "a+b"};
  auto line = format_request(words);
  ASSERT_TRUE(line);
  EXPECT_EQ(*line, "groups 4 a+b");
  EXPECT_FALSE(format_request(std::vector<std::string>{"groups", "4"}));
}

}  // namespace
}  // namespace vsockd::control
