// vsock_bench: stream throughput of vsock::VsockDevice served by vhostuser::Server, driven
// through real split virtqueues in memfd guest RAM by the simulator's Linux-like guest
// (tests/sim/test/vsock_guest.hpp) and by AF_UNIX host applications, as the simulator tests
// set it up (tests/sim/test/vsock_fixture.hpp). Every byte that arrives is compared with what
// was sent: a figure is only printed for data that arrived whole and in order.
//
// It prints figures and asserts nothing about speed (DEVELOPERS.md: speed is measured by
// benchmarks that print figures). Exit status 1 means corrupted data, a broken virtqueue or
// credit rule, or a stall (every transfer has a deadline); 2 is a bad command line.
//
//   vsock_bench [--mib N] [--repeat R] [--rows all|one|many] [--connections C] [--tx-buffer-size BYTES]
//
// Rows: one connection with several rx buffer / tx chain layouts, each with and without
// VIRTIO_F_EVENT_IDX; then C concurrent connections sharing N MiB per direction. Each row
// boots a fresh VM (QEMU 7.2 sequence) and measures guest->host, then host->guest, R times
// each; the median run is printed.
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "virtio/ring.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"

namespace {

using namespace std::chrono_literals;
using vusim::ChainLayout;
using vusim::Failure;
using vusim::Fault;
using vusim::Result;
using vusim::vsock_test::Established;
using vusim::vsock_test::StreamPump;
using vusim::vsock_test::VmOptions;
using vusim::vsock_test::VsockVm;
namespace vg = vusim::vsock_guest;

constexpr double mib = 1024.0 * 1024.0;

#ifndef VSOCK_BENCH_BUILD
#define VSOCK_BENCH_BUILD "unknown"
#endif

#if defined(__SANITIZE_ADDRESS__)
constexpr bool sanitized = true;
#else
constexpr bool sanitized = false;
#endif

struct Settings {
  unsigned mib = 64;          ///< bytes per direction per row, in MiB
  unsigned connections = 64;  ///< of the aggregate rows
  std::uint32_t tx_buffer_size = 64 * 1024;  ///< the device's buf_alloc (the daemon's default)
  unsigned repeat = 1;                        ///< timed runs per direction; the median is shown
  std::string rows = "all";                   ///< "one": the single-connection rows, "many": the others
};

/// How the guest lays out its buffers: rx chains it posts (and refills with), the tx chain of
/// an RW packet with `payload` bytes, and the largest payload it puts in one packet.
struct Layout {
  std::string name;
  ChainLayout rx;
  std::function<vg::TxShape(std::size_t payload)> tx;
  std::size_t max_packet = vg::max_payload;
};

std::vector<Layout> layouts() {
  return {
      // Linux: rx buffers of 4 KiB + header in one descriptor (6.3 and later); a 64 KiB tx
      // packet as the header, 32 KiB linear and 4 KiB page fragments in an indirect table
      // (6.12's non-linear skbs).
      {"linux: rx 4K+hdr, tx paged", {.segments = {{.len = 4096 + vg::header_size}}}, vg::linux_paged},
      // Large buffers: one 64 KiB packet per rx buffer, one descriptor per tx packet.
      {"64K: rx 64K+hdr, tx 1 desc", {.segments = {{.len = 65536 + vg::header_size}}}, vg::one_buffer},
      // Small buffers both ways: 1 KiB rx buffers, 1 KiB tx packets (980 bytes of payload).
      {"1K: rx 1K, tx 1K packets",
       {.segments = {{.len = 1024}}},
       vg::one_buffer,
       1024 - vg::header_size},
      // Linux before 6.3: the header in its own descriptor, both ways.
      {"hdr apart: rx 44+4K, tx 44+64K", {.segments = {{.len = vg::header_size}, {.len = 4096}}}, vg::header_apart},
  };
}

struct Figure {
  std::size_t bytes = 0;
  double seconds = 0;
  double daemon_cpu_seconds = 0;  ///< CPU time of the daemon's io_context thread
  std::uint64_t daemon_wakeups = 0;  ///< times that thread went to sleep and was woken
  [[nodiscard]] double mib_per_s() const { return seconds > 0 ? bytes / mib / seconds : 0; }
  [[nodiscard]] double daemon_load() const { return seconds > 0 ? daemon_cpu_seconds / seconds : 0; }
  /// MiB moved per second of daemon CPU: the daemon's own cost, whoever the bottleneck is.
  [[nodiscard]] double mib_per_daemon_cpu_s() const {
    return daemon_cpu_seconds > 0 ? bytes / mib / daemon_cpu_seconds : 0;
  }
  [[nodiscard]] double wakeups_per_mib() const { return bytes > 0 ? daemon_wakeups / (bytes / mib) : 0; }
};

struct Row {
  std::string name;
  bool event_idx = false;
  unsigned connections = 1;
  Figure g2h{};
  Figure h2g{};
};

/// Fails the row: the benchmark stops with status 1.
struct Stop {
  std::string what;
};

template <class T>
T need(Result<T> r, std::string_view what) {
  if (!r) throw Stop{fmt::format("{}: {}: {}", what, vusim::to_string(r.error().fault), r.error().message)};
  if constexpr (!std::is_void_v<T>) return std::move(*r);
}

/// A transfer may take this long before it counts as a stall: generous, since it only exists
/// so that a stuck device fails the run instead of hanging it.
std::chrono::milliseconds deadline_for(std::size_t bytes) {
  return 30s + std::chrono::milliseconds(bytes / 512);  // 30 s + 2 s per MiB
}

// --- the VM ------------------------------------------------------------------------------

std::unique_ptr<VsockVm> boot(const Settings& s, const Layout& layout, bool event_idx) {
  VmOptions options{.tweak = [size = s.tx_buffer_size](vsock::DeviceConfig& c) { c.tx_buffer_size = size; },
                    .rx_buffers = 0,
                    .region_mib = 32};
  if (!event_idx) options.model.driver_features &= ~vhostuser::bit(virtio::feature::event_idx);
  auto vm = std::make_unique<VsockVm>(std::move(options));
  need(vm->boot(), "boot");
  auto& guest = vm->guest();
  if (guest.rx().options().event_idx != event_idx || guest.tx().options().event_idx != event_idx) {
    throw Stop{fmt::format("EVENT_IDX {} was asked for but not negotiated", event_idx ? "on" : "off")};
  }
  // As Linux's virtio_vsock_rx_fill: fill the rx ring.
  const ChainLayout rx = layout.rx;
  const std::size_t descs = rx.indirect_from ? *rx.indirect_from + 1 : rx.segments.size();
  guest.set_refill([rx] { return rx; });
  need(guest.post_rx(guest.rx().options().size / descs, rx), "posting rx buffers");
  return vm;
}

/// Voluntary context switches of thread `tid` of this process: how often it blocked (in
/// epoll_wait, for the daemon's io_context thread) and was woken again.
std::uint64_t voluntary_switches(pid_t tid) {
  std::ifstream status(fmt::format("/proc/self/task/{}/status", tid));
  constexpr std::string_view key = "voluntary_ctxt_switches:";
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with(key)) return std::stoull(line.substr(key.size()));
  }
  throw Stop{fmt::format("no {} in /proc/self/task/{}/status", key, tid)};
}

