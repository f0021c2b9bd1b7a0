// Out-of-process: the real vhost-user-rng binary, started the way systemd starts it (readiness
// through $NOTIFY_SOCKET), driven by the vusim command for every QEMU sequence with pause/resume
// and reconnect, then stopped with SIGTERM. No sleeps: every wait is a poll(2) on the notify
// socket or on a pidfd, with a deadline. Only the processes started here are signalled, by PID.
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
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "backend_fixture.hpp"
#include "vhostuser/unique_fd.hpp"
#include "vusim/rng.hpp"
#include "vusim/sequences.hpp"

extern char** environ;

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using vhostuser::UniqueFd;
using vusim::test::TempDir;

/// A child process we started; killed (SIGKILL, by PID) and reaped if still running when
/// the test ends, so a failing test leaves nothing behind.
class Child {
 public:
  /// Starts `argv` with `extra_env` added to ours, stdout and stderr into `output`.
  static Child spawn(const std::vector<std::string>& argv, const std::vector<std::string>& extra_env,
                     const std::filesystem::path& output) {
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    std::vector<std::string> env_strings(extra_env);
    for (char** e = environ; *e != nullptr; ++e) env_strings.emplace_back(*e);
    std::vector<char*> env;
    for (auto& e : env_strings) env.push_back(e.data());
    env.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, output.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    Child c;
    const int rc = ::posix_spawn(&c.pid_, args[0], &actions, nullptr, args.data(), env.data());
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error(fmt::format("posix_spawn {}: {}", argv[0], std::strerror(rc)));
    c.pidfd_.reset(static_cast<int>(::syscall(SYS_pidfd_open, c.pid_, 0)));
    if (!c.pidfd_) {
      c.kill_and_reap();
      throw std::runtime_error(fmt::format("pidfd_open: {} (needs Linux 5.3)", std::strerror(errno)));
    }
    return c;
  }

  Child() = default;
  Child(Child&& o) noexcept : pid_(std::exchange(o.pid_, -1)), pidfd_(std::move(o.pidfd_)) {}
  Child& operator=(Child&&) = delete;
  ~Child() { kill_and_reap(); }

  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] int pidfd() const { return pidfd_.get(); }

  /// The wait status once the child exits, or nothing if it is still running at `deadline`.
  std::optional<int> wait_exit(Clock::time_point deadline) {
    for (;;) {
      pollfd p{pidfd_.get(), POLLIN, 0};
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
      const int n = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left, 0)));
      if (n > 0) {
        int status = 0;
        if (::waitpid(pid_, &status, 0) != pid_) return std::nullopt;
        pid_ = -1;
        return status;
      }
      if (n < 0 && errno != EINTR) return std::nullopt;
      if (Clock::now() >= deadline) return std::nullopt;
    }
  }

  void signal(int signo) const {
    if (pid_ > 0) ::kill(pid_, signo);
  }

 private:
  void kill_and_reap() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    int status;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
  }

  pid_t pid_ = -1;
  UniqueFd pidfd_;
};

std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string describe(int status) {
  if (WIFEXITED(status)) return fmt::format("exit status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return fmt::format("killed by signal {}", WTERMSIG(status));
  return fmt::format("wait status {:#x}", status);
}

/// vhost-user-rng started with $NOTIFY_SOCKET, ready once it sent READY=1.
class RngBackend {
 public:
  explicit RngBackend(const TempDir& dir)
      : socket_(dir.path() / "rng.sock"),
        notify_path_(dir.path() / "notify.sock"),
        log_(dir.path() / "backend.log") {
    notify_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, notify_path_.c_str(), sizeof addr.sun_path - 1);
    if (!notify_ || ::bind(notify_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      throw std::runtime_error(
          fmt::format("notify socket {}: {}", notify_path_.native(), std::strerror(errno)));
    }
    child_.emplace(Child::spawn({VUSIM_RNG_BACKEND, "--socket", socket_.native()},
                                {"NOTIFY_SOCKET=" + notify_path_.native()}, log_));
  }

  /// Waits for READY=1; fails if the backend exits first or the deadline passes.
  ::testing::AssertionResult wait_ready(std::chrono::seconds timeout) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      pollfd fds[2] = {{notify_.get(), POLLIN, 0}, {child_->pidfd(), POLLIN, 0}};
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
      const int n = ::poll(fds, 2, static_cast<int>(std::max<std::int64_t>(left, 0)));
      if (n < 0 && errno != EINTR) return ::testing::AssertionFailure() << "poll: " << std::strerror(errno);
      if ((fds[1].revents & POLLIN) != 0) {
        return ::testing::AssertionFailure() << "vhost-user-rng exited before READY=1:\n" << slurp(log_);
      }
      if ((fds[0].revents & POLLIN) != 0) {
        char buf[256];
        const ssize_t got = ::recv(notify_.get(), buf, sizeof buf, 0);
        if (got > 0 &&
            std::string_view(buf, static_cast<std::size_t>(got)).find("READY=1") != std::string_view::npos) {
          return ::testing::AssertionSuccess();
        }
        continue;
      }
      if (Clock::now() >= deadline) {
        return ::testing::AssertionFailure() << "no READY=1 within " << timeout.count() << " s:\n"
                                             << slurp(log_);
      }
    }
  }

  /// SIGTERM, then the exit status within `timeout` (nothing if it did not exit).
  std::optional<int> terminate(std::chrono::seconds timeout) {
    child_->signal(SIGTERM);
    return child_->wait_exit(Clock::now() + timeout);
  }

  [[nodiscard]] const std::filesystem::path& socket() const { return socket_; }
  [[nodiscard]] std::string log() const { return slurp(log_); }

 private:
  std::filesystem::path socket_, notify_path_, log_;
  UniqueFd notify_;
  std::optional<Child> child_;
};

