// The YAML file: vhost-device-vsock's form, dash keys, groups as string or list, global keys,
// errors with their line, round trips, and reloading.
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config_test_support.hpp"

namespace vsockd::config {
namespace {

using test::error_of;
using testing::HasSubstr;

TEST(ConfigYaml, VhostDeviceVsocksForm) {
  // The form of vhost-device-vsock's files: snake keys, groups as a '+' string.
  auto config = load_yaml(R"(vms:
    - guest_cid: 4
      socket: /tmp/vhost4.socket
      uds_path: /tmp/vm4.vsock
      tx_buffer_size: 65536
      queue_size: 1024
      groups: group1+group2
    - guest_cid: 5
      socket: /tmp/vhost5.socket
      uds_path: /tmp/vm5.vsock
      tx_buffer_size: 32768
      queue_size: 256
      groups: group1
)");
  ASSERT_TRUE(config) << config.error().message;
  ASSERT_EQ(config->vms.size(), 2u);
  EXPECT_EQ(config->vms[0].guest_cid, 4u);
  EXPECT_EQ(config->vms[0].socket, "/tmp/vhost4.socket");
  EXPECT_EQ(config->vms[0].uds_path, "/tmp/vm4.vsock");
  EXPECT_EQ(config->vms[0].groups, (Groups{"group1", "group2"}));
  EXPECT_EQ(config->vms[1].tx_buffer_size, 32768u);
  EXPECT_EQ(config->vms[1].queue_size, 256u);
  EXPECT_EQ(config->vms[1].groups, Groups{"group1"});
  EXPECT_EQ(config->threads, default_threads());
  EXPECT_FALSE(config->control_socket);
}

TEST(ConfigYaml, DashKeysAndGroupsAsAList) {
  auto config = load_yaml(R"(control-socket: /run/vsockd.ctl
threads: 4
vms:
  - guest-cid: 4
    socket: s4
    uds-path: u4
    groups: [b, a]
    max-connections: 9
  - guest_cid: 5
    socket: s5
    uds_path: u5
    groups:
      - a
)");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->control_socket, std::filesystem::path{"/run/vsockd.ctl"});
  EXPECT_EQ(config->threads, 4u);
  ASSERT_EQ(config->vms.size(), 2u);
  EXPECT_EQ(config->vms[0].groups, (Groups{"a", "b"}));
  EXPECT_EQ(config->vms[0].max_connections, 9u);
  EXPECT_EQ(config->vms[1].groups, Groups{"a"});
}

TEST(ConfigYaml, ErrorsNameFileLineVmAndKey) {
  EXPECT_THAT(error_of(load_yaml("vms:\n  - guest_cid: 4\n    socket: s\n    uds_path: u\n    cid: 9\n", "vms.yaml")),
              HasSubstr("vms.yaml:5: VM 1: unknown key 'cid'"));
  EXPECT_THAT(error_of(load_yaml("vms:\n  - {socket: s, uds_path: u, guest_cid: 4}\n  - {socket: t, uds_path: v, "
                                 "guest_cid: 4x}\n",
                                 "vms.yaml")),
              HasSubstr("vms.yaml:3: VM 2: guest_cid: '4x' is not a decimal number"));
  EXPECT_THAT(error_of(load_yaml("vms:\n  - guest_cid: 4\n    socket: s\n", "vms.yaml")),
              HasSubstr("vms.yaml:2: VM 1: uds_path is required"));
  EXPECT_THAT(error_of(load_yaml("vms:\n  - {socket: s, uds_path: u, guest_cid: 4, guest-cid: 5}\n")),
              HasSubstr("guest-cid: given twice"));
  EXPECT_THAT(error_of(load_yaml("vms:\n  - {socket: s, uds_path: u, groups: 'a++b'}\n")),
              HasSubstr("groups: 'a++b' has an empty group name"));
  EXPECT_THAT(error_of(load_yaml("vms:\n  - {socket: s, uds_path: u, groups: ''}\n")), HasSubstr("no group name"));
  EXPECT_THAT(error_of(load_yaml("vms:\n  - {socket: s, uds_path: u, groups: []}\n")), HasSubstr("empty list"));
  EXPECT_THAT(error_of(load_yaml("vms:\n  - {socket: s, uds_path: u, groups: [a+b]}\n")),
              HasSubstr("one name per item"));
  EXPECT_THAT(error_of(load_yaml("vms:\n  - {socket: s, uds_path: u, tx_buffer_size: -5}\n")),
              HasSubstr("tx_buffer_size: '-5' is negative"));
  EXPECT_THAT(error_of(load_yaml("vms:\n  - {socket: s, uds_path: u, queue_size: [1]}\n")),
              HasSubstr("queue_size: expected a single value"));
  EXPECT_THAT(error_of(load_yaml("vms:\n  - {socket: , uds_path: u}\n")), HasSubstr("socket: no value"));
}

TEST(ConfigYaml, DocumentShapeErrors) {
  EXPECT_THAT(error_of(load_yaml("", "vms.yaml")), HasSubstr("vms.yaml: expected a map with a 'vms' list"));
  // vhost-device-vsock panics on this one.
  EXPECT_THAT(error_of(load_yaml("threads: 2\n", "vms.yaml")), HasSubstr("vms.yaml: no 'vms' list"));
  EXPECT_THAT(error_of(load_yaml("vms: []\n", "vms.yaml")),
              HasSubstr("vms.yaml:1: vms: expected a list of at least one VM"));
  EXPECT_THAT(error_of(load_yaml("vms:\n", "vms.yaml")), HasSubstr("expected a list of at least one VM"));
  EXPECT_THAT(error_of(load_yaml("vms:\n  - just-a-string\n", "vms.yaml")), HasSubstr("VM 1: expected a map"));
  EXPECT_THAT(error_of(load_yaml("log_level: debug\nvms:\n  - {socket: s, uds_path: u}\n", "vms.yaml")),
              HasSubstr("vms.yaml:1: unknown key 'log_level' (keys: control_socket, threads)"));
  EXPECT_THAT(error_of(load_yaml("vms: [\n", "vms.yaml")), HasSubstr("vms.yaml:"));
  EXPECT_THAT(error_of(load_yaml("vms:\n  - {socket: s, uds_path: u}\nvms:\n  - {socket: t, uds_path: v}\n")),
              HasSubstr("vms: given twice"));
}

TEST(ConfigYaml, ValidationErrorsNameTheFile) {
  EXPECT_THAT(error_of(load_yaml("vms:\n  - {guest_cid: 2, socket: s, uds_path: u}\n", "vms.yaml")),
              HasSubstr("vms.yaml: VM 1: guest_cid 2 is reserved"));
  EXPECT_THAT(error_of(load_yaml("threads: 0\nvms:\n  - {socket: s, uds_path: u}\n", "vms.yaml")),
              HasSubstr("vms.yaml: threads 0 is out of range"));
}

TEST(ConfigYaml, RoundTrips) {
  DaemonConfig config;
  config.control_socket = "/run/ctl";
  config.threads = 3;
  VmConfig a;
  a.guest_cid = 4;
  a.socket = "null";  // would read back as a YAML null if written plain
  a.uds_path = "/run/vm 4: \"odd\".vsock";
  a.groups = {"g1", "g2"};
  VmConfig b;
  b.guest_cid = 4294967294;
  b.socket = "123";
  b.uds_path = "u5";
  b.tx_buffer_size = 4096;
  b.queue_size = 1;
  b.connect_timeout_ms = std::chrono::milliseconds{1};
  b.shutdown_timeout_ms = std::chrono::milliseconds{86400000};
  b.max_connections = 1;
  config.vms = {a, b};
  const std::string text = to_yaml(config);
  auto back = load_yaml(text);
  ASSERT_TRUE(back) << back.error().message << "\n" << text;
  EXPECT_EQ(*back, config) << text;
  EXPECT_EQ(to_yaml(*back), text);
}

TEST(ConfigYaml, RoundTripWithoutGlobalKeys) {
  auto config = load_yaml("vms:\n  - {socket: s, uds_path: u}\n");
  ASSERT_TRUE(config) << config.error().message;
  const std::string text = to_yaml(*config);
  EXPECT_THAT(text, testing::Not(HasSubstr("control_socket")));
  auto back = load_yaml(text);
  ASSERT_TRUE(back) << back.error().message;
  EXPECT_EQ(*back, *config);
}

TEST(ConfigYaml, ReloadReadsTheFileAgain) {
  test::TempDir dir;
  const std::string file = dir / "vms.yaml";
  std::ofstream(file) << "vms:\n  - {guest_cid: 4, socket: s4, uds_path: u4}\n";
  auto first = load_yaml_file(file);
  ASSERT_TRUE(first) << first.error().message;
  EXPECT_EQ(first->config_file, std::filesystem::path{file});

  std::ofstream(file) << "vms:\n  - {guest_cid: 4, socket: s4, uds_path: u4}\n  - {guest_cid: 5, socket: s5, "
                         "uds_path: u5, groups: [x]}\n";
  auto vms = reload_vms(file);
  ASSERT_TRUE(vms) << vms.error().message;
  ASSERT_EQ(vms->size(), 2u);
  EXPECT_EQ((*vms)[0], first->vms[0]);
  EXPECT_EQ((*vms)[1].guest_cid, 5u);
  EXPECT_EQ((*vms)[1].groups, Groups{"x"});

  std::ofstream(file) << "vms:\n  - {guest_cid: 4, socket: s4, uds_path: u4}\n  - {guest_cid: 4, socket: s5, "
                         "uds_path: u5}\n";
  EXPECT_THAT(error_of(reload_vms(file)), HasSubstr(file + ": VM 1 and VM 2 both have guest_cid 4"));
  EXPECT_THAT(error_of(reload_vms(dir / "gone.yaml")), HasSubstr("cannot open"));
}

// docs/usage.md shows the file and the --vm form; both examples must load as shown.
TEST(ConfigYaml, UsageDocExamplesLoad) {
  std::ifstream in(VSOCKD_SOURCE_DIR "/docs/usage.md");
  ASSERT_TRUE(in) << "cannot read docs/usage.md";
  std::string yaml;
  std::vector<std::string> vm_arguments;
  bool in_yaml = false;
  for (std::string line; std::getline(in, line);) {
    if (line == "```yaml") {
      in_yaml = true;
    } else if (in_yaml && line == "```") {
      in_yaml = false;
    } else if (in_yaml) {
      yaml += line + "\n";
    } else if (const auto at = line.find("  --vm "); at == 0) {
      std::string argument = line.substr(at + 7);
      if (argument.ends_with(" \\")) argument.resize(argument.size() - 2);
      vm_arguments.push_back(argument);
    }
  }
  ASSERT_FALSE(yaml.empty()) << "no ```yaml block in docs/usage.md";
  auto config = load_yaml(yaml, "docs/usage.md");
  ASSERT_TRUE(config) << config.error().message;
  EXPECT_EQ(config->vms.size(), 2u);
  EXPECT_EQ(config->threads, 4u);

  ASSERT_EQ(vm_arguments.size(), 2u) << "the --vm example of docs/usage.md";
  std::vector<std::string> args;
  for (const auto& a : vm_arguments) {
    args.push_back("--vm");
    args.push_back(a);
  }
  std::vector<const char*> argv{"vhost-vsockd"};
  for (const auto& a : args) argv.push_back(a.c_str());
  auto parsed = parse_command_line(argv);
  ASSERT_TRUE(parsed) << parsed.error().message;
  const auto& vms = std::get<DaemonConfig>(*parsed).vms;
  ASSERT_EQ(vms.size(), 2u);
  EXPECT_EQ(vms[0].groups, (Groups{"g1", "g2"}));
  EXPECT_EQ(vms[1].max_connections, 64u);
}

}  // namespace
}  // namespace vsockd::config
