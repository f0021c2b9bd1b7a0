// Out of process: the control socket of the real vhost-vsockd and its client, `vhost-vsockd
// ctl`, and SIGHUP. Every change made here is checked by what the daemon reports afterwards
// and by the socket files on disk. Waits are polls with deadlines (process_support.hpp).
#include <sys/stat.h>

#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <boost/json/parse.hpp>
#include <fmt/format.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config_test_support.hpp"
#include "process_support.hpp"

namespace vsockd::config {
namespace {

namespace json = boost::json;
using test::Clock;
using test::Daemon;
using test::deadline_after;
using test::NotifySocket;
using test::run_to_exit;
using testing::HasSubstr;
using vhostuser::UniqueFd;

/// A daemon with a control socket in a directory of its own, up and ready.
class ControlledDaemon {
 public:
  explicit ControlledDaemon(const std::vector<std::string>& args)
      : notify_(dir_ / "notify"), ctl_(dir_ / "ctl") {
    std::vector<std::string> all{"--control-socket", ctl_};
    all.insert(all.end(), args.begin(), args.end());
    daemon_ = std::make_unique<Daemon>(all, std::vector<std::string>{notify_.env()});
    ready_ = notify_.receive(Clock::now() + deadline_after) == std::optional<std::string>{"READY=1"};
  }

  [[nodiscard]] bool ready() const { return ready_; }
  [[nodiscard]] const test::TempDir& dir() const { return dir_; }
  [[nodiscard]] const std::string& ctl_path() const { return ctl_; }
  Daemon& process() { return *daemon_; }

  /// `vhost-vsockd ctl -s CTL words...`: exit status and output.
  std::pair<int, std::string> ctl(const std::vector<std::string>& words) const {
    std::vector<std::string> args{"ctl", "-s", ctl_};
    args.insert(args.end(), words.begin(), words.end());
    return run_to_exit(args);
  }
  /// A command that must succeed: its output.
  std::string ctl_ok(const std::vector<std::string>& words) const {
    auto [status, output] = ctl(words);
    EXPECT_EQ(status, 0) << output;
    return output;
  }
  /// `list`, as CID -> the VM's JSON object.
  std::map<std::uint64_t, json::object> list() const {
    std::map<std::uint64_t, json::object> vms;
    const json::value parsed = json::parse(ctl_ok({"list"}));
    for (const auto& vm : parsed.at("vms").as_array()) vms[vm.at("guest_cid").to_number<std::uint64_t>()] = vm.as_object();
    return vms;
  }
  /// A --vm value for CID `cid` with sockets in the directory.
  std::string vm_argument(std::uint64_t cid, const std::string& groups) const {
    return fmt::format("guest-cid={},socket={},uds-path={},groups={}", cid, dir_ / fmt::format("vm{}.vhost", cid),
                       dir_ / fmt::format("vm{}.vsock", cid), groups);
  }
  [[nodiscard]] bool sockets_of(std::uint64_t cid) const {
    return std::filesystem::is_socket(dir_ / fmt::format("vm{}.vhost", cid)) &&
           std::filesystem::is_socket(dir_ / fmt::format("vm{}.vsock", cid)) &&
           std::filesystem::is_socket(dir_ / fmt::format("vm{}.vsock_seqpacket", cid));
  }
  [[nodiscard]] bool no_socket_of(std::uint64_t cid) const {
    for (const char* suffix : {".vhost", ".vsock", ".vsock_seqpacket"}) {
      if (std::filesystem::exists(dir_ / fmt::format("vm{}{}", cid, suffix))) return false;
    }
    return true;
  }

