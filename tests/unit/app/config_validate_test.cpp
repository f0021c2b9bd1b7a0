// validate(): every rule, each with the message that names the problem; check_filesystem():
// what may be at a path, and that it agrees with vhostuser::bind_unix_listener.
#include <sys/socket.h>
#include <sys/un.h>

#include <cstring>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "config_test_support.hpp"
#include "vhostuser/server.hpp"
#include "vhostuser/unique_fd.hpp"

namespace vsockd::config {
namespace {

using test::error_of;
using testing::HasSubstr;

VmConfig vm(std::uint64_t cid, std::string socket, std::string uds) {
  VmConfig v;
  v.guest_cid = cid;
  v.socket = std::move(socket);
  v.uds_path = std::move(uds);
  return v;
}

DaemonConfig daemon(std::vector<VmConfig> vms) {
  DaemonConfig config;
  config.vms = std::move(vms);
  return config;
}

/// validate() of one VM changed by `change`.
template <class F>
Result<void> validate_one(F&& change) {
  VmConfig v = vm(3, "/run/s", "/run/u");
  change(v);
  return validate(daemon({v}));
}

TEST(ConfigValidate, AcceptsAPlainConfiguration) {
  EXPECT_TRUE(validate(daemon({vm(3, "/run/s3", "/run/u3"), vm(4294967294, "/run/s4", "/run/u4")})));
}

TEST(ConfigValidate, RefusesReservedAndOutOfRangeCids) {
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.guest_cid = 0; })),
              HasSubstr("VM 1: guest_cid 0 is reserved (VMADDR_CID_HYPERVISOR)"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.guest_cid = 1; })),
              HasSubstr("guest_cid 1 is reserved (VMADDR_CID_LOCAL)"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.guest_cid = 2; })),
              HasSubstr("guest_cid 2 is reserved (VMADDR_CID_HOST"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.guest_cid = 0xffffffff; })),
              HasSubstr("guest_cid 4294967295 is reserved (VMADDR_CID_ANY)"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.guest_cid = 0x100000000; })),
              HasSubstr("guest_cid 4294967296 is out of range: AF_VSOCK addresses hold 32 bits"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.guest_cid = UINT64_MAX; })), HasSubstr("out of range"));
}

TEST(ConfigValidate, RefusesDuplicateCids) {
  EXPECT_THAT(
      error_of(validate(daemon({vm(4, "/run/a", "/run/b"), vm(5, "/run/c", "/run/d"), vm(4, "/run/e", "/run/f")}))),
      HasSubstr("VM 1 and VM 3 both have guest_cid 4"));
}

TEST(ConfigValidate, RequiresSocketAndUdsPath) {
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.socket.clear(); })), HasSubstr("VM 1: socket is required"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.uds_path.clear(); })), HasSubstr("VM 1: uds_path is required"));
}

TEST(ConfigValidate, TxBufferSizeRange) {
  EXPECT_TRUE(validate_one([](VmConfig& v) { v.tx_buffer_size = 4096; }));
  EXPECT_TRUE(validate_one([](VmConfig& v) { v.tx_buffer_size = 64u << 20; }));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.tx_buffer_size = 4095; })),
              HasSubstr("tx_buffer_size 4095 is out of range (4096 .. 67108864"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.tx_buffer_size = (64u << 20) + 1; })),
              HasSubstr("tx_buffer_size 67108865 is out of range"));
}

TEST(ConfigValidate, QueueSizeIsAPowerOfTwoUpTo32768) {
  for (std::uint32_t ok : {1u, 2u, 128u, 1024u, 32768u}) {
    EXPECT_TRUE(validate_one([&](VmConfig& v) { v.queue_size = ok; })) << ok;
  }
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.queue_size = 0; })),
              HasSubstr("queue_size 0 is out of range (a power of two, 1 .. 32768)"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.queue_size = 65536; })),
              HasSubstr("queue_size 65536 is out of range"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.queue_size = 100; })),
              HasSubstr("queue_size 100 is not a power of two"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.queue_size = 32767; })), HasSubstr("not a power of two"));
}

TEST(ConfigValidate, Groups) {
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.groups.clear(); })), HasSubstr("groups: no group"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.groups = {"a", ""}; })), HasSubstr("groups: empty group name"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.groups = {"a+b"}; })), HasSubstr("cannot contain '+' or ','"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.groups = {"a,b"}; })), HasSubstr("cannot contain '+' or ','"));
}

TEST(ConfigValidate, TimeoutsAndConnectionCap) {
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.connect_timeout_ms = std::chrono::milliseconds{0}; })),
              HasSubstr("connect_timeout_ms 0 is out of range (1 .. 86400000)"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.shutdown_timeout_ms = std::chrono::hours{25}; })),
              HasSubstr("shutdown_timeout_ms 90000000 is out of range"));
  EXPECT_THAT(error_of(validate_one([](VmConfig& v) { v.max_connections = 0; })),
              HasSubstr("max_connections 0 would refuse every connection"));
}

