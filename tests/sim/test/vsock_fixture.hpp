#pragma once
// A vsock VM for the simulator tests: vsock::VsockDevice served by vhostuser::Server on an
// io_context thread (both on that io_context's executor, as app/vsockd/main.cpp sets them
// up), a temporary directory for the vhost-user socket and the hybrid-vsock uds_path, the
// simulator playing QEMU 7.2 with the vsock device model, and the guest of vsock_guest.hpp.
// Plus the host application's side: AF_UNIX sockets with deadline-bounded I/O.
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <gtest/gtest.h>

#include "backend_fixture.hpp"
#include "vhostuser/server.hpp"
#include "vhostuser/unique_fd.hpp"
#include "vsock/config.hpp"
#include "vsock/device.hpp"
#include "vsock/router.hpp"
#include "vsock_guest.hpp"
#include "vusim/frontend.hpp"
#include "vusim/sequences.hpp"

namespace vusim::vsock_test {

using namespace std::chrono_literals;
using vhostuser::UniqueFd;
using vsock_guest::Clock;

/// The daemon's side: one VsockDevice and its vhost-user server on a background thread.
class VsockBackend {
 public:
  /// `tweak` adjusts the device configuration (uds_path and guest_cid are set before it runs).
  /// The sockets go into `dir` if given (its owner removes it), else into a fresh TempDir.
  /// `router`: the sibling router shared with other VMs of the test (it outlives them).
  explicit VsockBackend(const std::function<void(vsock::DeviceConfig&)>& tweak = {},
                        const std::filesystem::path& dir = {}, vsock::Router* router = nullptr);
  ~VsockBackend();
  VsockBackend(const VsockBackend&) = delete;
  VsockBackend& operator=(const VsockBackend&) = delete;

  [[nodiscard]] const std::filesystem::path& socket() const { return socket_; }
  [[nodiscard]] const std::filesystem::path& uds() const { return config_.uds_path; }
  /// Where a guest connection to host port `port` goes: "<uds_path>_<port>".
  [[nodiscard]] std::filesystem::path port_path(std::uint32_t port) const {
    return config_.uds_path.native() + "_" + std::to_string(port);
  }
  [[nodiscard]] std::filesystem::path seqpacket_path() const { return config_.uds_path.native() + "_seqpacket"; }
  [[nodiscard]] const vsock::DeviceConfig& config() const { return config_; }

  /// Runs `fn` on the backend thread and returns its result.
  template <class Fn>
  auto on_backend(Fn fn) -> decltype(fn()) {
    return test::run_on(io_, std::move(fn));
  }

  /// Queues `fn` on the backend thread without waiting for it.
  void post(std::function<void()> fn) { boost::asio::post(io_, std::move(fn)); }

  // On the backend thread only, as the daemon removes a VM (app/vsockd/served_vm.hpp) while
  // its io_context runs on for other VMs:
  /// Closes the vhost-user server: the front-end is disconnected (the device resets).
  void close_server();
  /// Closes and destroys the device (after close_server()).
  void destroy_device();

  /// The device; use it on the backend thread only (inside on_backend).
  [[nodiscard]] vsock::VsockDevice& device() { return *device_; }

  [[nodiscard]] std::size_t connection_count() {
    return on_backend([this] { return device_->host().connection_count(); });
  }
  /// CPU time the backend thread has used so far (CLOCK_THREAD_CPUTIME_ID of that thread).
  [[nodiscard]] std::chrono::nanoseconds cpu_time() const;
  /// Watches `fd` for `events` over `window`, in which nothing may happen: fails if the fd
  /// becomes ready (`what` happened) or if the backend thread used more than half the
  /// window's CPU time meanwhile (a busy spin).
  Result<void> expect_quiet(int fd, short events, std::chrono::milliseconds window, std::string_view what) const;

 private:
  std::optional<test::TempDir> own_dir_;
  std::filesystem::path dir_;
  std::filesystem::path socket_;
  vsock::DeviceConfig config_;
  boost::asio::io_context io_;
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_;
  std::unique_ptr<vsock::VsockDevice> device_;
  std::unique_ptr<vhostuser::Server> server_;
  std::thread thread_;
};

struct VmOptions {
  std::uint64_t cid = 3;
  std::function<void(vsock::DeviceConfig&)> tweak{};
  DeviceModel model = DeviceModel::vsock();
  std::string_view sequence = "qemu-7.2";
  /// rx buffers posted at boot, each one `rx_buffer_size` bytes (Linux: 4 KiB).
  std::size_t rx_buffers = 64;
  std::uint32_t rx_buffer_size = 4096;
  /// Guest RAM: regions of this many MiB, adjacent.
  std::uint64_t region_mib = 16;
  unsigned regions = 2;
  /// Where the sockets go; empty: a TempDir of the VM's own.
  std::filesystem::path dir{};
  /// The sibling router this VM joins (each VM runs on its own backend thread), if any.
  vsock::Router* router = nullptr;
};

/// One VM: the backend, guest RAM, QEMU's state, the front-end and the guest driver.
/// Prints the vhost-user conversation if the test failed.
class VsockVm {
 public:
  explicit VsockVm(VmOptions options = {});
  ~VsockVm();

