#pragma once
// VMs served the way vhost-vsockd serves them (app/vsockd/main.cpp): one io_context run by a
// pool of worker threads, every VM's device and vhost-user server on a strand of its own,
// all VMs on one sibling router. vsock_fixture.hpp gives each VM a thread of its own
// instead; this one is for tests about what VMs sharing the pool do to each other.
//
// Everything of a VM's daemon side runs on its strand: the device and the server are made,
// looked at and closed there (on_strand), never from the test thread while the pool runs.
// The simulator's side of a VM (front-end, guest RAM, guest driver) belongs to one test
// thread at a time, as in vsock_fixture.hpp.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <gtest/gtest.h>

#include "backend_fixture.hpp"
#include "vhostuser/server.hpp"
#include "vsock/config.hpp"
#include "vsock/device.hpp"
#include "vsock/router.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"
#include "vusim/frontend.hpp"
#include "vusim/sequences.hpp"

namespace vusim::vsock_test {

/// One io_context and the worker threads that run it, until destroyed (the daemon's pool).
class WorkerPool {
 public:
  explicit WorkerPool(unsigned threads);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  [[nodiscard]] boost::asio::io_context& io() { return io_; }
  [[nodiscard]] std::size_t size() const { return threads_.size(); }

 private:
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::vector<std::jthread> threads_;
};

using Strand = boost::asio::strand<boost::asio::io_context::executor_type>;

/// Runs `fn` on `strand` (on whichever worker takes it) and returns its result.
template <class Fn>
auto run_on_strand(const Strand& strand, Fn fn) -> decltype(fn()) {
  std::packaged_task<decltype(fn())()> task(std::move(fn));
  auto result = task.get_future();
  boost::asio::post(strand, std::move(task));
  if (result.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
    ADD_FAILURE() << "a VM's strand did not run a task within 10 s";
    std::abort();  // the task still references the caller's frame: nothing safe is left to do
  }
  return result.get();
}

/// The daemon's side of one VM: its VsockDevice and vhost-user server on a strand of `pool`.
class PooledBackend {
 public:
  /// `tweak` adjusts the device configuration (uds_path and guest_cid are set before it runs).
  PooledBackend(WorkerPool& pool, const std::function<void(vsock::DeviceConfig&)>& tweak, vsock::Router* router);
  ~PooledBackend();
  PooledBackend(const PooledBackend&) = delete;
  PooledBackend& operator=(const PooledBackend&) = delete;

  [[nodiscard]] const std::filesystem::path& socket() const { return socket_; }
  [[nodiscard]] const std::filesystem::path& uds() const { return config_.uds_path; }
  [[nodiscard]] std::filesystem::path port_path(std::uint32_t port) const {
    return config_.uds_path.native() + "_" + std::to_string(port);
  }
  [[nodiscard]] const vsock::DeviceConfig& config() const { return config_; }

  /// Runs `fn` on this VM's strand and returns its result.
  template <class Fn>
  auto on_strand(Fn fn) -> decltype(fn()) {
    return run_on_strand(strand_, std::move(fn));
  }

 private:
  test::TempDir dir_;
  std::filesystem::path socket_;
  vsock::DeviceConfig config_;
  Strand strand_;
  std::unique_ptr<vsock::VsockDevice> device_;
  std::unique_ptr<vhostuser::Server> server_;
};

/// One VM on the pool: the backend, guest RAM, QEMU's state, the front-end and the guest
/// driver (VmOptions::dir is not used: the sockets go into a directory of the backend's own).
/// Prints the vhost-user conversation if the test failed.
class PooledVm {
 public:
  PooledVm(WorkerPool& pool, VmOptions options);
  ~PooledVm();

  /// QEMU realize + start, then the guest posts its rx buffers (if any), then a round trip
  /// so that the device has taken the last start messages: the VM is reachable by siblings.
  Result<void> boot();
  /// QEMU goes away: the vhost-user connection closes (the guest's memory and rings stay).
  void kill_frontend() { fe_.reset(); }

  vsock_guest::Guest& guest() { return *guest_; }

  VmOptions options_;
  std::vector<std::string> log;
  PooledBackend backend;
  GuestRam ram;
  VhostDev dev;

 private:
  std::optional<Frontend> fe_;
  std::optional<vsock_guest::Guest> guest_;
};

/// A guest socket of `vm` connected to a host listener at <uds>_<host_port>, and the host's
/// accepted end (as establish() of vsock_fixture.hpp).
Result<Established> establish(PooledVm& vm, std::uint32_t host_port, std::uint32_t guest_port);

}  // namespace vusim::vsock_test
