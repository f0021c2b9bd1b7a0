// The key mechanism and the --vm form: numbers, paths, groups, snake/dash keys, unknown and
// repeated keys, and --vm round trips.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config/fields.hpp"
#include "config_test_support.hpp"

namespace vsockd::config {
namespace {

using test::error_of;
using testing::HasSubstr;

TEST(ConfigNumbers, AcceptsDecimalDigitsWithinTheType) {
  EXPECT_EQ(*detail::parse_decimal("0", 10), 0u);
  EXPECT_EQ(*detail::parse_decimal("007", 10), 7u);
  EXPECT_EQ(*detail::parse_decimal("18446744073709551615", UINT64_MAX), UINT64_MAX);
  std::uint16_t small = 0;
  ASSERT_TRUE(detail::parse_value("65535", small));
  EXPECT_EQ(small, 65535u);
}

TEST(ConfigNumbers, RefusesNonNumericNegativeOverflowAndTrailingGarbage) {
  EXPECT_THAT(error_of(detail::parse_decimal("", 10)), HasSubstr("no value"));
  EXPECT_THAT(error_of(detail::parse_decimal("abc", 10)), HasSubstr("'abc' is not a decimal number"));
  EXPECT_THAT(error_of(detail::parse_decimal("12x", 100)), HasSubstr("'12x' is not a decimal number"));
  EXPECT_THAT(error_of(detail::parse_decimal("0x10", 100)), HasSubstr("not a decimal number"));
  EXPECT_THAT(error_of(detail::parse_decimal("+3", 100)), HasSubstr("not a decimal number"));
  EXPECT_THAT(error_of(detail::parse_decimal(" 3", 100)), HasSubstr("not a decimal number"));
  EXPECT_THAT(error_of(detail::parse_decimal("3 ", 100)), HasSubstr("not a decimal number"));
  EXPECT_THAT(error_of(detail::parse_decimal("-1", 100)), HasSubstr("'-1' is negative"));
  EXPECT_THAT(error_of(detail::parse_decimal("101", 100)), HasSubstr("'101' is out of range (at most 100)"));
  EXPECT_THAT(error_of(detail::parse_decimal("18446744073709551616", UINT64_MAX)), HasSubstr("out of range"));
  std::uint32_t word = 0;
  EXPECT_THAT(error_of(detail::parse_value("4294967296", word)), HasSubstr("at most 4294967295"));
}

TEST(ConfigGroups, PlusSeparatedSortedAndMerged) {
  Groups groups;
  ASSERT_TRUE(detail::parse_value("g2+g1+g2", groups));
  EXPECT_EQ(groups, (Groups{"g1", "g2"}));
  EXPECT_EQ(detail::format_value(groups), "g1+g2");
}

TEST(ConfigGroups, RefusesEmptyNames) {
  Groups groups;
  EXPECT_THAT(error_of(detail::parse_value("g1++g2", groups)), HasSubstr("empty group name"));
  EXPECT_THAT(error_of(detail::parse_value("+g1", groups)), HasSubstr("empty group name"));
  EXPECT_THAT(error_of(detail::parse_value("g1+", groups)), HasSubstr("empty group name"));
  EXPECT_THAT(error_of(detail::parse_value("", groups)), HasSubstr("no group name"));
  EXPECT_THAT(error_of(detail::parse_list({}, groups)), HasSubstr("empty list"));
  EXPECT_THAT(error_of(detail::parse_list({"a", ""}, groups)), HasSubstr("empty group name"));
  EXPECT_THAT(error_of(detail::parse_list({"a+b"}, groups)), HasSubstr("one name per item"));
}

TEST(ConfigVmArgument, SnakeAndDashKeysMeanTheSameMember) {
  auto dash = parse_vm_argument(
      "guest-cid=4,socket=/run/v4,uds-path=/run/u4,tx-buffer-size=32768,queue-size=256,groups=g1+g2,"
      "connect-timeout-ms=100,shutdown-timeout-ms=200,max-connections=7",
      "--vm #1");
  auto snake = parse_vm_argument(
      "guest_cid=4,socket=/run/v4,uds_path=/run/u4,tx_buffer_size=32768,queue_size=256,groups=g1+g2,"
      "connect_timeout_ms=100,shutdown_timeout_ms=200,max_connections=7",
      "--vm #1");
  ASSERT_TRUE(dash) << dash.error().message;
  ASSERT_TRUE(snake) << snake.error().message;
  EXPECT_EQ(*dash, *snake);
  EXPECT_EQ(dash->guest_cid, 4u);
  EXPECT_EQ(dash->socket, "/run/v4");
  EXPECT_EQ(dash->uds_path, "/run/u4");
  EXPECT_EQ(dash->tx_buffer_size, 32768u);
  EXPECT_EQ(dash->queue_size, 256u);
  EXPECT_EQ(dash->groups, (Groups{"g1", "g2"}));
  EXPECT_EQ(dash->connect_timeout_ms, std::chrono::milliseconds{100});
  EXPECT_EQ(dash->shutdown_timeout_ms, std::chrono::milliseconds{200});
  EXPECT_EQ(dash->max_connections, 7u);
}

TEST(ConfigVmArgument, DefaultsAreVhostDeviceVsocks) {
  auto vm = parse_vm_argument("socket=s,uds-path=u", "--vm #1");
  ASSERT_TRUE(vm) << vm.error().message;
  EXPECT_EQ(vm->guest_cid, 3u);
  EXPECT_EQ(vm->tx_buffer_size, 65536u);
  EXPECT_EQ(vm->queue_size, 1024u);
  EXPECT_EQ(vm->groups, Groups{"default"});
}

TEST(ConfigVmArgument, AValueKeepsEverythingAfterTheFirstEquals) {
  auto vm = parse_vm_argument("socket=/run/a=b,uds-path=u", "--vm #1");
  ASSERT_TRUE(vm) << vm.error().message;
  EXPECT_EQ(vm->socket, "/run/a=b");
}

TEST(ConfigVmArgument, RefusesUnknownRepeatedAndMalformedItems) {
  EXPECT_THAT(error_of(parse_vm_argument("socket=s,uds-path=u,cid=4", "--vm #2")),
              HasSubstr("--vm #2: unknown key 'cid' (keys: guest_cid, socket, uds_path"));
  // vhost-device-vsock's man page says "group"; only "groups" is a key there and here.
  EXPECT_THAT(error_of(parse_vm_argument("socket=s,uds-path=u,group=g", "--vm #1")), HasSubstr("unknown key 'group'"));
  EXPECT_THAT(error_of(parse_vm_argument("socket=s,uds-path=u,guest-cid=4,guest_cid=5", "--vm #1")),
              HasSubstr("--vm #1: guest_cid: given twice"));
  EXPECT_THAT(error_of(parse_vm_argument("socket=s,,uds-path=u", "--vm #1")), HasSubstr("stray ','"));
  EXPECT_THAT(error_of(parse_vm_argument("socket=s,uds-path=u,", "--vm #1")), HasSubstr("stray ','"));
  EXPECT_THAT(error_of(parse_vm_argument("socket=s,uds-path", "--vm #1")), HasSubstr("'uds-path' is not key=value"));
  EXPECT_THAT(error_of(parse_vm_argument("", "--vm #1")), HasSubstr("--vm #1: empty"));
}

TEST(ConfigVmArgument, RefusesBadValuesNamingTheKey) {
  EXPECT_THAT(error_of(parse_vm_argument("socket=s,uds-path=u,guest-cid=4x", "--vm #1")),
              HasSubstr("--vm #1: guest-cid: '4x' is not a decimal number"));
  EXPECT_THAT(error_of(parse_vm_argument("socket=s,uds-path=u,tx-buffer-size=-1", "--vm #1")),
              HasSubstr("tx-buffer-size: '-1' is negative"));
  EXPECT_THAT(error_of(parse_vm_argument("socket=s,uds-path=u,max-connections=99999999999", "--vm #1")),
              HasSubstr("max-connections: '99999999999' is out of range"));
  EXPECT_THAT(error_of(parse_vm_argument("socket=,uds-path=u", "--vm #1")), HasSubstr("socket: empty path"));
  EXPECT_THAT(error_of(parse_vm_argument("socket=s,uds-path=u,groups=g1++g2", "--vm #1")),
              HasSubstr("groups: 'g1++g2' has an empty group name"));
  EXPECT_THAT(error_of(parse_vm_argument("socket=s,uds-path=u,groups=", "--vm #1")),
              HasSubstr("groups: no group name"));
}

TEST(ConfigVmArgument, RequiresSocketAndUdsPath) {
  EXPECT_THAT(error_of(parse_vm_argument("guest-cid=4,uds-path=u", "--vm #3")),
              HasSubstr("--vm #3: socket is required"));
  EXPECT_THAT(error_of(parse_vm_argument("guest-cid=4,socket=s", "--vm #3")),
              HasSubstr("--vm #3: uds_path is required"));
}

TEST(ConfigVmArgument, RoundTrips) {
  VmConfig vm;
  vm.guest_cid = 4294967294;
  vm.socket = "/run/vm 4.vhost";
  vm.uds_path = "relative/vm=4.vsock";
  vm.tx_buffer_size = 4096;
  vm.queue_size = 32768;
  vm.groups = {"a", "b.c", "z"};
  vm.connect_timeout_ms = std::chrono::milliseconds{1};
  vm.shutdown_timeout_ms = std::chrono::hours{24};
  vm.max_connections = 1;
  const std::string text = to_vm_argument(vm);
  EXPECT_EQ(text,
            "guest_cid=4294967294,socket=/run/vm 4.vhost,uds_path=relative/vm=4.vsock,tx_buffer_size=4096,"
            "queue_size=32768,groups=a+b.c+z,connect_timeout_ms=1,shutdown_timeout_ms=86400000,max_connections=1");
  auto back = parse_vm_argument(text, "--vm #1");
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(*back, vm);
  VmConfig defaults;
  defaults.socket = "s";
  defaults.uds_path = "u";
  auto defaults_back = parse_vm_argument(to_vm_argument(defaults), "--vm #1");
  ASSERT_TRUE(defaults_back) << defaults_back.error().message;
  EXPECT_EQ(*defaults_back, defaults);
}

}  // namespace
}  // namespace vsockd::config
