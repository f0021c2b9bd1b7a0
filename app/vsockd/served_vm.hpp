#pragma once
// One VM the daemon serves: its vsock device and its vhost-user server, on a strand of its
// own. Everything of the VM runs on that strand (the server, the device, their timers and
// watchers), so a VM's work is serialised while VMs spread over the worker threads.
//
// Threads: start() runs before any handler of the VM can (nothing is queued on its strand
// yet); close(), set_groups() and snapshot() must run on the strand. A ServedVm is destroyed
// on its strand too, after close(), or once no thread runs the io_context any more.
#include <memory>

#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>

#include "config/daemon_config.hpp"
#include "vhostuser/server.hpp"
#include "vm_report.hpp"
#include "vsock/device.hpp"
#include "vsock/router.hpp"

namespace vsockd {

using Strand = boost::asio::strand<boost::asio::io_context::executor_type>;

class ServedVm {
 public:
  /// Binds the VM's host side, then its vhost-user socket (QEMU may connect as soon as that
  /// one listens, and the device must be ready by then), and starts serving. On failure
  /// nothing of the VM is left bound, and the message says which path and why.
  static config::Result<std::unique_ptr<ServedVm>> start(boost::asio::io_context& io, vsock::Router& router,
                                                         const config::VmConfig& config);
  ~ServedVm();
  ServedVm(const ServedVm&) = delete;
  ServedVm& operator=(const ServedVm&) = delete;

  [[nodiscard]] Strand& strand() { return strand_; }

  /// Stops serving: the front-end is disconnected, host connections are closed, sibling
  /// connections end with RST on the other side, and the VM's socket files are removed.
  void close();
  /// New groups (see vsock::VsockDevice::set_groups).
  void set_groups(const config::Groups& groups);
  /// The VM's state and counters; `detailed` adds its connections.
  [[nodiscard]] VmSnapshot snapshot(bool detailed) const;

 private:
  ServedVm(boost::asio::io_context& io, vsock::Router& router, const config::VmConfig& config);

  Strand strand_;
  vsock::Router& router_;
  vsock::VsockDevice device_;
  std::unique_ptr<vhostuser::Server> server_;  // refers to device_: declared after it, goes first
};

}  // namespace vsockd