  /// QEMU realize + start (the options' sequence), then the guest posts its rx buffers.
  Result<void> boot();
  /// VM pause/resume with the saved ring bases (`stop` / `cont`).
  Result<std::vector<std::uint16_t>> pause_resume();
  const Sequence& sequence() const { return *find_sequence(options_.sequence); }

  vsock_guest::Guest& guest() { return *guest_; }
  Frontend& frontend() { return *fe_; }
  std::optional<Frontend>& frontend_slot() { return fe_; }

  VmOptions options_;
  std::vector<std::string> log;
  VsockBackend backend;
  GuestRam ram;
  VhostDev dev;

 private:
  std::optional<Frontend> fe_;
  std::optional<vsock_guest::Guest> guest_;
};

// --- the host application's sockets ------------------------------------------------------

/// A listening AF_UNIX socket of `type` at `path` (non-blocking).
Result<UniqueFd> listen_at(const std::filesystem::path& path, int type = SOCK_STREAM);
/// Accepts one client (non-blocking fd), waiting up to `timeout`.
Result<UniqueFd> accept_within(int listener, std::chrono::milliseconds timeout = 10s);
/// Connects to `path` (the connected fd is non-blocking).
Result<UniqueFd> connect_to(const std::filesystem::path& path, int type = SOCK_STREAM);

Result<void> write_all(int fd, std::span<const std::byte> bytes, std::chrono::milliseconds timeout = 10s);
Result<void> write_all(int fd, std::string_view text, std::chrono::milliseconds timeout = 10s);
/// Exactly `n` bytes; Fault::closed on EOF before.
Result<std::vector<std::byte>> read_exact(int fd, std::size_t n, std::chrono::milliseconds timeout = 10s);
/// One line up to and including '\n', read byte by byte so nothing after it is consumed.
Result<std::string> read_line(int fd, std::chrono::milliseconds timeout = 10s);
/// Everything up to EOF.
Result<std::vector<std::byte>> read_to_eof(int fd, std::chrono::milliseconds timeout = 10s);
/// Everything until the daemon closes the socket, by EOF or by a reset.
Result<std::vector<std::byte>> read_until_closed(int fd, std::chrono::milliseconds timeout = 10s);
/// Waits for EOF (or a reset) with no data before it; data is a Fault::bad_reply.
Result<void> expect_eof(int fd, std::chrono::milliseconds timeout = 10s);
/// One SOCK_SEQPACKET message, whole (MSG_TRUNC tells its real size).
Result<std::vector<std::byte>> recv_message(int fd, std::chrono::milliseconds timeout = 10s);
Result<void> send_message(int fd, std::span<const std::byte> bytes, std::chrono::milliseconds timeout = 10s);
/// Waits until the peer has read everything this socket sent (SIOCOUTQ reaches 0).
Result<void> wait_peer_consumed(int fd, std::chrono::milliseconds timeout = 10s);

/// `n` pseudo-random bytes from `seed` (splitmix64).
std::vector<std::byte> pattern(std::size_t n, std::uint64_t seed);
/// FNV-1a 64 of `bytes`, for messages.
std::uint64_t checksum(std::span<const std::byte> bytes);
std::span<const std::byte> as_bytes(std::string_view text);
std::string as_text(std::span<const std::byte> bytes);

// --- guest-side helpers --------------------------------------------------------------------

/// Guest connect(): sends REQUEST from `conn` and waits for the device's answer, which is
/// returned (RESPONSE or RST) after being applied to `conn`.
Result<vsock_guest::Packet> guest_connect(vsock_guest::Guest& guest, vsock_guest::Conn& conn,
                                          std::chrono::milliseconds timeout = 10s);

/// Moves a byte stream both ways over one established connection until both arrive whole:
/// the guest sends `g2h` in RW packets within the device's credit (waiting for its
/// CREDIT_UPDATE when out of credit), the host writes `h2g` and reads what arrives; the guest
/// consumes what it receives and advertises it as Linux does. Every device packet on the
/// connection is checked against the credit rule.
struct StreamPump {
  vsock_guest::Guest& guest;
  vsock_guest::Conn& conn;
  int host_fd;