Figure timed(VsockVm& vm, const std::function<Result<void>()>& transfer, std::size_t bytes, std::string_view what) {
  const pid_t daemon = vm.backend.on_backend([] { return ::gettid(); });
  const auto switches0 = voluntary_switches(daemon);
  const auto cpu0 = vm.backend.cpu_time();
  const auto t0 = std::chrono::steady_clock::now();
  need(transfer(), what);
  const auto t1 = std::chrono::steady_clock::now();
  const auto cpu1 = vm.backend.cpu_time();
  const auto switches1 = voluntary_switches(daemon);
  return {.bytes = bytes,
          .seconds = std::chrono::duration<double>(t1 - t0).count(),
          .daemon_cpu_seconds = std::chrono::duration<double>(cpu1 - cpu0).count(),
          .daemon_wakeups = switches1 - switches0};
}

/// The run of median throughput.
Figure median(std::vector<Figure> runs) {
  std::sort(runs.begin(), runs.end(), [](const Figure& a, const Figure& b) { return a.mib_per_s() < b.mib_per_s(); });
  return runs.at((runs.size() - 1) / 2);
}

/// Room for `n` bytes, touched now, so that page faults and reallocations of the receiving
/// side's copy stay out of the timed transfer.
void make_room(std::vector<std::byte>& v, std::size_t n) {
  v.resize(n);
  v.clear();
}

