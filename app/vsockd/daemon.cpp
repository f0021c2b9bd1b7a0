#include "daemon.hpp"

#include <atomic>

#include <boost/asio/post.hpp>
#include <boost/json/array.hpp>
#include <boost/json/serialize.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace vsockd {
namespace asio = boost::asio;

namespace {

config::Error no_such_vm(std::uint64_t cid) { return config::Error{fmt::format("no VM with guest_cid {}", cid)}; }

/// Runs `each(i, on_done)` for i in [0, n) and `all` once every on_done has been called
/// (from whichever threads). `all` runs at once when n is 0.
void fan_out(std::size_t n, const std::function<void(std::size_t, std::function<void()>)>& each,
             std::function<void()> all) {
  if (n == 0) return all();
  auto left = std::make_shared<std::atomic<std::size_t>>(n);
  auto shared_all = std::make_shared<std::function<void()>>(std::move(all));
  for (std::size_t i = 0; i < n; ++i) {
    each(i, [left, shared_all] {
      if (left->fetch_sub(1, std::memory_order_acq_rel) == 1) (*shared_all)();
    });
  }
}

}  // namespace

Daemon::Daemon(asio::io_context& io, vsock::Router& router, config::DaemonConfig config)
    : io_(io), router_(router), config_(std::move(config)), strand_(asio::make_strand(io)) {}

Daemon::~Daemon() = default;

config::Result<void> Daemon::start() {
  for (const config::VmConfig& vm : config_.vms) {
    auto started = ServedVm::start(io_, router_, vm);
    if (!started) {
      for (auto& [cid, entry] : vms_) entry.vm->close();  // no handler runs yet: safe here
      vms_.clear();
      return started.error();
    }
    vms_.emplace(vm.guest_cid, Entry{vm, std::move(*started)});
  }
  return {};
}

// --- reports -------------------------------------------------------------------------------

void Daemon::list(bool detailed, std::function<void(std::vector<VmSnapshot>)> done) {
  asio::post(strand_, [this, detailed, done = std::move(done)] {
    std::vector<std::shared_ptr<ServedVm>> vms;
    for (const auto& [cid, entry] : vms_) vms.push_back(entry.vm);
    auto snapshots = std::make_shared<std::vector<VmSnapshot>>(vms.size());
    fan_out(
        vms.size(),
        [&](std::size_t i, std::function<void()> on_done) {
          asio::post(vms[i]->strand(), [vm = vms[i], i, detailed, snapshots, on_done] {
            (*snapshots)[i] = vm->snapshot(detailed);  // each VM writes its own slot
            on_done();
          });
        },
        [this, snapshots, done] { asio::post(strand_, [snapshots, done] { done(std::move(*snapshots)); }); });
  });
}

void Daemon::stats(std::uint64_t cid, Done<VmSnapshot> done) {
  asio::post(strand_, [this, cid, done = std::move(done)] {
    auto it = vms_.find(cid);
    if (it == vms_.end()) return done(no_such_vm(cid));
    auto vm = it->second.vm;
    asio::post(vm->strand(), [this, vm, done] {
      asio::post(strand_, [snapshot = vm->snapshot(true), done] { done(snapshot); });
    });
  });
}

// --- changes -------------------------------------------------------------------------------

void Daemon::enqueue(Change change) {
  asio::post(strand_, [this, change = std::move(change)]() mutable {
    changes_.push_back(std::move(change));
    if (!changing_) run_next();
  });
}

void Daemon::run_next() {
  if (changes_.empty()) {
    changing_ = false;
    return;
  }
  changing_ = true;
  Change change = std::move(changes_.front());
  changes_.pop_front();
  change([this] { asio::post(strand_, [this] { run_next(); }); });
}

config::DaemonConfig Daemon::with_vms(std::vector<config::VmConfig> vms) const {
  config::DaemonConfig c = config_;
  c.vms = std::move(vms);
  return c;
}