TEST(ConfigValidate, GlobalSettings) {
  DaemonConfig config = daemon({vm(3, "/run/s", "/run/u")});
  config.threads = 0;
  EXPECT_THAT(error_of(validate(config)), HasSubstr("threads 0 is out of range (1 .. 1024)"));
  config.threads = 1025;
  EXPECT_THAT(error_of(validate(config)), HasSubstr("threads 1025 is out of range"));
  config.threads = 1;
  config.log_level = "loud";
  EXPECT_THAT(error_of(validate(config)), HasSubstr("log level 'loud' is not one of trace, debug"));
  EXPECT_THAT(error_of(validate(daemon({}))), HasSubstr("no VM configured"));
}

TEST(ConfigValidate, RefusesDuplicateSocketsAndUdsPaths) {
  EXPECT_THAT(error_of(validate(daemon({vm(3, "/run/s", "/run/u3"), vm(4, "/run/s", "/run/u4")}))),
              HasSubstr("VM 2's socket /run/s is also VM 1's socket (/run/s)"));
  EXPECT_THAT(error_of(validate(daemon({vm(3, "/run/s3", "/run/u"), vm(4, "/run/s4", "/run/u")}))),
              HasSubstr("VM 2's uds_path /run/u is also VM 1's uds_path"));
  EXPECT_THAT(error_of(validate(daemon({vm(3, "/run/s3", "/run/x"), vm(4, "/run/x", "/run/u4")}))),
              HasSubstr("VM 2's socket /run/x is also VM 1's uds_path (/run/x)"));
  EXPECT_THAT(error_of(validate(daemon({vm(3, "/run/x", "/run/x")}))),
              HasSubstr("VM 1's uds_path /run/x is also VM 1's socket"));
}

TEST(ConfigValidate, ComparesNormalisedAbsolutePaths) {
  test::TempDir dir;
  const std::string relative = std::filesystem::relative(dir.path()).native();
  EXPECT_THAT(error_of(validate(daemon({vm(3, dir / "s", dir / "u3"), vm(4, dir / "x/../s", dir / "u4")}))),
              HasSubstr("is also VM 1's socket"));
  EXPECT_THAT(error_of(validate(daemon({vm(3, dir / "s", dir / "u3"), vm(4, relative + "/./s", dir / "u4")}))),
              HasSubstr("is also VM 1's socket"));
  // Two names of one directory through a symbolic link.
  std::filesystem::create_directory(dir.path() / "real");
  std::filesystem::create_directory_symlink(dir.path() / "real", dir.path() / "link");
  EXPECT_THAT(error_of(validate(daemon({vm(3, dir / "real/s", dir / "u3"), vm(4, dir / "link/s", dir / "u4")}))),
              HasSubstr("is also VM 1's socket"));
}

TEST(ConfigValidate, RefusesCollisionsWithTheDerivedSeqpacketName) {
  EXPECT_THAT(error_of(validate(daemon({vm(3, "/run/s3", "/run/u"), vm(4, "/run/u_seqpacket", "/run/u4")}))),
              HasSubstr("VM 2's socket /run/u_seqpacket is also VM 1's SEQPACKET listener"));
  EXPECT_THAT(error_of(validate(daemon({vm(3, "/run/s3", "/run/u"), vm(4, "/run/s4", "/run/u_seqpacket")}))),
              HasSubstr("VM 2's uds_path /run/u_seqpacket is also VM 1's SEQPACKET listener"));
}

TEST(ConfigValidate, RefusesSocketsWhereGuestConnectionsToHostPortsGo) {
  EXPECT_THAT(error_of(validate(daemon({vm(3, "/run/s3", "/run/u"), vm(4, "/run/u_1234", "/run/u4")}))),
              HasSubstr("VM 2's socket /run/u_1234 is where VM 1's guest connections to host port 1234 go"));
  EXPECT_THAT(error_of(validate(daemon({vm(3, "/run/u_5", "/run/u")}))),
              HasSubstr("VM 1's guest connections to host port 5"));
  // Not a port: fine.
  EXPECT_TRUE(validate(daemon({vm(3, "/run/s3", "/run/u"), vm(4, "/run/u_x1", "/run/u4")})));
}

TEST(ConfigValidate, ControlSocketIsABoundPathToo) {
  DaemonConfig config = daemon({vm(3, "/run/s", "/run/u")});
  config.control_socket = "/run/u";
  EXPECT_THAT(error_of(validate(config)), HasSubstr("the control socket /run/u is also VM 1's uds_path"));
  config.control_socket = "/run/ctl";
  EXPECT_TRUE(validate(config));
}

