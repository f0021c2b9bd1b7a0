// Out of process: the real vhost-vsockd binary. A bad command line or configuration exits
// with status 2 and one readable line on stderr; a good one serves every VM (READY=1 once all
// sockets listen) and removes every socket on SIGTERM; a VM that cannot bind stops the start
// and leaves no socket of the others behind. No sleeps: every wait is a poll(2) on a pidfd,
// a pipe or the notify socket, with a deadline. Only the processes started here are
// signalled, by PID.
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config_test_support.hpp"
#include "process_support.hpp"

namespace vsockd::config {
namespace {

using namespace std::chrono_literals;
using testing::HasSubstr;
using test::Clock;
using test::Daemon;
using test::NotifySocket;
using test::deadline_after;
using test::listener_at;
using test::run_to_exit;
using vhostuser::UniqueFd;

TEST(VsockdProcess, BadCommandLineExitsWith2AndSaysWhy) {
  // Paths in a directory of the test's own, should a broken daemon start serving anyway.
  test::TempDir dir;
  auto [status, output] = run_to_exit({"--guest-cid", "2", "--socket", dir / "s", "--uds-path", dir / "u"});
  EXPECT_EQ(status, usage_exit_code);
  EXPECT_THAT(output, HasSubstr("vhost-vsockd: VM 1: guest_cid 2 is reserved"));

  std::tie(status, output) = run_to_exit({"--vm", "socket=" + (dir / "a") + ",uds-path=" + (dir / "b"), "--vm",
                                          "socket=" + (dir / "c") + ",uds-path=" + (dir / "d")});
  EXPECT_EQ(status, usage_exit_code);
  EXPECT_THAT(output, HasSubstr("VM 1 and VM 2 both have guest_cid 3"));

  std::tie(status, output) = run_to_exit({"--socket", dir / "s", "--uds-path", dir / "u", "--bogus"});
  EXPECT_EQ(status, usage_exit_code);
  EXPECT_THAT(output, HasSubstr("--bogus"));

  std::tie(status, output) =
      run_to_exit({"--vm", "socket=" + (dir / "a") + ",uds-path=" + (dir / "b"), "--config", dir / "x.yaml"});
  EXPECT_EQ(status, usage_exit_code);
  EXPECT_THAT(output, HasSubstr("--config cannot be combined with --vm"));
}

TEST(VsockdProcess, HelpExitsWith0) {
  auto [status, output] = run_to_exit({"--help"});
  EXPECT_EQ(status, 0);
  EXPECT_THAT(output, HasSubstr("--uds-path"));
}

TEST(VsockdProcess, PathThatIsNotASocketExitsWith2) {
  test::TempDir dir;
  std::ofstream(dir / "vm3.vhost") << "not a socket";
  auto [status, output] = run_to_exit({"--socket", dir / "vm3.vhost", "--uds-path", dir / "vm3.vsock"});
  EXPECT_EQ(status, usage_exit_code);
  EXPECT_THAT(output, HasSubstr("is a regular file, not a socket"));
  EXPECT_TRUE(std::filesystem::is_regular_file(dir / "vm3.vhost"));  // left alone
}

TEST(VsockdProcess, BadConfigFileExitsWith2AndNamesTheLine) {
  test::TempDir dir;
  std::ofstream(dir / "vms.yaml") << "vms:\n  - guest_cid: 4\n    socket: " << (dir / "s")
                                  << "\n    uds_path: " << (dir / "u") << "\n    queue_size: 100\n";
  auto [status, output] = run_to_exit({"--config", dir / "vms.yaml"});
  EXPECT_EQ(status, usage_exit_code);
  EXPECT_THAT(output, HasSubstr(dir / "vms.yaml" + ": VM 1: queue_size 100 is not a power of two"));
}

TEST(VsockdProcess, ServesEveryVmAndRemovesEverySocketOnSigterm) {
  test::TempDir dir;
  // A stale socket of a dead daemon where VM 1's vhost-user socket goes: replaced.
  listener_at(dir / "vm4.vhost").reset();
  std::ofstream(dir / "vms.yaml") << "vms:\n"
                                  << "  - {guest-cid: 4, socket: " << (dir / "vm4.vhost")
                                  << ", uds-path: " << (dir / "vm4.vsock") << ", groups: [a, b]}\n"
                                  << "  - {guest_cid: 5, socket: " << (dir / "vm5.vhost")
                                  << ", uds_path: " << (dir / "vm5.vsock") << ", groups: a}\n";
  NotifySocket notify(dir / "notify");
  Daemon daemon({"--config", dir / "vms.yaml"}, {notify.env()});
  auto ready = notify.receive(Clock::now() + deadline_after);
  ASSERT_EQ(ready, std::optional<std::string>{"READY=1"}) << daemon.output();
  const std::vector<std::string> sockets{dir / "vm4.vhost", dir / "vm4.vsock", dir / "vm4.vsock_seqpacket",
                                         dir / "vm5.vhost", dir / "vm5.vsock", dir / "vm5.vsock_seqpacket"};
  for (const auto& s : sockets) EXPECT_TRUE(std::filesystem::is_socket(s)) << s;

  daemon.signal(SIGTERM);
  auto status = daemon.wait_exit(Clock::now() + deadline_after);
  ASSERT_TRUE(status) << "no exit after SIGTERM";
  EXPECT_EQ(*status, 0) << daemon.output();
  for (const auto& s : sockets) EXPECT_FALSE(std::filesystem::exists(s)) << s;
  EXPECT_THAT(daemon.output(), HasSubstr("cid 4: vhost-user"));
  EXPECT_THAT(daemon.output(), HasSubstr("cid 5: vhost-user"));
}

TEST(VsockdProcess, AVmThatCannotBindStopsTheStartAndLeavesNoSocket) {
  test::TempDir dir;
  // A live listener where VM 2's vhost-user socket goes: only the bind can tell it is live.
  const std::string taken = dir / "vm5.vhost";
  UniqueFd live = listener_at(taken);

  auto [status, output] =
      run_to_exit({"--vm", "guest-cid=4,socket=" + (dir / "vm4.vhost") + ",uds-path=" + (dir / "vm4.vsock"), "--vm",
                   "guest-cid=5,socket=" + taken + ",uds-path=" + (dir / "vm5.vsock")});
  EXPECT_EQ(status, 1);
  EXPECT_THAT(output, HasSubstr("cannot listen on " + taken + ": another process listens on it"));
  for (const char* name : {"vm4.vhost", "vm4.vsock", "vm4.vsock_seqpacket", "vm5.vsock", "vm5.vsock_seqpacket"}) {
    EXPECT_FALSE(std::filesystem::exists(dir.path() / name)) << name;
  }
  EXPECT_TRUE(std::filesystem::is_socket(taken));  // someone else's: left alone
}

}  // namespace
}  // namespace vsockd::config