config::Result<void> Daemon::start_vm(const config::VmConfig& vm) {
  if (vms_.contains(vm.guest_cid)) return config::Error{fmt::format("a VM with guest_cid {} is served already", vm.guest_cid)};
  std::vector<config::VmConfig> all;
  for (const auto& [cid, entry] : vms_) all.push_back(entry.config);
  all.push_back(vm);
  // Judged as a configuration of every VM would be: the same messages as at start-up.
  if (auto valid = config::validate(with_vms(std::move(all))); !valid) return valid.error();
  if (auto paths = config::check_filesystem(with_vms({vm})); !paths) return paths.error();
  auto started = ServedVm::start(io_, router_, vm);
  if (!started) return started.error();
  vms_.emplace(vm.guest_cid, Entry{vm, std::move(*started)});
  return {};
}

void Daemon::close_vms(const std::vector<std::uint64_t>& cids, Finish closed) {
  std::vector<std::shared_ptr<ServedVm>> vms;
  for (std::uint64_t cid : cids) {
    auto it = vms_.find(cid);
    if (it == vms_.end()) continue;
    vms.push_back(std::move(it->second.vm));
    vms_.erase(it);
  }
  fan_out(
      vms.size(),
      [&](std::size_t i, std::function<void()> on_done) {
        Strand& strand = vms[i]->strand();
        asio::post(strand, [vm = std::move(vms[i]), on_done]() mutable {
          vm->close();
          vm.reset();  // destroyed on its strand, where its handlers run
          on_done();
        });
      },
      [this, closed = std::move(closed)] { asio::post(strand_, closed); });
}

void Daemon::add(std::string vm_argument, Done<void> done) {
  enqueue([this, vm_argument = std::move(vm_argument), done = std::move(done)](Finish finish) {
    auto result = [&]() -> config::Result<void> {
      if (stopping_) return config::Error{"the daemon is shutting down"};
      auto vm = config::parse_vm_argument(vm_argument, "add");
      if (!vm) return vm.error();
      return start_vm(*vm);
    }();
    done(result);
    finish();
  });
}

void Daemon::remove(std::uint64_t cid, Done<void> done) {
  enqueue([this, cid, done = std::move(done)](Finish finish) {
    if (!vms_.contains(cid)) {
      done(no_such_vm(cid));
      return finish();
    }
    spdlog::info("cid {}: removing", cid);
    close_vms({cid}, [done, finish] {
      done(config::Result<void>{});
      finish();
    });
  });
}

void Daemon::regroup(Entry& entry, const config::Groups& groups, Finish applied) {
  entry.config.groups = groups;
  spdlog::info("cid {}: groups {}", entry.config.guest_cid, fmt::join(groups, "+"));
  asio::post(entry.vm->strand(), [this, vm = entry.vm, groups, applied = std::move(applied)] {
    vm->set_groups(groups);
    asio::post(strand_, applied);
  });
}

void Daemon::set_groups(std::uint64_t cid, std::string groups, Done<void> done) {
  enqueue([this, cid, groups = std::move(groups), done = std::move(done)](Finish finish) {
    auto checked = [&]() -> config::Result<config::Groups> {
      if (!vms_.contains(cid)) return no_such_vm(cid);
      // The groups go through the --vm key's parser and the whole configuration's checks.
      auto parsed = config::parse_groups(groups);
      if (!parsed) return parsed.error();
      std::vector<config::VmConfig> all;
      for (const auto& [c, entry] : vms_) {
        all.push_back(entry.config);
        if (c == cid) all.back().groups = *parsed;
      }
      if (auto valid = config::validate(with_vms(std::move(all))); !valid) return valid.error();
      return parsed;
    }();
    if (!checked) {
      done(checked.error());
      return finish();
    }
    // Answered once the VM has its new groups (and the connections across a removed one
    // have been reset), so that what the client does next sees them.
    regroup(vms_.at(cid), *checked, [done, finish] {
      done(config::Result<void>{});
      finish();
    });
  });
}