TEST(ConfigValidate, PathsMustFitASocketAddress) {
  const std::string long_path = "/run/" + std::string(103, 'x');  // 108 bytes
  EXPECT_THAT(error_of(validate(daemon({vm(3, long_path, "/run/u")}))),
              HasSubstr("is 108 bytes long; an AF_UNIX socket path holds at most 107"));
  // The derived name is 10 bytes longer than uds_path.
  const std::string uds = "/run/" + std::string(93, 'x');  // 98 + 10 = 108
  EXPECT_THAT(error_of(validate(daemon({vm(3, "/run/s", uds)}))), HasSubstr("SEQPACKET listener"));
  EXPECT_THAT(error_of(validate(daemon({vm(3, "/run/dir/", "/run/u")}))), HasSubstr("names a directory"));
}

// --- check_filesystem ------------------------------------------------------------------------

/// A bound AF_UNIX socket at `path`, listening or (when `listen` is false) closed at once,
/// which leaves the stale socket file of a dead process.
vhostuser::UniqueFd unix_socket_at(const std::string& path, bool listen) {
  vhostuser::UniqueFd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  EXPECT_EQ(::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr), 0) << std::strerror(errno);
  if (listen) {
    EXPECT_EQ(::listen(fd.get(), 4), 0);
    return fd;
  }
  return {};
}

/// check_filesystem() for a daemon whose VM 1 socket is `path`.
Result<void> check_socket_path(const test::TempDir& dir, const std::string& path) {
  return check_filesystem(daemon({vm(3, path, dir / "free.vsock")}));
}

TEST(ConfigFilesystem, FreePathsInExistingDirectoriesPass) {
  test::TempDir dir;
  EXPECT_TRUE(check_filesystem(daemon({vm(3, dir / "s", dir / "u")})));
}

TEST(ConfigFilesystem, RefusesWhatIsNotASocket) {
  test::TempDir dir;
  std::ofstream(dir / "file") << "x";
  std::filesystem::create_directory(dir.path() / "dir");
  std::filesystem::create_symlink(dir.path() / "file", dir.path() / "link");
  EXPECT_THAT(error_of(check_socket_path(dir, dir / "file")),
              HasSubstr("VM 1's socket " + (dir / "file") + " is a regular file, not a socket"));
  EXPECT_THAT(error_of(check_socket_path(dir, dir / "dir")), HasSubstr("is a directory, not a socket"));
  EXPECT_THAT(error_of(check_socket_path(dir, dir / "link")), HasSubstr("is a symbolic link, not a socket"));
  EXPECT_THAT(error_of(check_socket_path(dir, dir / "none/s")),
              HasSubstr("directory " + (dir / "none") + " does not exist"));
  // The derived name is checked like the others.
  std::ofstream(dir / "u_seqpacket") << "x";
  EXPECT_THAT(
      error_of(check_filesystem(daemon({vm(3, dir / "s", dir / "u")}))),
      HasSubstr("VM 1's SEQPACKET listener (uds_path + '_seqpacket') " + (dir / "u_seqpacket") + " is a regular file"));
}

TEST(ConfigFilesystem, LeavesSocketFilesToTheBind) {
  test::TempDir dir;
  (void)unix_socket_at(dir / "stale", false);
  auto live = unix_socket_at(dir / "live", true);
  EXPECT_TRUE(check_socket_path(dir, dir / "stale"));
  EXPECT_TRUE(check_socket_path(dir, dir / "live"));
}

// check_filesystem() refuses exactly what bind_unix_listener() would refuse for what is on
// disk, except a live socket, which only the bind can tell (by connecting).
TEST(ConfigFilesystem, AgreesWithBindUnixListener) {
  test::TempDir dir;
  std::ofstream(dir / "file") << "x";
  std::filesystem::create_directory(dir.path() / "dir");
  (void)unix_socket_at(dir / "stale", false);
  std::filesystem::create_symlink(dir.path() / "stale", dir.path() / "link");
  auto live = unix_socket_at(dir / "live", true);

  struct Case {
    const char* name;
    bool check_passes;
    int bind_errno;  // 0: the bind succeeds
  };
  for (const Case& c :
       {Case{"absent", true, 0}, Case{"file", false, EEXIST}, Case{"dir", false, EEXIST}, Case{"link", false, EEXIST},
        Case{"stale", true, 0}, Case{"none/s", false, ENOENT}, Case{"live", true, EADDRINUSE}}) {
    const std::string path = dir / c.name;
    EXPECT_EQ(static_cast<bool>(check_socket_path(dir, path)), c.check_passes) << c.name;
    auto bound = vhostuser::bind_unix_listener(path);
    if (c.bind_errno == 0) {
      EXPECT_TRUE(bound) << c.name << ": " << bound.error().message();
    } else {
      ASSERT_FALSE(bound) << c.name;
      EXPECT_EQ(bound.error(), boost::system::error_code(c.bind_errno, boost::system::system_category())) << c.name;
    }
  }
}

}  // namespace
}  // namespace vsockd::config
