// Fuzz target: the vsock device fed fuzzed tx packets, rx buffer layouts and host-socket
// events, behind a real Session (so rings, memory and notifications are the real ones).
//
// Per input: a fresh device on a fresh io_context, guest RAM as a memfd, rx and tx rings
// configured as QEMU 7.2 does. The input is then a program of steps:
//   0  a tx packet: header fields, payload, split into up to 4 descriptors; kick
//   1  rx buffers: up to 8 chains of fuzzed sizes and splits; kick
//   2  a host client connects to the VM's socket and writes fuzzed bytes ("CONNECT ...")
//   3  a host listener appears at <uds>_<port> for guest connects
//   4  a host socket writes fuzzed bytes, reads, half-closes or closes
//   5  the event loop runs what is ready
// Nothing may crash, hang, leak or trip a sanitizer.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <spdlog/spdlog.h>

#include "fuzz_target.hpp"
#include "vhostuser/codec.hpp"
#include "vhostuser/server.hpp"
#include "vhostuser/session.hpp"
#include "virtio/ring.hpp"
#include "vsock/device.hpp"

namespace {

using namespace vhostuser;

constexpr std::uint64_t ram_size = 1 << 20;
constexpr std::uint64_t frontend_base = 0x7f0000000000ull;
constexpr std::uint16_t queue_size = 64;
constexpr std::uint64_t guest_cid = 3;

class Input {
 public:
  explicit Input(const std::uint8_t* d, std::size_t n) : d_(d), n_(n) {}
  bool empty() const { return n_ == 0; }
  std::uint8_t u8() { return n_ ? (--n_, *d_++) : 0; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(u8() | (u8() << 8)); }
  std::uint32_t u32() { return u16() | (std::uint32_t{u16()} << 16); }
  std::vector<std::byte> bytes(std::size_t n) {
    n = std::min(n, n_);
    std::vector<std::byte> out(n);
    if (n) std::memcpy(out.data(), d_, n);
    d_ += n;
    n_ -= n;
    return out;
  }

 private:
  const std::uint8_t* d_;
  std::size_t n_;
};

class NullWatcher final : public KickWatcher {
 public:
  void watch_kick(std::uint16_t, int) override {}
  void unwatch_kick(std::uint16_t) override {}
};

/// The guest driver side of the rx and tx rings, in the memfd mapping.
class Guest {
 public:
  explicit Guest(std::byte* ram) : ram_(ram) {}
  static std::uint64_t desc(std::uint16_t q) { return 0x1000 + q * 0x2000ull; }
  static std::uint64_t avail(std::uint16_t q) { return desc(q) + 16 * queue_size; }
  static std::uint64_t used(std::uint16_t q) { return desc(q) + 0x1000; }

  /// Posts a chain of `sizes` buffers (writable for rx) with `content` laid into them.
  void post(std::uint16_t q, const std::vector<std::uint32_t>& sizes, const std::vector<std::byte>& content) {
    std::uint16_t& next = next_desc_[q];
    const std::uint16_t head = next;
    std::size_t off = 0;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      const std::uint16_t idx = next;
      next = static_cast<std::uint16_t>((next + 1) % queue_size);
      const std::uint64_t addr = buffer_area_ + (cursor_ % (ram_size - buffer_area_ - 0x10000));
      cursor_ += sizes[i] + 64;
      const std::size_t n = std::min<std::size_t>(sizes[i], content.size() > off ? content.size() - off : 0);
      if (n) std::memcpy(ram_ + addr, content.data() + off, n);
      off += n;
      virtio::Descriptor d;
      d.addr = addr;
      d.len = sizes[i];
      d.flags = static_cast<std::uint16_t>((q == 0 ? virtio::VIRTQ_DESC_F_WRITE : 0) |
                                           (i + 1 < sizes.size() ? virtio::VIRTQ_DESC_F_NEXT : 0));
      d.next = next;
      std::memcpy(ram_ + desc(q) + 16 * idx, &d, sizeof d);
    }
    std::uint16_t& a = avail_idx_[q];
    const virtio::Le16 entry{head};
    std::memcpy(ram_ + avail(q) + 4 + 2 * (a % queue_size), &entry, 2);
    ++a;
    const virtio::Le16 idx{a};
    std::memcpy(ram_ + avail(q) + 2, &idx, 2);
  }

