#pragma once
// The configuration of vhost-vsockd: which VMs it serves and how, from the command line or a
// YAML file. A compatible superset of rust-vmm's vhost-device-vsock 0.3.0: a command line or
// file that tool serves with its AF_UNIX ("hybrid") back-end means the same here, except
// for values it takes without serving them well, which are refused here with a message
// before anything is bound: reserved or 64-bit CIDs, colliding paths, a queue_size that is
// not a power of two, a tx_buffer_size outside 4096 .. 64 MiB. A file without `vms:`
// (which makes it panic) is a message too. Its AF_VSOCK back-end (--forward-cid,
// --forward-listen) is not offered: the host side is AF_UNIX only.
//
// Three ways to name the VMs, exactly one per command line:
//  - single-VM flags:  --guest-cid 3 --socket /run/vm3.vhost --uds-path /run/vm3.vsock [...]
//  - one --vm per VM:  --vm guest-cid=3,socket=/run/vm3.vhost,uds-path=/run/vm3.vsock [...]
//  - a file:           --config vms.yaml  (a `vms:` list of maps with the same keys)
// Global settings come as flags in every mode (--control-socket, --threads, --log-level);
// `control_socket` and `threads` may also be top-level keys of the file, and a flag wins
// over the file's key.
//
// Keys are the names of the described members below (Boost.Describe maps every key to its
// member, so a member added there is a flag, a --vm key and a YAML key at once). A key may
// be written in snake or dash case (`guest_cid`, `guest-cid`) in --vm and in YAML; the flag
// is always the dash form (`--guest-cid`). Values are:
//  - numbers: decimal digits only (no sign, no spaces, no suffix), within the member's type;
//  - paths: any non-empty string (in --vm, without ',' which separates the keys);
//  - groups: `g1+g2` (in YAML also a list `[g1, g2]`); a name is not empty and holds no
//    '+' or ','.
// A key given twice for one VM (`guest-cid=3,guest_cid=4`) is an error, so is an unknown key.
//
// parse_command_line() and the load functions return a validated configuration (validate()
// below) or an Error whose message names the source (flag, `--vm #N`, `FILE:LINE`, `VM N`)
// and the problem. The filesystem is read only to load the YAML file, by validate() to resolve symbolic
// links when it compares paths, and by check_filesystem(); nothing here writes to it.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <boost/describe/class.hpp>
#include <boost/system/result.hpp>

#include "vsock/config.hpp"

namespace vsockd::config {

/// A configuration problem, as one readable line for the user.
struct Error {
  std::string message;
};

template <class T>
using Result = boost::system::result<T, Error>;

/// Exit status for a usage or configuration error: 2, the status of clap (and so of
/// vhost-device-vsock) for a bad command line. A failure at run time exits with 1.
inline constexpr int usage_exit_code = 2;

/// Sibling groups: two VMs may talk iff their sets intersect (vhost-device-vsock's rule).
/// Sorted and without duplicates by construction; never empty in a valid VmConfig.
using Groups = std::set<std::string>;

/// One VM. Defaults are vhost-device-vsock's where it has the key.
struct VmConfig {
  /// The guest's CID, 3 .. 2^32-2: 0 (hypervisor), 1 (local), 2 (host) and 2^32-1
  /// (VMADDR_CID_ANY) are reserved, and AF_VSOCK addresses hold 32 bits although the
  /// config space field has 64. The default 3 is vhost-device-vsock's, kept in every mode:
  /// two VMs that both leave it out collide, and validate() says so.
  std::uint64_t guest_cid = 3;
  /// The vhost-user socket the daemon listens on (QEMU's `-chardev socket,path=`). Required.
  std::filesystem::path socket;
  /// The VM's host-side AF_UNIX socket (hybrid vsock, see docs/vsock.md). Required. The
  /// daemon also binds `<uds_path>_seqpacket`, and delivers guest connections to host port P
  /// to `<uds_path>_<P>`.
  std::filesystem::path uds_path;
  /// Per-connection guest -> host buffer, advertised to the guest as buf_alloc, in bytes:
  /// 4096 .. 64 MiB (the VM's whole budget of buffered bytes; a larger buffer would leave
  /// room for no connection at all).
  std::uint32_t tx_buffer_size = 64 * 1024;
  /// Largest virtqueue size accepted from the front-end: a power of two, 1 .. 32768, as
  /// every queue size is (virtio spec 2.7: "Queue Size ... a power of 2", at most 32768),
  /// so that the maximum is a size a front-end can use. vhost-device-vsock takes any number
  /// here. QEMU uses 128. 32 bits so that a value above 65535 is reported against 32768.
  std::uint32_t queue_size = 1024;
  /// `default` unless given.
  Groups groups{"default"};
  /// Our extras (vhost-device-vsock has no timeouts and no connection cap); see
  /// vsock::DeviceConfig for what they bound. Timeouts are 1 ms .. 24 h.
  std::chrono::milliseconds connect_timeout_ms{2000};
  std::chrono::milliseconds shutdown_timeout_ms{2000};
  /// Connections at once, at least 1.
  std::uint32_t max_connections = 1024;