 private:
  test::TempDir dir_;
  NotifySocket notify_;
  std::string ctl_;
  std::unique_ptr<Daemon> daemon_;
  bool ready_ = false;
};

std::vector<std::string> groups_of(const json::object& vm) {
  std::vector<std::string> out;
  for (const auto& g : vm.at("groups").as_array()) out.emplace_back(g.as_string());
  return out;
}

TEST(VsockdControl, ListsAddsRegroupsAndRemovesVms) {
  test::TempDir scratch;
  ControlledDaemon d({"--vm", fmt::format("guest-cid=4,socket={},uds-path={},groups=a+b", scratch / "x", scratch / "y")});
  // The first VM's sockets are elsewhere; every later one lives in the daemon's directory.
  ASSERT_TRUE(d.ready()) << d.process().output();

  struct stat st {};
  ASSERT_EQ(::stat(d.ctl_path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "the control socket is the owner's only";

  auto vms = d.list();
  ASSERT_EQ(vms.size(), 1u);
  EXPECT_EQ(groups_of(vms[4]), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(vms[4].at("state").as_string(), "listening");
  EXPECT_EQ(vms[4].at("counters").at("tx").at("packets").to_number<int>(), 0);

  EXPECT_EQ(d.ctl_ok({"add", d.vm_argument(5, "b")}), "");
  EXPECT_TRUE(d.sockets_of(5));
  auto [status, output] = d.ctl({"add", d.vm_argument(4, "b")});
  EXPECT_EQ(status, 1);
  EXPECT_THAT(output, HasSubstr("a VM with guest_cid 4 is served already"));
  std::tie(status, output) = d.ctl({"add", fmt::format("guest-cid=6,socket={},uds-path={}", d.dir() / "vm5.vhost",
                                                       d.dir() / "vm6.vsock")});
  EXPECT_EQ(status, 1);
  EXPECT_THAT(output, HasSubstr("vm5.vhost"));  // the path another VM has
  std::tie(status, output) = d.ctl({"add", d.vm_argument(7, "b") + ",queue-size=100"});
  EXPECT_EQ(status, 1);
  EXPECT_THAT(output, HasSubstr("queue_size 100 is not a power of two"));
  EXPECT_TRUE(d.no_socket_of(6));
  EXPECT_TRUE(d.no_socket_of(7));

  EXPECT_EQ(d.ctl_ok({"groups", "5", "c+d"}), "");
  std::tie(status, output) = d.ctl({"groups", "5", "c++d"});
  EXPECT_EQ(status, 1);
  EXPECT_THAT(output, HasSubstr("empty group name"));
  std::tie(status, output) = d.ctl({"groups", "9", "c"});
  EXPECT_EQ(status, 1);
  EXPECT_THAT(output, HasSubstr("no VM with guest_cid 9"));

  vms = d.list();
  ASSERT_EQ(vms.size(), 2u);
  EXPECT_EQ(groups_of(vms[5]), (std::vector<std::string>{"c", "d"}));

  const json::value stats = json::parse(d.ctl_ok({"stats", "5"}));
  EXPECT_EQ(stats.at("guest_cid").to_number<int>(), 5);
  EXPECT_TRUE(stats.at("host_connections").as_array().empty());
  EXPECT_TRUE(stats.at("sibling_connections").as_array().empty());

  const std::string metrics = d.ctl_ok({"metrics"});
  EXPECT_THAT(metrics, HasSubstr("vhost_vsockd_vms 2\n"));
  EXPECT_THAT(metrics, HasSubstr("vhost_vsockd_vm_state{cid=\"5\",state=\"listening\"} 1\n"));
  EXPECT_THAT(metrics, HasSubstr("vhost_vsockd_drops_total{cid=\"4\",reason=\"no_shared_group\"} 0\n"));

  EXPECT_EQ(d.ctl_ok({"remove", "5"}), "");
  EXPECT_TRUE(d.no_socket_of(5));
  vms = d.list();
  EXPECT_EQ(vms.size(), 1u);
  EXPECT_TRUE(vms.contains(4));
  std::tie(status, output) = d.ctl({"remove", "5"});
  EXPECT_EQ(status, 1);
  EXPECT_THAT(output, HasSubstr("no VM with guest_cid 5"));

  d.process().signal(SIGTERM);
  ASSERT_EQ(d.process().wait_exit(Clock::now() + deadline_after), std::optional<int>{0}) << d.process().output();
  EXPECT_FALSE(std::filesystem::exists(d.ctl_path()));
  EXPECT_FALSE(std::filesystem::exists(scratch / "x"));
}

TEST(VsockdControl, CtlRefusesBadCommandLinesBeforeAsking) {
  test::TempDir dir;
  for (const std::vector<std::string>& words :
       {std::vector<std::string>{"bogus"}, {"stats"}, {"remove", "4", "5"}, {"list", "extra"}, {"groups", "4"}}) {
    std::vector<std::string> args{"ctl", "-s", dir / "nobody-listens"};
    args.insert(args.end(), words.begin(), words.end());
    auto [status, output] = run_to_exit(args);
    EXPECT_EQ(status, usage_exit_code) << words[0];
    EXPECT_THAT(output, testing::AnyOf(HasSubstr("usage:"), HasSubstr("unknown command"))) << output;
  }
  auto [status, output] = run_to_exit({"ctl", "-s", dir / "nobody-listens", "list"});
  EXPECT_EQ(status, 1);
  EXPECT_THAT(output, HasSubstr("cannot connect to the control socket"));
}

TEST(VsockdControl, StartsWithoutVmsGivenAControlSocket) {
  ControlledDaemon d({});
  ASSERT_TRUE(d.ready()) << d.process().output();
  EXPECT_TRUE(d.list().empty());
  EXPECT_EQ(d.ctl_ok({"add", d.vm_argument(3, "default")}), "");
  EXPECT_TRUE(d.sockets_of(3));
  auto [status, output] = d.ctl({"reload"});
  EXPECT_EQ(status, 1);
  EXPECT_THAT(output, HasSubstr("not started with --config"));
}

TEST(VsockdControl, SighupAppliesTheConfigFilesDifference) {
  test::TempDir files;
  const std::string config = files / "vms.yaml";
  auto write_config = [&](const std::string& vms) { std::ofstream(config) << "vms:\n" << vms; };
  // Paths in the directory the daemon's ctl socket is in are not known yet: use `files`.
  auto vm = [&](int cid, const std::string& groups, const std::string& extra = "") {
    return fmt::format("  - {{guest_cid: {}, socket: {}, uds_path: {}, groups: {}{}}}\n", cid,
                       files / fmt::format("vm{}.vhost", cid), files / fmt::format("vm{}.vsock", cid), groups, extra);
  };
  write_config(vm(4, "a") + vm(5, "a") + vm(6, "a"));
  ControlledDaemon d({"--config", config});
  ASSERT_TRUE(d.ready()) << d.process().output();
  ASSERT_EQ(d.list().size(), 3u);

  // 4 regrouped, 5 gone, 6 restarted (another key changed), 7 new.
  write_config(vm(4, "b") + vm(6, "a", ", max_connections: 9") + vm(7, "b"));
  d.process().signal(SIGHUP);
  ASSERT_TRUE(d.process().wait_output("reload: {", Clock::now() + deadline_after)) << d.process().output();
  EXPECT_THAT(d.process().output(),
              HasSubstr(R"(reload: {"added":[7],"removed":[5],"restarted":[6],"regrouped":[4],"failed":[]})"));
  auto vms = d.list();
  EXPECT_EQ((std::set<std::uint64_t>{vms.begin()->first, std::next(vms.begin())->first, vms.rbegin()->first}),
            (std::set<std::uint64_t>{4, 6, 7}));
  EXPECT_EQ(vms.size(), 3u);
  EXPECT_EQ(groups_of(vms[4]), std::vector<std::string>{"b"});
  EXPECT_FALSE(std::filesystem::exists(files / "vm5.vhost"));
  EXPECT_TRUE(std::filesystem::is_socket(files / "vm7.vhost"));
  EXPECT_TRUE(std::filesystem::is_socket(files / "vm6.vhost"));

  // A broken file changes nothing, and says why.
  write_config(vm(4, "b") + vm(8, "b", ", queue_size: 3"));
  d.process().signal(SIGHUP);
  ASSERT_TRUE(d.process().wait_output("nothing changed", Clock::now() + deadline_after)) << d.process().output();
  EXPECT_THAT(d.process().output(), HasSubstr("queue_size 3 is not a power of two"));
  EXPECT_EQ(d.list().size(), 3u);

  // `ctl reload` does the same and answers with the summary.
  write_config(vm(4, "b"));
  EXPECT_EQ(d.ctl_ok({"reload"}), "{\"added\":[],\"removed\":[6,7],\"restarted\":[],\"regrouped\":[],\"failed\":[]}\n");
  EXPECT_EQ(d.list().size(), 1u);
}

TEST(VsockdControl, ServesTwoHundredFiftySixVmsOnTwoThreads) {
  test::TempDir files;
  std::ofstream yaml(files / "vms.yaml");
  yaml << "threads: 2\nvms:\n";
  for (int cid = 3; cid < 3 + 256; ++cid) {
    yaml << fmt::format("  - {{guest_cid: {}, socket: {}, uds_path: {}, groups: g{}}}\n", cid,
                        files / fmt::format("vm{}.vhost", cid), files / fmt::format("vm{}.vsock", cid), cid % 4);
  }
  yaml.close();
  ControlledDaemon d({"--config", files / "vms.yaml"});
  ASSERT_TRUE(d.ready()) << d.process().output();
  // A fixed pool, not a thread per VM: the main thread and one worker.
  std::size_t threads = 0;
  for ([[maybe_unused]] const auto& task :
       std::filesystem::directory_iterator(fmt::format("/proc/{}/task", d.process().pid()))) {
    ++threads;
  }
  EXPECT_EQ(threads, 2U);
  const auto vms = d.list();
  ASSERT_EQ(vms.size(), 256U);
  EXPECT_EQ(groups_of(vms.at(258)), std::vector<std::string>{"g2"});  // 258 % 4
  for (int cid = 3; cid < 3 + 256; ++cid) {
    ASSERT_TRUE(std::filesystem::is_socket(files / fmt::format("vm{}.vsock_seqpacket", cid))) << cid;
  }
  d.process().signal(SIGTERM);
  ASSERT_EQ(d.process().wait_exit(Clock::now() + deadline_after), std::optional<int>{0}) << d.process().output();
  std::size_t left = 0;
  for (const auto& entry : std::filesystem::directory_iterator(files.path())) left += entry.is_socket() ? 1 : 0;
  EXPECT_EQ(left, 0U) << "sockets left behind";
}

/// Connects to `path` (an AF_UNIX stream socket).
UniqueFd connect_to(const std::string& path) {
  UniqueFd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  EXPECT_EQ(::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
  return fd;
}

/// Everything `fd` reads until EOF (or the deadline).
std::string read_to_eof(int fd) {
  std::string out;
  const auto deadline = Clock::now() + deadline_after;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, test::millis_until(deadline)) != 1) {
      ADD_FAILURE() << "no EOF by the deadline";
      return out;
    }
    char buf[4096];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) return out;
    out.append(buf, static_cast<std::size_t>(n));
  }
}

TEST(VsockdControl, HostileClientsGetErrorsAndCannotHoldTheDaemon) {
  ControlledDaemon d({});
  ASSERT_TRUE(d.ready()) << d.process().output();

  // An overlong request is answered with an error, not buffered without end.
  UniqueFd fd = connect_to(d.ctl_path());
  const std::string junk(8192, 'x');
  ASSERT_EQ(::write(fd.get(), junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
  EXPECT_EQ(read_to_eof(fd.get()), "error request too long\n");
  fd = connect_to(d.ctl_path());
  const std::string nul("list\0x\n", 7);
  ASSERT_EQ(::write(fd.get(), nul.data(), nul.size()), 7);
  EXPECT_THAT(read_to_eof(fd.get()), HasSubstr("error "));

  // Idle clients up to the cap; one more is closed at once, and the daemon still answers
  // once they are gone.
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 16; ++i) idle.push_back(connect_to(d.ctl_path()));
  // The daemon accepts them in order: once this one is refused, all 16 are held.
  UniqueFd extra = connect_to(d.ctl_path());
  EXPECT_EQ(read_to_eof(extra.get()), "");
  // Each held client still gets its answer; the daemon frees a client's slot before it
  // closes the connection, so the next client finds room.
  for (auto& client : idle) ASSERT_EQ(::write(client.get(), "list\n", 5), 5);
  for (auto& client : idle) EXPECT_EQ(read_to_eof(client.get()), "ok\n{\"vms\":[]}\n");
  EXPECT_TRUE(d.list().empty());
}

}  // namespace
}  // namespace vsockd::config