 private:
  std::byte* ram_;
  static constexpr std::uint64_t buffer_area_ = 0x10000;
  std::uint64_t cursor_ = 0;
  std::array<std::uint16_t, 2> next_desc_{};
  std::array<std::uint16_t, 2> avail_idx_{};
};

template <class T>
RawMessage message(Request r, const T& payload, std::vector<UniqueFd> fds = {}) {
  auto b = bytes_of(payload);
  RawMessage m;
  m.header = {static_cast<std::uint32_t>(r), header_flags::version, static_cast<std::uint32_t>(b.size())};
  m.body.assign(b.begin(), b.end());
  m.fds = std::move(fds);
  return m;
}

UniqueFd unix_socket_to(const std::string& path) {
  UniqueFd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)};
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) fd.reset();
  return fd;
}

const std::filesystem::path& work_dir() {
  static const std::filesystem::path dir = [] {
    char tmpl[] = "/tmp/fuzz-vsock-XXXXXX";
    return std::filesystem::path(::mkdtemp(tmpl));
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bool quiet = (spdlog::set_level(spdlog::level::off), true);
  (void)quiet;
  Input in(data, size);
  boost::asio::io_context io;
  vsock::DeviceConfig config;
  config.guest_cid = guest_cid;
  config.uds_path = work_dir() / "vm.vsock";
  config.tx_buffer_size = 16 * 1024;
  config.max_connections = 16;
  vsock::VsockDevice device(io.get_executor(), config);
  if (!device.listen()) return 0;
  NullWatcher watcher;
  Session session("fuzz", device, watcher);

  UniqueFd ram_fd{::memfd_create("fuzz-ram", MFD_CLOEXEC)};
  if (!ram_fd || ::ftruncate(ram_fd.get(), ram_size) != 0) return 0;
  auto* ram = static_cast<std::byte*>(::mmap(nullptr, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED, ram_fd.get(), 0));
  if (ram == MAP_FAILED) return 0;
  Guest guest(ram);

  // QEMU 7.2's start sequence for rx (0) and tx (1); EVENT_IDX and SEQPACKET from the input.
  const std::uint8_t feature_bits = in.u8();
  std::uint64_t features = bit(32) | bit(protocol_features_bit);
  if (feature_bits & 1) features |= bit(virtio::feature::event_idx);
  if (feature_bits & 2) features |= bit(vsock::feature::seqpacket);
  (void)session.handle(message(Request::set_protocol_features, session.offered_protocol_features()));
  (void)session.handle(message(Request::set_features, features));
  std::vector<UniqueFd> fds;
  fds.emplace_back(::fcntl(ram_fd.get(), F_DUPFD_CLOEXEC, 0));
  MemTable table{{MemRegion{0, ram_size, frontend_base, 0}}};
  RawMessage mem;
  mem.body = encode_payload(table);
  mem.header = {static_cast<std::uint32_t>(Request::set_mem_table), header_flags::version,
                static_cast<std::uint32_t>(mem.body.size())};
  mem.fds = std::move(fds);
  (void)session.handle(std::move(mem));
  for (std::uint16_t q = 0; q < 2; ++q) {
    (void)session.handle(message(Request::set_vring_num, VringState{q, queue_size}));
    (void)session.handle(message(Request::set_vring_base, VringState{q, 0}));
    (void)session.handle(message(Request::set_vring_addr,
                                 VringAddr{q, 0, frontend_base + Guest::desc(q), frontend_base + Guest::used(q),
                                           frontend_base + Guest::avail(q), 0}));
    std::vector<UniqueFd> kick;
    kick.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    (void)session.handle(message(Request::set_vring_kick, std::uint64_t{q}, std::move(kick)));
    (void)session.handle(message(Request::set_vring_enable, VringState{q, 1}));
  }

  std::vector<UniqueFd> host_sockets;
  std::vector<UniqueFd> host_listeners;
  for (int steps = 0; steps < 64 && !in.empty(); ++steps) {
    switch (in.u8() % 6) {
      case 0: {  // a tx packet
        vsock::Header h;
        const std::uint8_t which = in.u8();
        h.src = {which & 1 ? guest_cid : in.u32(), in.u16()};
        h.dst.cid = which & 2 ? vsock::cid_host : in.u32();
        // Host-initiated connections use host ports from 2^30 on (HostSide::allocate_port).
        h.dst.port = which & 16 ? (1u << 30) + in.u8() : in.u16();
        h.type = static_cast<std::uint16_t>(which & 4 ? 1 : in.u8() % 4);
        h.op = in.u8() % 9;
        h.flags = in.u8() % 4;
        h.buf_alloc = in.u32();
        h.fwd_cnt = in.u32();
        auto payload = in.bytes(in.u16() % 8192);
        h.len = which & 8 ? static_cast<std::uint32_t>(payload.size()) : in.u32();
        std::vector<std::byte> content(sizeof(vsock::WireHeader));
        const auto wire = vsock::encode(h);
        std::memcpy(content.data(), &wire, sizeof wire);
        content.insert(content.end(), payload.begin(), payload.end());
        std::vector<std::uint32_t> sizes;
        std::uint32_t left = static_cast<std::uint32_t>(content.size());
        for (int parts = in.u8() % 4; parts > 0 && left > 0; --parts) {
          const std::uint32_t n = std::min<std::uint32_t>(left, in.u16() % 256 + 1);
          sizes.push_back(n);
          left -= n;
        }
        if (left > 0) sizes.push_back(left);
        guest.post(1, sizes, content);
        session.kick(1);
        break;
      }
      case 1: {  // rx buffers
        for (int chains = in.u8() % 8 + 1; chains > 0; --chains) {
          std::vector<std::uint32_t> sizes{static_cast<std::uint32_t>(in.u16() % 8192)};
          if (in.u8() & 1) sizes.push_back(in.u16() % 4096);
          guest.post(0, sizes, {});
        }
        session.kick(0);
        break;
      }
      case 2: {  // a host client
        if (host_sockets.size() >= 8) break;
        UniqueFd fd = unix_socket_to(config.uds_path.native());
        if (!fd) break;
        auto line = in.bytes(in.u8() % 40);
        (void)::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        host_sockets.push_back(std::move(fd));
        break;
      }
      case 3: {  // a host listener for guest connects
        if (host_listeners.size() >= 4) break;
        const std::string path = config.uds_path.native() + "_" + std::to_string(in.u8() % 4);
        auto fd = vhostuser::bind_unix_listener(path, SOCK_STREAM);
        if (fd) host_listeners.push_back(std::move(*fd));
        break;
      }
      case 4: {  // a host socket acts
        if (host_sockets.empty()) break;
        UniqueFd& fd = host_sockets[in.u8() % host_sockets.size()];
        switch (in.u8() % 4) {
          case 0: {
            auto bytes = in.bytes(in.u16() % 16384);
            (void)::send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
            break;
          }
          case 1: {
            std::byte buf[16384];
            (void)::recv(fd.get(), buf, sizeof buf, MSG_DONTWAIT);
            break;
          }
          case 2: ::shutdown(fd.get(), SHUT_WR); break;
          default: fd.reset(); break;
        }
        break;
      }
      default: (void)io.poll(); break;
    }
    // Accept guest connections that reached a listener, so they get a host peer.
    for (auto& l : host_listeners) {
      if (host_sockets.size() >= 16) break;
      UniqueFd c{::accept4(l.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)};
      if (c) host_sockets.push_back(std::move(c));
    }
  }
  (void)io.poll();
  session.reset();
  device.close();
  for (std::uint16_t p = 0; p < 4; ++p) {
    std::error_code ignored;
    std::filesystem::remove(config.uds_path.native() + "_" + std::to_string(p), ignored);
  }
  ::munmap(ram, ram_size);
  return 0;
}
