// The command line: the three ways of naming VMs, the global flags, mixing refused, help.
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config_test_support.hpp"

namespace vsockd::config {
namespace {

using test::error_of;
using test::parse;
using test::parse_ok;
using testing::HasSubstr;

TEST(ConfigCommandLine, SingleVmFlagsKeepTheirMeaningAndDefaults) {
  const DaemonConfig config = parse_ok({"--socket", "/run/vm3.vhost", "--uds-path", "/run/vm3.vsock"});
  ASSERT_EQ(config.vms.size(), 1u);
  const VmConfig& vm = config.vms[0];
  EXPECT_EQ(vm.guest_cid, 3u);  // vhost-device-vsock's default
  EXPECT_EQ(vm.socket, "/run/vm3.vhost");
  EXPECT_EQ(vm.uds_path, "/run/vm3.vsock");
  EXPECT_EQ(vm.tx_buffer_size, 64u * 1024);
  EXPECT_EQ(vm.queue_size, 1024u);
  EXPECT_EQ(vm.groups, Groups{"default"});
  EXPECT_EQ(vm.connect_timeout_ms, std::chrono::milliseconds{2000});
  EXPECT_EQ(vm.shutdown_timeout_ms, std::chrono::milliseconds{2000});
  EXPECT_EQ(vm.max_connections, 1024u);
  EXPECT_EQ(config.threads, default_threads());
  EXPECT_FALSE(config.control_socket);
  EXPECT_EQ(config.log_level, "info");
  EXPECT_FALSE(config.config_file);
}

TEST(ConfigCommandLine, EverySingleVmFlag) {
  const DaemonConfig config =
      parse_ok({"--guest-cid", "7", "--socket", "s", "--uds-path", "u", "--tx-buffer-size", "262144", "--queue-size",
                "128", "--groups", "b+a", "--connect-timeout-ms", "500", "--shutdown-timeout-ms", "600",
                "--max-connections", "8", "--log-level", "debug", "--threads", "3", "--control-socket", "ctl"});
  ASSERT_EQ(config.vms.size(), 1u);
  const VmConfig& vm = config.vms[0];
  EXPECT_EQ(vm.guest_cid, 7u);
  EXPECT_EQ(vm.tx_buffer_size, 262144u);
  EXPECT_EQ(vm.queue_size, 128u);
  EXPECT_EQ(vm.groups, (Groups{"a", "b"}));
  EXPECT_EQ(vm.connect_timeout_ms, std::chrono::milliseconds{500});
  EXPECT_EQ(vm.shutdown_timeout_ms, std::chrono::milliseconds{600});
  EXPECT_EQ(vm.max_connections, 8u);
  EXPECT_EQ(config.log_level, "debug");
  EXPECT_EQ(config.threads, 3u);
  EXPECT_EQ(config.control_socket, std::filesystem::path{"ctl"});
}

TEST(ConfigCommandLine, SingleVmRequiresSocketAndUdsPath) {
  EXPECT_THAT(error_of(parse({"--uds-path", "u"})), HasSubstr("--socket is required"));
  EXPECT_THAT(error_of(parse({"--socket", "s", "--guest-cid", "4"})), HasSubstr("--uds-path is required"));
}

TEST(ConfigCommandLine, FlagValuesAreCheckedByTheKeyRules) {
  EXPECT_THAT(error_of(parse({"--socket", "s", "--uds-path", "u", "--guest-cid", "3x"})),
              HasSubstr("--guest-cid: '3x' is not a decimal number"));
  EXPECT_THAT(error_of(parse({"--socket", "s", "--uds-path", "u", "--groups", "a++b"})),
              HasSubstr("--groups: 'a++b' has an empty group name"));
  EXPECT_THAT(error_of(parse({"--socket", "s", "--uds-path", "u", "--threads", "-2"})),
              HasSubstr("--threads: '-2' is negative"));
  EXPECT_THAT(error_of(parse({"--socket", "s", "--uds-path", "u", "--queue-size", "100"})),
              HasSubstr("queue_size 100 is not a power of two"));
  EXPECT_THAT(error_of(parse({"--socket", "s", "--uds-path", "u", "--log-level", "loud"})), HasSubstr("--log-level"));
}

TEST(ConfigCommandLine, RepeatedVm) {
  const DaemonConfig config = parse_ok({"--vm", "guest-cid=4,socket=s4,uds-path=u4,groups=g1+g2", "--vm",
                                        "guest_cid=5,socket=s5,uds_path=u5", "--threads", "2"});
  ASSERT_EQ(config.vms.size(), 2u);
  EXPECT_EQ(config.vms[0].guest_cid, 4u);
  EXPECT_EQ(config.vms[0].groups, (Groups{"g1", "g2"}));
  EXPECT_EQ(config.vms[1].guest_cid, 5u);
  EXPECT_EQ(config.vms[1].groups, Groups{"default"});
  EXPECT_EQ(config.threads, 2u);
}

TEST(ConfigCommandLine, VmErrorsNameTheVm) {
  EXPECT_THAT(error_of(parse({"--vm", "guest-cid=4,socket=s4,uds-path=u4", "--vm", "guest-cid=5,socket=s5"})),
              HasSubstr("--vm #2: uds_path is required"));
  EXPECT_THAT(error_of(parse({"--vm", "guest-cid=4,socket=s4,uds-path=u4", "--vm", "socket=s5,uds-path=u5,bogus=1"})),
              HasSubstr("--vm #2: unknown key 'bogus'"));
}

TEST(ConfigCommandLine, TwoVmsWithoutCidCollideOnTheDefault) {
  EXPECT_THAT(error_of(parse({"--vm", "socket=s4,uds-path=u4", "--vm", "socket=s5,uds-path=u5"})),
              HasSubstr("VM 1 and VM 2 both have guest_cid 3 (a VM without guest_cid gets 3)"));
}

TEST(ConfigCommandLine, MixingModesIsRefused) {
  EXPECT_THAT(error_of(parse({"--vm", "socket=s,uds-path=u", "--guest-cid", "4"})),
              HasSubstr("--vm cannot be combined with --guest-cid"));
  EXPECT_THAT(error_of(parse({"--socket", "s", "--uds-path", "u", "--vm", "guest-cid=5,socket=s5,uds-path=u5"})),
              HasSubstr("--vm cannot be combined with --socket"));
  EXPECT_THAT(error_of(parse({"--config", "vms.yaml", "--vm", "socket=s,uds-path=u"})),
              HasSubstr("--config cannot be combined with --vm"));
  EXPECT_THAT(error_of(parse({"--config", "vms.yaml", "--uds-path", "u"})),
              HasSubstr("--config cannot be combined with --uds-path"));
}

TEST(ConfigCommandLine, NothingToServeIsRefused) {
  EXPECT_THAT(error_of(parse({})), HasSubstr("no VM to serve"));
  EXPECT_THAT(error_of(parse({"--threads", "2"})), HasSubstr("no VM to serve"));
}

TEST(ConfigCommandLine, Cli11ErrorsBecomeMessages) {
  EXPECT_THAT(error_of(parse({"--socket", "s", "--uds-path", "u", "--bogus"})), HasSubstr("--bogus"));
  EXPECT_THAT(error_of(parse({"--socket", "s", "--uds-path", "u", "--guest-cid", "4", "--guest-cid", "5"})),
              HasSubstr("--guest-cid"));
  EXPECT_THAT(error_of(parse({"--socket"})), HasSubstr("--socket"));
  // One value per --vm: a second word is not taken as another VM.
  EXPECT_THAT(error_of(parse({"--vm", "socket=s,uds-path=u", "guest-cid=5,socket=t,uds-path=v"})),
              HasSubstr("guest-cid=5"));
}

TEST(ConfigCommandLine, HelpListsEveryKeyAsAFlag) {
  auto parsed = parse({"--help"});
  ASSERT_TRUE(parsed) << parsed.error().message;
  ASSERT_TRUE(std::holds_alternative<Help>(*parsed));
  const std::string& text = std::get<Help>(*parsed).text;
  for (const char* flag : {"--guest-cid", "--socket", "--uds-path", "--tx-buffer-size", "--queue-size", "--groups",
                           "--connect-timeout-ms", "--shutdown-timeout-ms", "--max-connections", "--vm", "--config",
                           "--control-socket", "--threads", "--log-level"}) {
    EXPECT_THAT(text, HasSubstr(flag));
  }
}

TEST(ConfigCommandLine, ConfigFileWithGlobalFlagsOverridingItsKeys) {
  test::TempDir dir;
  const std::string file = dir / "vms.yaml";
  std::ofstream(file) << "threads: 5\ncontrol_socket: /run/ctl\nvms:\n  - {guest_cid: 4, socket: s, uds_path: u}\n";
  const DaemonConfig from_file = parse_ok({"--config", file});
  EXPECT_EQ(from_file.threads, 5u);
  EXPECT_EQ(from_file.control_socket, std::filesystem::path{"/run/ctl"});
  EXPECT_EQ(from_file.config_file, std::filesystem::path{file});
  ASSERT_EQ(from_file.vms.size(), 1u);
  EXPECT_EQ(from_file.vms[0].guest_cid, 4u);

  const DaemonConfig overridden =
      parse_ok({"--config", file, "--threads", "2", "--control-socket", "/run/other", "--log-level", "warn"});
  EXPECT_EQ(overridden.threads, 2u);
  EXPECT_EQ(overridden.control_socket, std::filesystem::path{"/run/other"});
  EXPECT_EQ(overridden.log_level, "warn");
  EXPECT_EQ(overridden.vms, from_file.vms);
}

TEST(ConfigCommandLine, MissingConfigFileIsNamed) {
  test::TempDir dir;
  EXPECT_THAT(error_of(parse({"--config", dir / "absent.yaml"})), HasSubstr("cannot open " + (dir / "absent.yaml")));
}

}  // namespace
}  // namespace vsockd::config