void compare(const std::vector<std::byte>& got, const std::vector<std::byte>& sent, std::string_view what) {
  if (got.size() != sent.size()) throw Stop{fmt::format("{}: {} bytes arrived, {} sent", what, got.size(), sent.size())};
  if (got.empty() || std::memcmp(got.data(), sent.data(), got.size()) == 0) return;
  const auto at = std::mismatch(got.begin(), got.end(), sent.begin()).first - got.begin();
  throw Stop{fmt::format("{}: data differs from byte {} on (checksums {:016x} sent, {:016x} received)", what, at,
                         vusim::vsock_test::checksum(sent), vusim::vsock_test::checksum(got))};
}

// --- one connection: the fixture's StreamPump ---------------------------------------------

Row one_connection(const Settings& s, const Layout& layout, bool event_idx) {
  auto vm = boot(s, layout, event_idx);
  auto e = need(establish(*vm, 5000, 49152), "connect");
  const auto shape = [tx = layout.tx](std::size_t payload, std::size_t) { return tx(payload); };
  const std::size_t bytes = std::size_t{s.mib} << 20;

  {  // Warm-up, both ways at once: first touch of the buffers, the connection's tx buffer.
    StreamPump warm{.guest = vm->guest(), .conn = e.conn, .host_fd = e.host.get(),
                    .g2h = vusim::vsock_test::pattern(256 * 1024, 1),
                    .h2g = vusim::vsock_test::pattern(256 * 1024, 2)};
    warm.shape = shape;
    warm.max_packet = layout.max_packet;
    need(warm.run(deadline_for(512 * 1024)), "warm-up");
    compare(warm.host_received, warm.g2h, "warm-up guest->host");
    compare(warm.guest_received, warm.h2g, "warm-up host->guest");
  }

  // One direction at a time, each byte checked after the clock stopped.
  const auto transfer = [&](bool guest_to_host, std::uint64_t seed) {
    StreamPump pump{.guest = vm->guest(), .conn = e.conn, .host_fd = e.host.get()};
    pump.shape = shape;
    pump.max_packet = layout.max_packet;
    auto& sent = guest_to_host ? pump.g2h : pump.h2g;
    auto& received = guest_to_host ? pump.host_received : pump.guest_received;
    sent = vusim::vsock_test::pattern(bytes, seed);
    make_room(received, bytes);
    const std::string_view what = guest_to_host ? "guest->host" : "host->guest";
    const Figure figure = timed(*vm, [&] { return pump.run(deadline_for(bytes)); }, bytes, what);
    compare(received, sent, what);
    return figure;
  };
  std::vector<Figure> g2h, h2g;
  for (unsigned r = 0; r < s.repeat; ++r) {
    g2h.push_back(transfer(true, 10 + 2 * r));
    h2g.push_back(transfer(false, 11 + 2 * r));
  }
  return {.name = layout.name, .event_idx = event_idx, .connections = 1, .g2h = median(g2h), .h2g = median(h2g)};
}

// --- many connections ----------------------------------------------------------------------

/// One of the concurrent connections: the guest socket and the host's accepted end, with what
/// each side sends and has received.
struct Flow {
  Established e;
  std::vector<std::byte> g2h{}, h2g{}, host_received{}, guest_received{};
  std::size_t g2h_sent = 0;
  std::size_t h2g_written = 0;
  [[nodiscard]] bool done() const {
    return host_received.size() == g2h.size() && guest_received.size() == h2g.size();
  }
};

/// StreamPump for many connections over one guest: the same guest behaviour per connection
/// (send within the device's credit, consume at once, CREDIT_UPDATE by Linux's rule, answer
/// CREDIT_REQUEST), the guest's tx packets round-robin over the connections, the host
/// applications non-blocking. StreamPump itself takes every packet in the inbox as its own.
class FlowPump {
 public:
  FlowPump(vg::Guest& guest, std::vector<Flow>& flows, const Layout& layout, std::uint32_t first_guest_port)
      : guest_(guest), flows_(flows), layout_(layout), first_port_(first_guest_port) {}

