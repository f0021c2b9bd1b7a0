// What makes a configuration servable: validate() judges the values, check_filesystem() the
// paths as they are on disk just before binding.
#include <sys/un.h>

#include <algorithm>
#include <bit>
#include <map>

#include "common/logging.hpp"
#include "config/fields.hpp"

namespace vsockd::config {
namespace {

constexpr std::uint64_t cid_any = 0xffffffff;  // VMADDR_CID_ANY
constexpr std::uint32_t min_tx_buffer_size = 4096;
constexpr std::uint32_t max_queue_size = 32768;  // virtio 1.2, 2.7 (split virtqueues)
constexpr std::chrono::milliseconds max_timeout = std::chrono::hours{24};
constexpr unsigned max_threads = 1024;
// sockaddr_un holds the path and its terminating NUL.
constexpr std::size_t max_socket_path = sizeof(sockaddr_un{}.sun_path) - 1;

Result<void> check_cid(std::uint64_t cid) {
  // The well-known CIDs of <linux/vm_sockets.h>: a guest with one of them could not be
  // addressed, or would impersonate the host.
  switch (cid) {
    case 0: return Error{"guest_cid 0 is reserved (VMADDR_CID_HYPERVISOR)"};
    case 1: return Error{"guest_cid 1 is reserved (VMADDR_CID_LOCAL)"};
    case 2: return Error{"guest_cid 2 is reserved (VMADDR_CID_HOST, the host itself)"};
    case cid_any: return Error{"guest_cid 4294967295 is reserved (VMADDR_CID_ANY)"};
    default: break;
  }
  if (cid > cid_any) {
    return Error{fmt::format("guest_cid {} is out of range: AF_VSOCK addresses hold 32 bits (3 .. 4294967294)", cid)};
  }
  return {};
}

Result<void> check_groups(const Groups& groups) {
  if (groups.empty()) return Error{"groups: no group (leave the key out for the group 'default')"};
  for (const std::string& group : groups) {
    if (group.empty()) return Error{"groups: empty group name"};
    // Either would change meaning in the --vm form ("g1+g2", "k=v,k=v").
    if (group.find_first_of("+,") != std::string::npos) {
      return Error{fmt::format("groups: '{}': a group name cannot contain '+' or ','", group)};
    }
  }
  return {};
}

Result<void> check_timeout(std::string_view key, std::chrono::milliseconds value) {
  if (value < std::chrono::milliseconds{1} || value > max_timeout) {
    return Error{fmt::format("{} {} is out of range (1 .. {})", key, value.count(), max_timeout.count())};
  }
  return {};
}

Result<void> check_vm(const VmConfig& vm) {
  if (auto cid = check_cid(vm.guest_cid); !cid) return cid;
  if (vm.socket.empty()) return Error{"socket is required"};
  if (vm.uds_path.empty()) return Error{"uds_path is required"};
  // Every connection reserves its buffer from the VM's budget (vsock::DeviceConfig), so a
  // buffer above the budget would refuse every connection.
  const std::uint64_t budget = vsock::DeviceConfig{}.max_buffered_bytes;
  if (vm.tx_buffer_size < min_tx_buffer_size || vm.tx_buffer_size > budget) {
    return Error{fmt::format("tx_buffer_size {} is out of range ({} .. {}, the VM's budget of buffered bytes)",
                             vm.tx_buffer_size, min_tx_buffer_size, budget)};
  }
  if (vm.queue_size == 0 || vm.queue_size > max_queue_size) {
    return Error{fmt::format("queue_size {} is out of range (a power of two, 1 .. {})", vm.queue_size, max_queue_size)};
  }
  if (!std::has_single_bit(vm.queue_size)) {
    return Error{fmt::format("queue_size {} is not a power of two (virtio queue sizes are)", vm.queue_size)};
  }
  if (auto groups = check_groups(vm.groups); !groups) return groups;
  if (auto t = check_timeout("connect_timeout_ms", vm.connect_timeout_ms); !t) return t;
  if (auto t = check_timeout("shutdown_timeout_ms", vm.shutdown_timeout_ms); !t) return t;
  if (vm.max_connections == 0) return Error{"max_connections 0 would refuse every connection (at least 1)"};
  return {};
}

/// Absolute and normal, with the symbolic links of its existing part resolved, so that two
/// spellings of one file compare equal.
std::filesystem::path normal(const std::filesystem::path& path) {
  std::error_code ec;
  std::filesystem::path absolute = std::filesystem::absolute(path, ec);
  if (ec) absolute = path;
  std::filesystem::path resolved = std::filesystem::weakly_canonical(absolute, ec);
  return ec ? absolute.lexically_normal() : resolved;
}

/// A path the daemon binds, and whose it is, for messages.
struct BoundPath {
  std::filesystem::path path;  // as given: what is bound
  std::string owner;           // "VM 2's socket"
  std::filesystem::path normal;
};

std::vector<BoundPath> bound_paths(const DaemonConfig& config) {
  std::vector<BoundPath> paths;
  for (std::size_t i = 0; i < config.vms.size(); ++i) {
    const VmConfig& vm = config.vms[i];
    const std::string vm_name = fmt::format("VM {}", i + 1);
    // vsock::HostSide binds the second listener at this derived name.
    const std::filesystem::path seqpacket = vm.uds_path.native() + "_seqpacket";
    paths.push_back({vm.socket, vm_name + "'s socket", {}});
    paths.push_back({vm.uds_path, vm_name + "'s uds_path", {}});
    paths.push_back({seqpacket, vm_name + "'s SEQPACKET listener (uds_path + '_seqpacket')", {}});
  }
  if (config.control_socket) paths.push_back({*config.control_socket, "the control socket", {}});
  for (BoundPath& p : paths) p.normal = normal(p.path);
  return paths;
}

Result<void> check_path_text(const BoundPath& p) {
  const std::string& text = p.path.native();
  if (text.empty()) return Error{fmt::format("{} is empty", p.owner)};
  if (text.find('\0') != std::string::npos) return Error{fmt::format("{} contains a NUL byte", p.owner)};
  if (!p.path.has_filename()) return Error{fmt::format("{} {} names a directory, not a socket", p.owner, text)};
  if (text.size() > max_socket_path) {
    return Error{fmt::format("{} {} is {} bytes long; an AF_UNIX socket path holds at most {}", p.owner, text,
                             text.size(), max_socket_path)};
  }
  return {};
}

/// The host port whose listener `<uds_path>_<port>` would be at `path`, if any.
std::optional<std::string_view> host_port_of(const std::filesystem::path& path, const std::filesystem::path& uds) {
  const std::string_view text = path.native();
  const std::string prefix = uds.native() + "_";
  if (!text.starts_with(prefix) || text.size() == prefix.size()) return std::nullopt;
  const std::string_view rest = text.substr(prefix.size());
  if (!std::all_of(rest.begin(), rest.end(), [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
  return rest;
}

Result<void> check_paths(const DaemonConfig& config) {
  const std::vector<BoundPath> paths = bound_paths(config);
  std::map<std::filesystem::path, const BoundPath*> seen;
  for (const BoundPath& p : paths) {
    if (auto text = check_path_text(p); !text) return text;
    auto [it, inserted] = seen.emplace(p.normal, &p);
    if (!inserted) {
      return Error{
          fmt::format("{} {} is also {} ({})", p.owner, p.path.native(), it->second->owner, it->second->path.native())};
    }
  }
  // A guest connection to host port P goes to "<uds_path>_P": a socket of ours there would
  // let the guest reach another VM's vhost-user socket or hybrid listener past its groups.
  for (std::size_t i = 0; i < config.vms.size(); ++i) {
    const std::filesystem::path uds = normal(config.vms[i].uds_path);
    for (const BoundPath& p : paths) {
      if (auto port = host_port_of(p.normal, uds)) {
        return Error{fmt::format("{} {} is where VM {}'s guest connections to host port {} go (uds_path + '_{}')",
                                 p.owner, p.path.native(), i + 1, *port, *port)};
      }
    }
  }
  return {};
}

std::string_view type_name(std::filesystem::file_type type) {
  switch (type) {
    case std::filesystem::file_type::regular: return "a regular file";
    case std::filesystem::file_type::directory: return "a directory";
    case std::filesystem::file_type::symlink: return "a symbolic link";
    case std::filesystem::file_type::block: return "a block device";
    case std::filesystem::file_type::character: return "a character device";
    case std::filesystem::file_type::fifo: return "a FIFO";
    default: return "not a socket";
  }
}

}  // namespace

Result<void> validate(const DaemonConfig& config) {
  // With a control socket, VMs may all come later (`ctl add`).
  if (config.vms.empty() && !config.control_socket) return Error{"no VM configured (and no control socket to add one)"};
  for (std::size_t i = 0; i < config.vms.size(); ++i) {
    if (auto vm = check_vm(config.vms[i]); !vm) return Error{fmt::format("VM {}: {}", i + 1, vm.error().message)};
  }
  std::map<std::uint64_t, std::size_t> cids;
  for (std::size_t i = 0; i < config.vms.size(); ++i) {
    auto [it, inserted] = cids.emplace(config.vms[i].guest_cid, i);
    if (!inserted) {
      return Error{fmt::format("VM {} and VM {} both have guest_cid {} (a VM without guest_cid gets 3)", it->second + 1,
                               i + 1, it->first)};
    }
  }
  if (auto paths = check_paths(config); !paths) return paths;
  if (config.threads < 1 || config.threads > max_threads) {
    return Error{fmt::format("threads {} is out of range (1 .. {})", config.threads, max_threads)};
  }
  const auto& levels = app::log_level_names();
  if (std::find(levels.begin(), levels.end(), config.log_level) == levels.end()) {
    return Error{fmt::format("log level '{}' is not one of {}", config.log_level, fmt::join(levels, ", "))};
  }
  return {};
}

Result<void> check_filesystem(const DaemonConfig& config) {
  for (const BoundPath& p : bound_paths(config)) {
    std::error_code ec;
    const auto status = std::filesystem::symlink_status(p.path, ec);
    if (status.type() == std::filesystem::file_type::not_found) {
      const std::filesystem::path dir = p.normal.parent_path();
      if (!std::filesystem::is_directory(dir, ec)) {
        return Error{fmt::format("{} {}: directory {} does not exist", p.owner, p.path.native(), dir.native())};
      }
      continue;
    }
    if (ec) return Error{fmt::format("{} {}: {}", p.owner, p.path.native(), ec.message())};
    // A socket file is bind_unix_listener's to judge: replaced if stale, refused if live.
    if (status.type() == std::filesystem::file_type::socket) continue;
    return Error{fmt::format("{} {} is {}, not a socket (only a socket file nobody listens on is replaced)", p.owner,
                             p.path.native(), type_name(status.type()))};
  }
  return {};
}

}  // namespace vsockd::config
