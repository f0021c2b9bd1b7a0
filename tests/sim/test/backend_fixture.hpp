#pragma once
// An in-process backend for the simulator to talk to: vhostuser::Server serving a device on
// its own io_context thread, listening in a fresh temporary directory.
#include <chrono>
#include <filesystem>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "vhostuser/device.hpp"
#include "vhostuser/server.hpp"
#include "vusim/frontend.hpp"

namespace vusim::test {

/// A directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

/// Runs `fn` on the thread that runs `io` and returns its result (the backend fixtures'
/// only race-free way to look at a device or server while it runs).
template <class Fn>
auto run_on(boost::asio::io_context& io, Fn fn) -> decltype(fn()) {
  std::packaged_task<decltype(fn())()> task(std::move(fn));
  auto result = task.get_future();
  boost::asio::post(io, std::move(task));
  if (result.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    ADD_FAILURE() << "backend thread did not run a task within 10 s";
    std::abort();  // the task still references the caller's frame: nothing safe is left to do
  }
  return result.get();
}

class Backend {
 public:
  /// Listens on <tempdir>/backend.sock and starts serving `device` at once.
  explicit Backend(vhostuser::Device& device);
  ~Backend();
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  [[nodiscard]] const std::filesystem::path& socket() const { return socket_; }

  /// Runs `fn` on the backend's thread and returns its result: the only race-free way to
  /// look at the device or the server while they run.
  template <class Fn>
  auto on_backend(Fn fn) -> decltype(fn()) {
    return run_on(io_, std::move(fn));
  }

  [[nodiscard]] std::size_t connections_served() {
    return on_backend([this] { return server_->connections_served(); });
  }

 private:
  TempDir dir_;
  std::filesystem::path socket_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::unique_ptr<vhostuser::Server> server_;
  std::thread thread_;
};

/// Front-end options for tests: a 5 s deadline, and every message kept in `log` so that a
/// failing test can show the conversation.
Frontend::Options traced_options(std::vector<std::string>& log);

/// Prints `log` when the current test has failed.
void dump_on_failure(const std::vector<std::string>& log);

/// Waits until `fd` is readable (an eventfd was signalled), with poll(2).
bool wait_readable(int fd, std::chrono::milliseconds timeout);

/// Waits until the backend has read `eventfd` (it is no longer readable). There is no event
/// for "became unreadable", so this polls its state, with a deadline.
bool wait_drained(int eventfd, std::chrono::milliseconds timeout);

}  // namespace vusim::test