  Result<void> run(std::chrono::milliseconds timeout) {
    const auto deadline = vg::Clock::now() + timeout;
    std::vector<pollfd> fds(flows_.size());
    while (!std::all_of(flows_.begin(), flows_.end(), [](const Flow& f) { return f.done(); })) {
      bool progress = false;
      for (auto step : {&FlowPump::guest_receives, &FlowPump::guest_sends, &FlowPump::hosts}) {
        auto moved = (this->*step)();
        if (!moved) return moved.error();
        progress |= *moved;
      }
      if (progress) continue;
      if (vg::Clock::now() >= deadline) return Failure{Fault::timeout, state(timeout)};
      for (std::size_t i = 0; i < flows_.size(); ++i) {
        const Flow& f = flows_[i];
        const auto events = static_cast<short>((f.host_received.size() < f.g2h.size() ? POLLIN : 0) |
                                               (f.h2g_written < f.h2g.size() ? POLLOUT : 0));
        fds[i] = {events != 0 ? f.e.host.get() : -1, events, 0};
      }
      if (auto ok = guest_.wait(fds, deadline); !ok) return ok;
    }
    return {};
  }

 private:
  Flow* flow_of(const vg::Packet& p) {
    const std::size_t i = p.dst_port - first_port_;
    return i < flows_.size() && flows_[i].e.conn.matches(p) ? &flows_[i] : nullptr;
  }

  Result<bool> guest_receives() {
    auto got = guest_.collect();
    if (!got) return got.error();
    bool any = *got;
    // Sending a CREDIT_UPDATE collects again, so take the inbox as a batch first.
    while (!guest_.inbox().empty()) {
      std::deque<vg::Packet> batch;
      batch.swap(guest_.inbox());
      for (vg::Packet& p : batch) {
        any = true;
        Flow* f = flow_of(p);
        if (f == nullptr) return Failure{Fault::guest, "packet for no connection of the guest: " + vg::describe(p)};
        vg::Conn& c = f->e.conn;
        if (auto ok = c.on_packet(p); !ok) return ok.error();
        switch (p.op) {
          case vg::op_rw:
            f->guest_received.insert(f->guest_received.end(), p.payload.begin(), p.payload.end());
            c.consume(p.len);
            break;
          case vg::op_credit_update: break;
          case vg::op_credit_request:
            if (auto ok = guest_.send(c.make(vg::op_credit_update)); !ok) return ok.error();
            break;
          default: return Failure{Fault::guest, "unexpected in the middle of the streams: " + vg::describe(p)};
        }
      }
      for (Flow& f : flows_) {
        if (!f.e.conn.update_due()) continue;
        if (auto ok = guest_.send(f.e.conn.make(vg::op_credit_update)); !ok) return ok.error();
      }
    }
    return any;
  }

  Result<bool> guest_sends() {
    bool any = false;
    for (bool sent_one = true; sent_one;) {
      sent_one = false;
      for (Flow& f : flows_) {
        vg::Conn& c = f.e.conn;
        const std::uint32_t credit = c.peer_free();
        if (f.g2h_sent == f.g2h.size() || credit == 0) continue;
        const std::size_t n = std::min<std::size_t>({credit, layout_.max_packet, f.g2h.size() - f.g2h_sent});
        const vg::Conn before = c;
        auto sent = guest_.try_send(c.make(vg::op_rw, std::span(f.g2h).subspan(f.g2h_sent, n)), layout_.tx(n));
        if (!sent) return sent.error();
        if (!*sent) {
          c = before;  // the tx ring is full: go on once the device returned chains
          return any;
        }
        f.g2h_sent += n;
        any = sent_one = true;
      }
    }
    return any;
  }

