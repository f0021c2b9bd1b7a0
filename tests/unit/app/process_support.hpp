#pragma once
// Running the real vhost-vsockd binary from a test: a started daemon (killed by PID when the
// test ends), its output, its exit status, and a $NOTIFY_SOCKET. No sleeps: every wait is a
// poll(2) on a pidfd, a pipe or a socket, with a deadline.
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
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

#include "vhostuser/unique_fd.hpp"

extern char** environ;

namespace vsockd::config::test {


using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using vhostuser::UniqueFd;

inline constexpr auto deadline_after = 30s;  // generous: the binary runs under ASan on a busy machine

inline int millis_until(Clock::time_point deadline) {
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
  [[nodiscard]] pid_t pid() const { return pid_; }

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

  /// Reads the output until it holds `text` (true), or until the deadline or EOF (false).
  bool wait_output(std::string_view text, Clock::time_point deadline) {
    while (text_.find(text) == std::string::npos) {
      if (!output_) return false;
      pollfd p{output_.get(), POLLIN, 0};
      if (::poll(&p, 1, millis_until(deadline)) != 1) return false;
      drain();
    }
    return true;
  }

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
inline std::pair<int, std::string> run_to_exit(const std::vector<std::string>& args) {
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

/// Binds and listens at `path` (a live socket while the fd is open; a stale socket file of
/// a dead process once it is closed).
inline UniqueFd listener_at(const std::string& path) {
  UniqueFd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
  EXPECT_EQ(::listen(fd.get(), 4), 0);
  return fd;
}

}  // namespace vsockd::config::test
