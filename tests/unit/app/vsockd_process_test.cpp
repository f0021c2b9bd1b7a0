// Out of process: the real vhost-vsockd binary. A bad command line or configuration exits
// with status 2 and one readable line on stderr; a good one serves every VM (READY=1 once all
// sockets listen) and removes every socket on SIGTERM; a VM that cannot bind stops the start
// and leaves no socket of the others behind. No sleeps: every wait is a poll(2) on a pidfd,
// a pipe or the notify socket, with a deadline. Only the processes started here are
// signalled, by PID.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config_test_support.hpp"
#include "vhostuser/unique_fd.hpp"

extern char** environ;

namespace vsockd::config {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::HasSubstr;
using vhostuser::UniqueFd;

constexpr auto deadline_after = 30s;  // generous: the binary runs under ASan on a busy machine

int millis_until(Clock::time_point deadline) {
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::max<std::int64_t>(left, 0));
}

/// vhost-vsockd started by us with stdout and stderr on one pipe; killed (SIGKILL, by PID)
/// and reaped if still running when the test ends.
class Daemon {
 public:
  explicit Daemon(const std::vector<std::string>& args, const std::vector<std::string>& extra_env = {}) {
    std::vector<std::string> argv_strings{VSOCKD_BINARY};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> env_strings(extra_env);
    for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
    std::vector<char*> env;
    for (auto& e : env_strings) env.push_back(e.data());
    env.push_back(nullptr);

    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0) throw std::runtime_error("pipe2 failed");
    output_.reset(pipe_fds[0]);
    UniqueFd write_end{pipe_fds[1]};
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, write_end.get(), STDOUT_FILENO);
    posix_spawn_file_actions_adddup2(&actions, write_end.get(), STDERR_FILENO);
    const int rc = ::posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), env.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error(std::string("posix_spawn " VSOCKD_BINARY ": ") + std::strerror(rc));
    pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
    if (!pidfd_) throw std::runtime_error(std::string("pidfd_open: ") + std::strerror(errno));
  }
  ~Daemon() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status;
    ::waitpid(pid_, &status, 0);
  }
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  void signal(int signo) const { ::kill(pid_, signo); }

  /// The exit status, or nothing if it still runs at the deadline. Reads the output on the
  /// way, so a chatty daemon never blocks on a full pipe.
  std::optional<int> wait_exit(Clock::time_point deadline) {
    for (;;) {
      pollfd fds[2] = {{pidfd_.get(), POLLIN, 0}, {output_.get(), POLLIN, 0}};
      const int n = ::poll(fds, output_ ? 2 : 1, millis_until(deadline));
      if (n < 0 && errno != EINTR) return std::nullopt;
      if (n > 0 && output_ && (fds[1].revents & (POLLIN | POLLHUP)) != 0) drain();
      if (n > 0 && (fds[0].revents & POLLIN) != 0) {
        int status = 0;
        if (::waitpid(pid_, &status, 0) != pid_) return std::nullopt;
        pid_ = -1;
        while (output_) drain();  // the rest, up to EOF
        if (!WIFEXITED(status)) return 128 + WTERMSIG(status);
        return WEXITSTATUS(status);
      }
      if (n == 0) return std::nullopt;
    }
  }

  [[nodiscard]] const std::string& output() const { return text_; }

 private:
  void drain() {
    char buf[4096];
    const ssize_t n = ::read(output_.get(), buf, sizeof buf);
    if (n <= 0) {
      output_.reset();
      return;
    }
    text_.append(buf, static_cast<std::size_t>(n));
  }

  pid_t pid_ = -1;
  UniqueFd pidfd_;
  UniqueFd output_;
  std::string text_;
};

/// The exit status and output of a daemon that must stop by itself.
std::pair<int, std::string> run_to_exit(const std::vector<std::string>& args) {
  Daemon daemon(args);
  auto status = daemon.wait_exit(Clock::now() + deadline_after);
  if (!status) {
    ADD_FAILURE() << "vhost-vsockd still running after " << deadline_after.count() << " s";
    return {-1, daemon.output()};
  }
  return {*status, daemon.output()};
}

/// A datagram socket for $NOTIFY_SOCKET, as systemd gives one.
class NotifySocket {
 public:
  explicit NotifySocket(std::string path) : path_(std::move(path)) {
    fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    if (::bind(fd_.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
      throw std::runtime_error(std::string("bind notify socket: ") + std::strerror(errno));
    }
  }
  [[nodiscard]] std::string env() const { return "NOTIFY_SOCKET=" + path_; }

  /// The next datagram, or nothing by the deadline.
  std::optional<std::string> receive(Clock::time_point deadline) {
    pollfd p{fd_.get(), POLLIN, 0};
    if (::poll(&p, 1, millis_until(deadline)) != 1) return std::nullopt;
    char buf[256];
    const ssize_t n = ::recv(fd_.get(), buf, sizeof buf, 0);
    if (n < 0) return std::nullopt;
    return std::string(buf, static_cast<std::size_t>(n));
  }

 private:
  std::string path_;
  UniqueFd fd_;
};

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

/// Binds and listens at `path` (a live socket while the fd is open; a stale socket file of
/// a dead process once it is closed).
UniqueFd listener_at(const std::string& path) {
  UniqueFd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
  EXPECT_EQ(::listen(fd.get(), 4), 0);
  return fd;
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