  /// The host applications: one poll(2) over the sockets that have something to do, then
  /// non-blocking writes and reads on those that are ready.
  Result<bool> hosts() {
    ready_.clear();
    for (const Flow& f : flows_) {
      const auto events = static_cast<short>((f.host_received.size() < f.g2h.size() ? POLLIN : 0) |
                                             (f.h2g_written < f.h2g.size() ? POLLOUT : 0));
      ready_.push_back({events != 0 ? f.e.host.get() : -1, events, 0});
    }
    const int n = ::poll(ready_.data(), ready_.size(), 0);
    if (n < 0 && errno != EINTR) return io_failure("poll");
    if (n <= 0) return false;
    bool any = false;
    for (std::size_t i = 0; i < flows_.size(); ++i) {
      if (ready_[i].revents == 0) continue;
      Flow& f = flows_[i];
      const int fd = f.e.host.get();
      while (f.h2g_written < f.h2g.size()) {
        const std::size_t len = std::min<std::size_t>(64 * 1024, f.h2g.size() - f.h2g_written);
        const ssize_t w = ::send(fd, f.h2g.data() + f.h2g_written, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0 && errno != EAGAIN && errno != EINTR) return io_failure("host send");
        if (w <= 0) break;
        f.h2g_written += static_cast<std::size_t>(w);
        any = true;
      }
      while (f.host_received.size() < f.g2h.size()) {
        const ssize_t r = ::recv(fd, buf_.data(), buf_.size(), MSG_DONTWAIT);
        if (r == 0) return Failure{Fault::closed, "host socket: EOF in the middle of the stream"};
        if (r < 0 && errno != EAGAIN && errno != EINTR) return io_failure("host recv");
        if (r < 0) break;
        f.host_received.insert(f.host_received.end(), buf_.begin(), buf_.begin() + r);
        any = true;
      }
    }
    return any;
  }

  static Failure io_failure(std::string_view what) {
    return Failure{Fault::io, fmt::format("{}: {}", what, std::strerror(errno))};
  }

  std::string state(std::chrono::milliseconds timeout) const {
    std::size_t done = 0;
    std::string first;
    for (const Flow& f : flows_) {
      if (f.done()) {
        ++done;
      } else if (first.empty()) {
        first = fmt::format("guest port {}: guest->host {}/{} sent, {} read by the host; host->guest {}/{} written, "
                            "{} received; guest credit {} (device buf_alloc {}, fwd_cnt {})",
                            f.e.conn.port, f.g2h_sent, f.g2h.size(), f.host_received.size(), f.h2g_written,
                            f.h2g.size(), f.guest_received.size(), f.e.conn.peer_free(), f.e.conn.peer_buf_alloc,
                            f.e.conn.peer_fwd_cnt);
      }
    }
    return fmt::format("streams incomplete after {} ms: {} of {} connections done; first unfinished: {}",
                       timeout.count(), done, flows_.size(), first);
  }

  vg::Guest& guest_;
  std::vector<Flow>& flows_;
  const Layout& layout_;
  std::uint32_t first_port_;
  std::vector<pollfd> ready_{};
  std::vector<std::byte> buf_ = std::vector<std::byte>(64 * 1024);
};

Row many_connections(const Settings& s, const Layout& layout, bool event_idx) {
  auto vm = boot(s, layout, event_idx);
  constexpr std::uint32_t first_guest_port = 50000;
  std::vector<Flow> flows;
  flows.reserve(s.connections);
  for (unsigned i = 0; i < s.connections; ++i) {
    flows.push_back({.e = need(establish(*vm, 6000 + i, first_guest_port + i), fmt::format("connect #{}", i))});
  }
  const std::size_t total = std::size_t{s.mib} << 20;
  // Each connection carries its share of `total` (the first ones one byte more).
  const auto share = [&](unsigned i) { return total / s.connections + (i < total % s.connections ? 1 : 0); };
  const auto transfer = [&](bool guest_to_host, std::uint64_t seed) {
    for (unsigned i = 0; i < s.connections; ++i) {
      Flow& f = flows[i];
      f.g2h.clear();
      f.h2g.clear();
      f.host_received.clear();
      f.guest_received.clear();
      f.g2h_sent = f.h2g_written = 0;
      (guest_to_host ? f.g2h : f.h2g) = vusim::vsock_test::pattern(share(i), seed + i);
      make_room(guest_to_host ? f.host_received : f.guest_received, share(i));
    }
    FlowPump pump(vm->guest(), flows, layout, first_guest_port);
    const std::string what = guest_to_host ? "guest->host" : "host->guest";
    const Figure figure = timed(*vm, [&] { return pump.run(deadline_for(total)); }, total, what);
    for (Flow& f : flows) {
      const std::string conn = fmt::format("{}, guest port {}", what, f.e.conn.port);
      if (guest_to_host) {
        compare(f.host_received, f.g2h, conn);
      } else {
        compare(f.guest_received, f.h2g, conn);
      }
    }
    return figure;
  };
  transfer(true, 100);  // warm-up: every connection's buffers touched once
  std::vector<Figure> g2h, h2g;
  for (unsigned r = 0; r < s.repeat; ++r) {
    g2h.push_back(transfer(true, 1000 + 200 * r));
    h2g.push_back(transfer(false, 1100 + 200 * r));
  }
  return {.name = fmt::format("{} conn{}, {}", s.connections, s.connections == 1 ? "" : "s",
                              layout.name.substr(0, layout.name.find(':'))),
          .event_idx = event_idx,
          .connections = s.connections,
          .g2h = median(g2h),
          .h2g = median(h2g)};
}

