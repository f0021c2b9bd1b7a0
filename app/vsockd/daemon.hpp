#pragma once
// The set of VMs one vhost-vsockd serves, and every change to it at run time: the control
// socket's commands and SIGHUP (docs/usage.md, "Runtime control").
//
// The table of VMs lives on the daemon's own strand. Changes (add, remove, groups, reload,
// shutdown) run one at a time in order of arrival, each to its end, including the closing
// of removed VMs on their strands: a reload that moves a socket path from one VM to another
// therefore never finds the path still bound, and no two changes interleave. Reports (list,
// stats, metrics) do not wait for changes: they snapshot each VM on its strand.
//
// A VM is always removed the same way, by ctl, by a reload or at shutdown: it leaves the
// table, then closes on its own strand (front-end disconnected, host connections closed,
// sibling connections reset, sockets removed) and is destroyed there.
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "config/daemon_config.hpp"
#include "served_vm.hpp"
#include "vm_report.hpp"
#include "vsock/router.hpp"

namespace vsockd {

class Daemon {
 public:
  template <class T>
  using Done = std::function<void(config::Result<T>)>;

  /// `router` must outlive the io_context: a VM whose close is still queued when the
  /// io_context stops is destroyed with the io_context's handlers, and leaves the router then.
  Daemon(boost::asio::io_context& io, vsock::Router& router, config::DaemonConfig config);
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  /// Before any worker thread runs: starts every configured VM, all or nothing (if one cannot
  /// bind, the ones started are closed again, removing their sockets).
  config::Result<void> start();

  // Each of the following may be called from any thread. `done` runs on the daemon's strand.

  /// Every VM, in CID order.
  void list(bool detailed, std::function<void(std::vector<VmSnapshot>)> done);
  /// One VM, with its connections.
  void stats(std::uint64_t cid, Done<VmSnapshot> done);
  /// Starts a VM given as a --vm value; refused as a configuration of all VMs would be
  /// (duplicate CID or path, bad value), or if it cannot bind.
  void add(std::string vm_argument, Done<void> done);
  /// Removes a VM; done once it is closed and its sockets are gone.
  void remove(std::uint64_t cid, Done<void> done);
  /// New groups for a VM, as `g1+g2`.
  void set_groups(std::uint64_t cid, std::string groups, Done<void> done);
  /// Re-reads the --config file and applies the difference: VMs gone from the file are
  /// removed, new ones added, a VM whose groups alone changed is regrouped in place, and a
  /// VM with any other change is removed and added again. An invalid file changes nothing.
  /// The body says what was done, as JSON.
  void reload(Done<std::string> done);
  /// Removes every VM, then stops the io_context. Further changes are refused.
  void shutdown();

 private:
  struct Entry {
    config::VmConfig config;  // as it is now (groups follow set_groups)
    std::shared_ptr<ServedVm> vm;
  };
  using Finish = std::function<void()>;
  using Change = std::function<void(Finish)>;

  /// Queues a change; it runs on the strand once the ones before it have finished.
  void enqueue(Change change);
  void run_next();
  /// Takes VMs out of the table and closes each on its strand; `closed` runs on the
  /// daemon's strand once all are.
  void close_vms(const std::vector<std::uint64_t>& cids, Finish closed);
  /// Starts one VM (on the daemon's strand), after checking it against the others.
  config::Result<void> start_vm(const config::VmConfig& vm);
  /// The whole configuration the table would be with `vms` (for validate()).
  config::DaemonConfig with_vms(std::vector<config::VmConfig> vms) const;
  /// New groups for a VM: recorded in the table, applied on the VM's strand; `applied` then
  /// runs on the daemon's strand.
  void regroup(Entry& entry, const config::Groups& groups, Finish applied);

  boost::asio::io_context& io_;
  vsock::Router& router_;
  config::DaemonConfig config_;  // vms: as started; the table is the truth afterwards
  Strand strand_;
  std::map<std::uint64_t, Entry> vms_;
  std::deque<Change> changes_;
  bool changing_ = false;
  bool stopping_ = false;
};

}  // namespace vsockd