  std::vector<std::byte> g2h{};  ///< the guest sends this
  std::vector<std::byte> h2g{};  ///< the host sends this
  std::vector<std::byte> host_received{};
  std::vector<std::byte> guest_received{};

  /// Shape of the tx packet carrying `payload` bytes (the n-th RW packet).
  std::function<vsock_guest::TxShape(std::size_t payload, std::size_t n)> shape =
      [](std::size_t payload, std::size_t) { return vsock_guest::one_buffer(payload); };
  /// Largest RW payload the guest sends (it also stays within the credit).
  std::size_t max_packet = vsock_guest::max_payload;
  /// Host write size.
  std::size_t host_chunk = 64 * 1024;
  /// Whether the guest application consumes received bytes at once.
  bool guest_consumes = true;
  /// Whether the host application reads (false: it reads only when the guest has no credit).
  bool host_reads_eagerly = true;
  /// Whether the host application reads at all.
  bool host_reads = true;

  std::size_t g2h_sent = 0;
  std::size_t h2g_written = 0;
  std::size_t packets_sent = 0;
  std::size_t credit_updates_received = 0;
  std::size_t credit_requests_received = 0;
  std::size_t credit_waits = 0;  ///< times the guest ran out of credit with data to send
  bool out_of_credit = false;

  /// Runs until both streams arrived whole, or fails (deadline, broken rule, RST).
  Result<void> run(std::chrono::milliseconds timeout = 60s);
  /// Runs until `until()` holds.
  Result<void> run_until(const std::function<bool()>& until, std::chrono::milliseconds timeout = 60s);
  /// One round of non-blocking progress; true if anything moved.
  Result<bool> step();
  /// Handles the device's packets for the connection (others are an error).
  Result<bool> handle_inbox();
  [[nodiscard]] bool done() const {
    return host_received.size() == g2h.size() && guest_received.size() == h2g.size();
  }
  std::string state() const;
};

/// Receives exactly `n` payload bytes on `conn`, consuming them and advertising credit as
/// Linux does; CREDIT_UPDATEs are taken in, CREDIT_REQUESTs answered, anything else (or a
/// packet of another socket) is an error. Packets after the n-th byte stay in the inbox.
Result<std::vector<std::byte>> guest_receive(vsock_guest::Guest& guest, vsock_guest::Conn& conn, std::size_t n,
                                             std::chrono::milliseconds timeout = 10s);
/// The next packet on `conn` that is not a CREDIT_UPDATE (taken in) or a CREDIT_REQUEST
/// (answered), applied to `conn`. A packet of another socket is an error.
Result<vsock_guest::Packet> guest_expect(vsock_guest::Guest& guest, vsock_guest::Conn& conn,
                                         std::chrono::milliseconds timeout = 10s);
/// Sends `payload` on `conn` in RW packets of at most `fragment` bytes, each within the
/// device's credit (waiting for its CREDIT_UPDATE when out of it); `last_flags` go on the last
/// packet only (EOM for a SEQPACKET message).
Result<void> guest_send(vsock_guest::Guest& guest, vsock_guest::Conn& conn, std::span<const std::byte> payload,
                        std::uint32_t last_flags = 0, std::size_t fragment = vsock_guest::max_payload,
                        std::chrono::milliseconds timeout = 10s);

/// Cycles through the tx shapes: one buffer, header apart, Linux paged, header split.
vsock_guest::TxShape rotating_shape(std::size_t payload, std::size_t n);

/// A guest socket connected to a host listener at <uds>_<port>, and the host's accepted end.
struct Established {
  UniqueFd listener;
  UniqueFd host;
  vsock_guest::Conn conn;
};
Result<Established> establish(VsockVm& vm, std::uint32_t host_port, std::uint32_t guest_port,
                              std::uint32_t buf_alloc = 256 * 1024, int type = SOCK_STREAM);
/// The same for any VM: `guest` (CID `cid`) connects to host port `host_port`, whose
/// listener is bound at `path`.
Result<Established> establish_at(vsock_guest::Guest& guest, std::uint64_t cid, const std::filesystem::path& path,
                                 std::uint32_t host_port, std::uint32_t guest_port,
                                 std::uint32_t buf_alloc = 256 * 1024, int type = SOCK_STREAM);

}  // namespace vusim::vsock_test