// --- the table -------------------------------------------------------------------------------

void print_header(const Settings& s) {
  fmt::print("vsock_bench: {} build{}, {} CPUs; {} MiB per direction per row{}; device buf_alloc {} KiB, "
             "guest buf_alloc 256 KiB; rx/tx rings of 128\n",
             VSOCK_BENCH_BUILD, sanitized ? " with ASan+UBSan" : "", std::thread::hardware_concurrency(), s.mib,
             s.repeat > 1 ? fmt::format(", median of {} runs", s.repeat) : "", s.tx_buffer_size / 1024);
  fmt::print("CPU: the daemon's io_context thread's CPU time / wall time; MiB/CPU-s: MiB moved per second of\n"
             "that CPU time; wake/MiB: times per MiB that thread slept in epoll_wait and was woken\n");
  fmt::print("{:<32} {:>5}  {:-^32}  {:-^32}\n", "", "EVENT", " guest -> host ", " host -> guest ");
  fmt::print("{:<32} {:>5}  {:>8} {:>5} {:>9} {:>8}  {:>8} {:>5} {:>9} {:>8}\n", "layout", "_IDX", "MiB/s", "CPU",
             "MiB/CPU-s", "wake/MiB", "MiB/s", "CPU", "MiB/CPU-s", "wake/MiB");
  std::fflush(stdout);
}

void print_row(const Row& r) {
  const auto cells = [](const Figure& f) {
    return fmt::format("{:>8.1f} {:>4.0f}% {:>9.0f} {:>8.0f}", f.mib_per_s(), 100 * f.daemon_load(),
                       f.mib_per_daemon_cpu_s(), f.wakeups_per_mib());
  };
  fmt::print("{:<32} {:>5}  {}  {}\n", r.name, r.event_idx ? "on" : "off", cells(r.g2h), cells(r.h2g));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  CLI::App app{"vsock_bench: stream throughput of the vsock device through the vhost-user simulator"};
  app.add_option("--mib", s.mib, "MiB moved per direction in each row")->check(CLI::Range(1u, 4096u));
  app.add_option("--connections", s.connections, "concurrent connections of the aggregate rows")
      ->check(CLI::Range(1u, 512u));
  app.add_option("--repeat", s.repeat, "timed runs per direction and row; the median is printed")
      ->check(CLI::Range(1u, 99u));
  app.add_option("--rows", s.rows, "which rows: all, one (one connection) or many (concurrent connections)")
      ->check(CLI::IsMember({"all", "one", "many"}));
  app.add_option("--tx-buffer-size", s.tx_buffer_size, "the device's per-connection buffer, advertised as buf_alloc")
      ->check(CLI::Range(4096u, 16u << 20));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  spdlog::set_level(spdlog::level::warn);  // the device logs every connection at info

  print_header(s);
  const std::vector<Layout> all = layouts();
  std::string row_name;
  try {
    for (const Layout& layout : all) {
      if (s.rows == "many") break;
      for (bool event_idx : {true, false}) {
        row_name = fmt::format("{}, EVENT_IDX {}", layout.name, event_idx ? "on" : "off");
        print_row(one_connection(s, layout, event_idx));
      }
    }
    for (bool event_idx : {true, false}) {
      if (s.rows == "one") break;
      row_name = fmt::format("{} connections, EVENT_IDX {}", s.connections, event_idx ? "on" : "off");
      print_row(many_connections(s, all.front(), event_idx));
    }
  } catch (const Stop& stop) {
    std::fprintf(stderr, "vsock_bench: FAILED: %s: %s\n", row_name.c_str(), stop.what.c_str());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "vsock_bench: FAILED: %s: %s\n", row_name.c_str(), e.what());
    return 1;
  }
  fmt::print("all data checked: every byte arrived in order\n");
  return 0;
}