  bool operator==(const VmConfig&) const = default;
};
BOOST_DESCRIBE_STRUCT(VmConfig, (),
                      (guest_cid, socket, uds_path, tx_buffer_size, queue_size, groups, connect_timeout_ms,
                       shutdown_timeout_ms, max_connections))

/// std::thread::hardware_concurrency(), or 1 where the number of cores is unknown.
unsigned default_threads();

/// The whole daemon. Only control_socket and threads are described: they are the keys a
/// file's top level may hold besides `vms`, and the global flags made from them.
struct DaemonConfig {
  /// In the order given; "VM N" in messages counts from 1 in this order.
  std::vector<VmConfig> vms;
  /// Where the runtime control API listens (`vhost-vsockd ctl`); with it, the daemon may
  /// start with no VM.
  std::optional<std::filesystem::path> control_socket;
  /// Worker threads that run all VMs (each on its own strand), 1 .. 1024.
  unsigned threads = default_threads();
  /// One of app::log_level_names(); a flag only.
  std::string log_level = "info";
  /// The YAML file the VMs came from (--config), which reload_vms() reads again.
  std::optional<std::filesystem::path> config_file;

  bool operator==(const DaemonConfig&) const = default;
};
BOOST_DESCRIBE_STRUCT(DaemonConfig, (), (control_socket, threads))

// --- the command line ----------------------------------------------------------------------

/// --help: the text to print on stdout before exiting with status 0.
struct Help {
  std::string text;
};

/// Parses vhost-vsockd's command line (`args` as main() gets it, program name first) with
/// CLI11, loads --config if given, applies the global flags over the file's keys and
/// validates. Refused: unknown flags, a flag given twice, single-VM flags together with
/// --vm, --config together with either, and no VM at all.
Result<std::variant<DaemonConfig, Help>> parse_command_line(std::span<const char* const> args);

/// One --vm value, `key=value,key=value,...`: split at ',' then at the first '=' (so a
/// value may contain '=' but not ','). Not validated on its own: validate() judges the VM
/// in its daemon. `where` prefixes the messages ("--vm #2").
Result<VmConfig> parse_vm_argument(std::string_view text, std::string_view where);

/// A `groups` value, `g1+g2` (as in --vm; not validated beyond its syntax).
Result<Groups> parse_groups(std::string_view text);

/// The --vm form of `vm`, every key in snake case: parse_vm_argument() gives `vm` back.
std::string to_vm_argument(const VmConfig& vm);

// --- YAML ------------------------------------------------------------------------------------

/// Loads a configuration from YAML text: a map with a `vms:` list of maps (at least one)
/// and optionally `control_socket:` and `threads:`. Any other key is an error. Values are
/// scalars (groups also a list of scalars). `name` (a file name) prefixes the messages,
/// with the line of the problem. Validated.
Result<DaemonConfig> load_yaml(std::string_view text, std::string_view name = "<config>");

/// load_yaml() of a file's contents; sets config_file.
Result<DaemonConfig> load_yaml_file(const std::filesystem::path& file);

/// Reads the file again and returns its VMs, validated as a whole with the file's global
/// keys (for SIGHUP). Global settings cannot change at run time, so only the VMs are
/// returned; the caller decides what to start and stop.
Result<std::vector<VmConfig>> reload_vms(const std::filesystem::path& file);

/// The configuration as YAML that load_yaml() reads back to an equal DaemonConfig (except
/// log_level and config_file, which are not file keys).
std::string to_yaml(const DaemonConfig& config);

// --- checks ----------------------------------------------------------------------------------

/// Everything about the values (the filesystem is read only to resolve symbolic links):
///  - each VM: guest_cid neither reserved nor above 32 bits; socket and uds_path given;
///    tx_buffer_size, queue_size, timeouts and max_connections in range; groups non-empty
///    with no empty name;
///  - across VMs: no CID twice; every path the daemon binds (each VM's socket, uds_path and
///    `<uds_path>_seqpacket`, and the control socket) distinct from every other once made
///    absolute and normal (`.`/`..`, symbolic links in existing parent directories);
///  - no bound path is `<uds_path>_<digits>` of a VM: a guest connecting to that host port
///    would reach another VM's (or its own) socket;
///  - every bound path fits in sockaddr_un (107 bytes); threads 1 .. 1024; a known log level;
///  - at least one VM, unless there is a control socket to add them.
Result<void> validate(const DaemonConfig& config);

/// The filesystem side, just before binding: each path the daemon binds is either free, in
/// an existing directory, or a socket file. A socket file is left to
/// vhostuser::bind_unix_listener, which replaces it only if nobody listens on it (a stale
/// socket of a dead daemon) and otherwise fails with EADDRINUSE. Not probed here: probing
/// connects to whoever listens (a vhost-user back-end takes that connection for its
/// front-end), and binding probes once anyway. Anything else there (a regular file, a
/// directory, a symbolic link) is an error here, as it would be at bind time (EEXIST); the
/// check comes first so that no VM is started when another one cannot be.
Result<void> check_filesystem(const DaemonConfig& config);

/// The device configuration of a validated VM.
vsock::DeviceConfig to_device_config(const VmConfig& vm);

}  // namespace vsockd::config