struct CliRun {
  std::optional<int> status;  ///< nothing: still running at the deadline (then killed)
  std::string output;
};

CliRun run_vusim(const TempDir& dir, std::vector<std::string> args, std::chrono::seconds timeout) {
  const auto out = dir.path() / "vusim.log";
  args.insert(args.begin(), VUSIM_CLI);
  Child c = Child::spawn(args, {}, out);
  CliRun r;
  r.status = c.wait_exit(Clock::now() + timeout);
  r.output = slurp(out);
  return r;
}

TEST(VhostUserRngProcess, ServesEverySequenceThenExitsCleanlyOnSigterm) {
  TempDir dir;
  RngBackend backend(dir);
  ASSERT_TRUE(backend.wait_ready(30s));
  for (const char* sequence : {"pre-7.2", "qemu-7.2", "qemu-8.2"}) {
    const CliRun r = run_vusim(
        dir,
        {"--socket", backend.socket().native(), "--sequence", sequence, "--device", "rng", "--bytes", "1M",
         "--buffer-size", "65536", "--regions", "2", "--pause-resume", "--reconnect"},
        120s);
    ASSERT_TRUE(r.status) << sequence << ": vusim still running after 120 s:\n" << r.output;
    EXPECT_TRUE(WIFEXITED(*r.status) && WEXITSTATUS(*r.status) == 0)
        << sequence << ": " << describe(*r.status) << "\n"
        << r.output << "\nbackend:\n"
        << backend.log();
    EXPECT_NE(r.output.find("vusim: ok"), std::string::npos) << r.output;
    std::cout << r.output;  // the bytes/s figures of each phase
  }
  const auto status = backend.terminate(30s);
  ASSERT_TRUE(status) << "vhost-user-rng did not exit within 30 s of SIGTERM:\n" << backend.log();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << describe(*status) << "\n" << backend.log();
  EXPECT_FALSE(std::filesystem::exists(backend.socket())) << "socket file left behind";
}

TEST(VhostUserRngProcess, ExitsCleanlyOnSigtermWithAVmConnected) {
  TempDir dir;
  RngBackend backend(dir);
  ASSERT_TRUE(backend.wait_ready(30s));
  auto ram = vusim::GuestRam::contiguous(4 << 20);
  ASSERT_TRUE(ram) << ram.error();
  vusim::VhostDev dev(vusim::DeviceModel::rng(), *ram);
  auto fe = vusim::Frontend::connect(backend.socket(), {.timeout = 5000ms, .trace = {}});
  ASSERT_TRUE(fe) << fe.error();
  auto ok = vusim::qemu82_realize(*fe, dev);
  ASSERT_TRUE(ok) << ok.error();
  ok = vusim::qemu82_start(*fe, dev);
  ASSERT_TRUE(ok) << ok.error();
  auto stats = vusim::read_entropy(dev.drivers[0], dev.ram, 65536, 4096, 5s);
  ASSERT_TRUE(stats) << stats.error();

  const auto status = backend.terminate(30s);
  ASSERT_TRUE(status) << "vhost-user-rng did not exit within 30 s of SIGTERM:\n" << backend.log();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << describe(*status) << "\n" << backend.log();
  EXPECT_FALSE(std::filesystem::exists(backend.socket())) << "socket file left behind";
  auto after = fe->get_features();
  ASSERT_FALSE(after);
  EXPECT_EQ(after.error().fault, vusim::Fault::closed) << after.error();
}

TEST(VusimCommand, ReportsAnUnreachableBackend) {
  TempDir dir;
  const CliRun r =
      run_vusim(dir, {"--socket", (dir.path() / "nobody.sock").native(), "--sequence", "qemu-7.2"}, 30s);
  ASSERT_TRUE(r.status) << r.output;
  EXPECT_TRUE(WIFEXITED(*r.status) && WEXITSTATUS(*r.status) == 1) << describe(*r.status) << "\n" << r.output;
  EXPECT_NE(r.output.find("cannot connect to"), std::string::npos) << r.output;
}

TEST(VusimCommand, RejectsAnUnknownSequence) {
  TempDir dir;
  const CliRun r =
      run_vusim(dir, {"--socket", (dir.path() / "x.sock").native(), "--sequence", "qemu-1.0"}, 30s);
  ASSERT_TRUE(r.status) << r.output;
  EXPECT_TRUE(WIFEXITED(*r.status) && WEXITSTATUS(*r.status) != 0) << describe(*r.status) << "\n" << r.output;
  EXPECT_NE(r.output.find("qemu-1.0"), std::string::npos) << r.output;
}

}  // namespace
