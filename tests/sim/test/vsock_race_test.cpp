// Timers of the host side against events in the same event-loop turn.
//
// Asio runs a timer's handler with success once the timer has expired and the handler was
// queued, even if the timer is cancelled or destroyed before the handler runs ("These
// handlers can no longer be cancelled", basic_waitable_timer::cancel). The epoll reactor
// queues ready descriptors before expired timers in the same turn. So when a packet (a kick)
// and a timer's expiry are seen together, the packet's handler runs first; if it destroys
// the object that owns the timer, the timer's handler must not touch it.
//
// The tests construct that turn deterministically: the daemon's thread is held by a task of
// the test, the event happens, the timer falls due, the thread is released. The only wait
// for time is for the daemon's own timer to become due while its thread is held, which no
// event can signal; the ordering itself does not depend on it.
//
// A use after free aborts the process under AddressSanitizer, so each scenario runs in a
// child process (a gtest death test, which must exit 0): a failure fails this test alone,
// shows the sanitizer's report, and the parent still removes the sockets' directory.
#include <sys/socket.h>

#include <future>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "assert_ok.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"

namespace vusim::vsock_test {
namespace {

using namespace vsock_guest;

constexpr auto timeout = 500ms;

/// Holds the daemon's thread with a task of its own until thaw() (or destruction).
class Freeze {
 public:
  explicit Freeze(VsockBackend& backend) : released_(release_.get_future().share()) {
    auto started = started_.get_future();
    backend.post([released = released_, started = &started_] {
      started->set_value(Clock::now());
      released.wait();
    });
    if (started.wait_for(10s) != std::future_status::ready) {
      ADD_FAILURE() << "the daemon's thread did not run a task within 10 s";
      std::abort();
    }
    at_ = started.get();
  }
  ~Freeze() { thaw(); }
  Freeze(const Freeze&) = delete;
  Freeze& operator=(const Freeze&) = delete;

  [[nodiscard]] Clock::time_point at() const { return at_; }
  void thaw() {
    if (thawed_) return;
    thawed_ = true;
    release_.set_value();
  }

 private:
  std::promise<void> release_;
  std::shared_future<void> released_;
  std::promise<Clock::time_point> started_;
  Clock::time_point at_;
  bool thawed_ = false;
};

/// Runs `scenario` in a forked child that must exit with status 0, its sockets in a
/// directory this process owns. The parent has no other thread at that point (the VM, and
/// with it the daemon's thread, only exists in the child), as fork() needs.
void in_child(void (*scenario)(const std::filesystem::path&)) {
  test::TempDir dir;
  const std::string style = GTEST_FLAG_GET(death_test_style);
  GTEST_FLAG_SET(death_test_style, "fast");
  EXPECT_EXIT(
      {
        scenario(dir.path());
        std::fflush(nullptr);
        std::_Exit(::testing::Test::HasFailure() ? 1 : 0);
      },
      ::testing::ExitedWithCode(0), "");
  GTEST_FLAG_SET(death_test_style, style);
}

void guest_rst_with_connect_timeout(const std::filesystem::path& dir) {
  VsockVm vm(VmOptions{.tweak = [](vsock::DeviceConfig& c) { c.connect_timeout = timeout; }, .dir = dir});
  ASSERT_OK(vm.boot());
  auto host = connect_to(vm.backend.uds());
  ASSERT_OK(host);
  ASSERT_OK(write_all(host->get(), "CONNECT 4444\n"));
  auto request = vm.guest().next();
  ASSERT_OK(request);
  ASSERT_EQ(request->op, op_request) << describe(*request);
  // The connect timer was armed when the REQUEST was put in the rx ring, before now.
  const auto due = Clock::now() + timeout;
  {
    Freeze freeze(vm.backend);
    ASSERT_LT(freeze.at() + 50ms, due) << "could not hold the daemon's thread before its timer fell due";
    Conn conn{.port = 4444, .peer_port = request->src_port};
    ASSERT_OK(vm.guest().send(conn.make(op_rst)));  // the guest refuses: a kick the daemon will see...
    std::this_thread::sleep_until(due + 20ms);      // ...in the same turn as the expired timer
    freeze.thaw();
  }
  // The refusal closes the client; the daemon goes on serving.
  EXPECT_OK(expect_eof(host->get()));
  auto listener = listen_at(vm.backend.port_path(4445));
  ASSERT_OK(listener);
  Conn next{.port = 4446, .peer_port = 4445};
  auto answer = guest_connect(vm.guest(), next);
  ASSERT_OK(answer);
  EXPECT_EQ(answer->op, op_response) << describe(*answer);
}

void connect_line_with_handshake_timeout(const std::filesystem::path& dir) {
  VsockVm vm(VmOptions{.tweak = [](vsock::DeviceConfig& c) { c.connect_timeout = timeout; }, .dir = dir});
  ASSERT_OK(vm.boot());
  auto host = connect_to(vm.backend.uds());
  ASSERT_OK(host);
  ASSERT_OK(write_all(host->get(), "CONN"));
  // The daemon accepted the client (and armed its handshake timer) and read the first bytes.
  ASSERT_OK(wait_peer_consumed(host->get()));
  const auto due = Clock::now() + timeout;
  {
    Freeze freeze(vm.backend);
    ASSERT_LT(freeze.at() + 50ms, due) << "could not hold the daemon's thread before its timer fell due";
    ASSERT_OK(write_all(host->get(), "ECT 4447\n"));  // the line completes...
    std::this_thread::sleep_until(due + 20ms);         // ...in the same turn as the expired timer
    freeze.thaw();
  }
  // Either outcome is fine: the line won (the guest gets a REQUEST) or the timeout did (the
  // client is closed). The daemon must go on serving either way.
  auto listener = listen_at(vm.backend.port_path(4448));
  ASSERT_OK(listener);
  Conn next{.port = 4449, .peer_port = 4448};
  ASSERT_OK(vm.guest().send(next.make(op_request)));
  for (;;) {
    auto p = vm.guest().next();
    ASSERT_OK(p);
    if (p->op == op_request && p->dst_port == 4447) continue;  // the line won
    EXPECT_TRUE(next.matches(*p) && p->op == op_response) << describe(*p);
    break;
  }
}

TEST(VsockTimerRace, GuestRstInTheSameTurnAsTheConnectTimeoutIsSafe) { in_child(guest_rst_with_connect_timeout); }

TEST(VsockTimerRace, ConnectLineInTheSameTurnAsTheHandshakeTimeoutIsSafe) {
  in_child(connect_line_with_handshake_timeout);
}

}  // namespace
}  // namespace vusim::vsock_test