void Daemon::reload(Done<std::string> done) {
  enqueue([this, done = std::move(done)](Finish finish) {
    if (stopping_) {
      done(config::Error{"the daemon is shutting down"});
      return finish();
    }
    if (!config_.config_file) {
      done(config::Error{"nothing to reload: the daemon was not started with --config"});
      return finish();
    }
    auto loaded = config::reload_vms(*config_.config_file);
    if (loaded) {
      // The file's VMs with this daemon's global settings (a --control-socket flag may
      // differ from the file's key, and wins).
      if (auto valid = config::validate(with_vms(*loaded)); !valid) loaded = valid.error();
    }
    if (!loaded) {
      spdlog::error("reload: {}: nothing changed", loaded.error().message);
      done(loaded.error());
      return finish();
    }
    struct Plan {
      std::vector<config::VmConfig> start;
      std::vector<config::VmConfig> regroups;
      std::vector<std::uint64_t> stop;
      std::vector<std::uint64_t> added, removed, restarted, regrouped;
    };
    auto plan = std::make_shared<Plan>();
    std::map<std::uint64_t, const config::VmConfig*> wanted;
    for (const auto& vm : *loaded) wanted.emplace(vm.guest_cid, &vm);
    for (const auto& [cid, entry] : vms_) {
      if (!wanted.contains(cid)) {
        plan->stop.push_back(cid);
        plan->removed.push_back(cid);
      }
    }
    for (const auto& [cid, vm] : wanted) {
      auto it = vms_.find(cid);
      if (it == vms_.end()) {
        plan->start.push_back(*vm);
        plan->added.push_back(cid);
        continue;
      }
      config::VmConfig regrouped = it->second.config;
      regrouped.groups = vm->groups;
      if (regrouped != *vm) {
        plan->stop.push_back(cid);
        plan->start.push_back(*vm);
        plan->restarted.push_back(cid);
      } else if (it->second.config.groups != vm->groups) {
        plan->regrouped.push_back(cid);
        plan->regroups.push_back(*vm);
      }
    }
    // Regroups, then removals, each to their end (a path a removed VM held may belong to an
    // added one), then additions.
    auto additions = [this, plan, done, finish] {
      boost::json::array failed;
      for (const auto& vm : plan->start) {
        if (auto ok = start_vm(vm); !ok) {
          spdlog::error("reload: {}", ok.error().message);
          failed.push_back({{"guest_cid", vm.guest_cid}, {"error", ok.error().message}});
        }
      }
      auto cids = [](const std::vector<std::uint64_t>& v) { return boost::json::array(v.begin(), v.end()); };
      boost::json::object summary{{"added", cids(plan->added)},
                                  {"removed", cids(plan->removed)},
                                  {"restarted", cids(plan->restarted)},
                                  {"regrouped", cids(plan->regrouped)},
                                  {"failed", std::move(failed)}};
      std::string text = boost::json::serialize(summary);
      spdlog::info("reload: {}", text);
      done(config::Result<std::string>(boost::system::in_place_value, text + "\n"));
      finish();
    };
    auto removals = [this, plan, additions = std::move(additions)] { close_vms(plan->stop, additions); };
    fan_out(
        plan->regroups.size(),
        [&](std::size_t i, std::function<void()> on_done) {
          regroup(vms_.at(plan->regroups[i].guest_cid), plan->regroups[i].groups, std::move(on_done));
        },
        std::move(removals));
  });
}

void Daemon::shutdown() {
  enqueue([this](Finish finish) {
    stopping_ = true;
    std::vector<std::uint64_t> all;
    for (const auto& [cid, entry] : vms_) all.push_back(cid);
    close_vms(all, [this, finish] {
      io_.stop();
      finish();
    });
  });
}

}  // namespace vsockd
