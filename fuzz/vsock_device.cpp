// Fuzz target: three vsock devices on one sibling router, fed fuzzed tx packets, rx buffer
// layouts, host-socket events and front-end events, each behind a real Session (so rings,
// memory and notifications are the real ones).
//
// Per input: a fresh io_context, a fresh vsock::Router and three VMs (CIDs 3, 4, 5), each
// device on its own strand of the io_context as vhost-vsockd runs them, with guest RAM as a
// memfd (made once, reused by every run) and rx and tx rings configured as QEMU 7.2 does. Groups: 3 {a}, 4 {a, b}, 5 {b}, so
// 3-4 and 4-5 are siblings and 3-5 are not. The first byte holds each VM's features (bit 2i:
// EVENT_IDX, bit 2i+1: SEQPACKET). The input is then a program of steps; a step's byte
// chooses the action (low 3 bits) and the VM it concerns ((byte >> 3) % 3):
//   0  a tx packet: header fields (source own, another VM's or any CID; destination the
//      host, one of the VMs, or any CID), payload, split into up to 4 descriptors; kick
//   1  rx buffers: up to 8 chains of fuzzed sizes and splits; kick. A VM that is never given
//      any leaves its senders' packets waiting (the relay's backpressure).
//   2  a host client connects to the VM's socket and writes fuzzed bytes ("CONNECT ...")
//   3  a host listener appears at <uds>_<port> for guest connects
//   4  a host socket writes fuzzed bytes, reads, half-closes or closes
//   5  the event loop runs what is ready
//   6  the front-end or the guest acts: pause/resume, tx ring stop/restart, guest driver
//      restart, front-end gone and back, VM removed, a ring broken by a bad avail index
//   7  the event loop runs a few handlers, one at a time (a relay half way through)
// Everything runs on the fuzzer's thread, so a run is deterministic.
//
// Nothing may crash, hang, leak or trip a sanitizer, and the guest driver checks what the
// device returns, as Linux would: every used element names a chain the driver offered; a tx
// chain comes back with length 0; an rx buffer comes back with length 0 or exactly 44 + the
// header's len, addressed to this guest, and anything but an RST comes from the host or from
// a VM sharing a group with it (a relay across groups, or to the wrong VM, is a bug). At the
// end every guest posts rx buffers until nothing moves, and then every tx chain must have
// come back (bar those of a broken tx ring): a chain still out is a lost packet or a sender
// left waiting for good.
//
// FUZZ_LOG=1 in the environment turns the daemon's log on (to see what a seed reaches).
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <spdlog/spdlog.h>

#include "fuzz_target.hpp"
#include "vhostuser/codec.hpp"
#include "vhostuser/server.hpp"
#include "vhostuser/session.hpp"
#include "virtio/ring.hpp"
#include "vsock/device.hpp"
#include "vsock/router.hpp"

namespace {

using namespace vhostuser;

constexpr std::uint64_t frontend_base = 0x7f0000000000ull;
constexpr std::uint16_t queue_size = 64;
constexpr std::size_t vm_count = 3;
constexpr std::array<std::uint64_t, vm_count> cids{3, 4, 5};
/// Small, so that the router's per-VM cap on sibling connections is reached too.
constexpr std::size_t max_sibling_connections = 8;

/// Whether the VMs with CIDs `a` and `b` share a group (3 {a}, 4 {a, b}, 5 {b}).
bool siblings(std::uint64_t a, std::uint64_t b) { return a != b && (a == 4 || b == 4); }

vsock::Router::Groups groups_of(std::uint64_t cid) {
  if (cid == 3) return {"a"};
  if (cid == 4) return {"a", "b"};
  return {"b"};
}

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

/// The device broke a rule the guest driver relies on: a finding, reported as a crash.
[[noreturn]] void device_bug(std::uint64_t cid, const char* ring, const std::string& what) {
  std::fprintf(stderr, "vsock_device fuzz: CID %llu %s ring: %s\n", static_cast<unsigned long long>(cid), ring,
               what.c_str());
  std::abort();
}

class NullWatcher final : public KickWatcher {
 public:
  void watch_kick(std::uint16_t, int) override {}
  void unwatch_kick(std::uint16_t) override {}
};

/// Guest RAM layout: both rings in the first 64 KiB, then 1 MiB of buffers per queue, a
/// fixed 16 KiB buffer per descriptor. A buffer belongs to its descriptor, so a chain the
/// device holds (a packet on its way to a sibling) is never written over by the guest.
constexpr std::uint64_t buffer_slot = 16 * 1024;
constexpr std::uint64_t buffer_area = 1 << 20;
constexpr std::uint64_t ram_size = 3 * buffer_area;

/// One split ring as the guest driver keeps it: descriptors allocated from a free list and
/// given back when the device returns their chain, as Linux's virtio_ring.c does.
class GuestRing {
 public:
  GuestRing(std::byte* ram, std::uint16_t q, std::uint64_t cid) : ram_(ram), q_(q), cid_(cid) { reset(); }

  std::uint64_t desc() const { return 0x1000 + q_ * 0x2000ull; }
  std::uint64_t avail() const { return desc() + 16 * queue_size; }
  std::uint64_t used() const { return desc() + 0x1000; }
  bool writable() const { return q_ == vsock::VsockDevice::rx_queue; }

  /// The driver (re)initialises the ring: nothing outstanding, indexes 0.
  void reset() {
    // Descriptor table, then avail and used rings: flags, idx, ring[Q], and the event index.
    std::memset(ram_ + desc(), 0, 16 * queue_size);
    std::memset(ram_ + avail(), 0, 6 + 2 * queue_size);
    std::memset(ram_ + used(), 0, 6 + 8 * queue_size);
    free_.clear();
    for (std::uint16_t i = queue_size; i > 0; --i) free_.push_back(static_cast<std::uint16_t>(i - 1));
    for (auto& c : chains_) c = {};
    avail_idx_ = 0;
    last_used_ = 0;
    outstanding_ = 0;
    broken_ = false;
  }

  /// Offers a chain of `sizes` buffers with `content` laid into them; false when the ring
  /// has not enough free descriptors (the guest waits, as Linux does).
  bool post(const std::vector<std::uint32_t>& sizes, const std::vector<std::byte>& content) {
    if (broken_ || sizes.empty() || sizes.size() > free_.size()) return false;
    std::vector<std::uint16_t> chain;
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      chain.push_back(free_.back());
      free_.pop_back();
    }
    std::size_t off = 0;
    for (std::size_t i = 0; i < chain.size(); ++i) {
      const std::uint64_t addr = buffer(chain[i]);
      const std::size_t n = std::min<std::size_t>(sizes[i], content.size() > off ? content.size() - off : 0);
      if (n) std::memcpy(ram_ + addr, content.data() + off, n);
      off += n;
      virtio::Descriptor d;
      d.addr = addr;
      d.len = sizes[i];
      d.flags = static_cast<std::uint16_t>((writable() ? virtio::VIRTQ_DESC_F_WRITE : 0) |
                                           (i + 1 < chain.size() ? virtio::VIRTQ_DESC_F_NEXT : 0));
      d.next = i + 1 < chain.size() ? chain[i + 1] : std::uint16_t{0};
      std::memcpy(ram_ + desc() + 16 * chain[i], &d, sizeof d);
    }
    const std::uint16_t head = chain.front();
    chains_[head] = {std::move(chain), sizes};
    ++outstanding_;
    const virtio::Le16 entry{head};
    std::memcpy(ram_ + avail() + 4 + 2 * (avail_idx_ % queue_size), &entry, 2);
    ++avail_idx_;
    const virtio::Le16 idx{avail_idx_};
    std::memcpy(ram_ + avail() + 2, &idx, 2);
    return true;
  }

  /// A hostile guest: avail->idx jumps far ahead of what it offered, which breaks the ring
  /// for the device. The driver's own bookkeeping means nothing any more until it resets.
  void corrupt() {
    const virtio::Le16 idx{static_cast<std::uint16_t>(avail_idx_ + 1000)};
    std::memcpy(ram_ + avail() + 2, &idx, 2);
    broken_ = true;
  }

  /// Chains offered and not returned yet.
  [[nodiscard]] std::size_t outstanding() const { return outstanding_; }
  /// The guest broke the ring itself (corrupt()).
  [[nodiscard]] bool broken() const { return broken_; }

  /// Takes back every chain the device returned, checking each used element as the driver
  /// would before trusting it. Returns how many came back.
  std::size_t reclaim() {
    if (broken_) return 0;
    virtio::Le16 used_idx;
    std::memcpy(&used_idx, ram_ + used() + 2, 2);
    const std::uint16_t end = used_idx.value();
    if (static_cast<std::uint16_t>(end - last_used_) > queue_size) {
      device_bug(cid_, name(), "used->idx " + std::to_string(end) + " is more than a ring ahead of " +
                                   std::to_string(last_used_));
    }
    const std::size_t returned = static_cast<std::uint16_t>(end - last_used_);
    for (; last_used_ != end; ++last_used_) {
      virtio::UsedElem e;
      std::memcpy(&e, ram_ + used() + 4 + 8 * (last_used_ % queue_size), sizeof e);
      const std::uint32_t id = e.id.value();
      const std::uint32_t len = e.len.value();
      if (id >= queue_size || chains_[id].descriptors.empty()) {
        device_bug(cid_, name(), "used id " + std::to_string(id) + " is no chain the driver offered");
      }
      check(chains_[id], len);
      for (auto d : chains_[id].descriptors) free_.push_back(d);
      chains_[id].descriptors.clear();
      --outstanding_;
    }
    return returned;
  }

 private:
  struct Chain {
    std::vector<std::uint16_t> descriptors;
    std::vector<std::uint32_t> sizes;
  };

  const char* name() const { return writable() ? "rx" : "tx"; }
  std::uint64_t buffer(std::uint16_t d) const { return buffer_area * (1 + q_) + buffer_slot * d; }

  void check(const Chain& chain, std::uint32_t len) const {
    if (!writable()) {
      if (len != 0) device_bug(cid_, name(), "tx chain returned with length " + std::to_string(len));
      return;
    }
    std::uint64_t room = 0;
    for (auto s : chain.sizes) room += s;
    if (len > room) device_bug(cid_, name(), std::to_string(len) + " bytes used of a " + std::to_string(room) + "-byte buffer");
    if (len == 0) return;  // a buffer returned unused
    if (len < sizeof(vsock::WireHeader)) device_bug(cid_, name(), "used length " + std::to_string(len) + " < header");
    // The header may be cut over several buffers.
    vsock::WireHeader wire;
    auto* out = reinterpret_cast<std::byte*>(&wire);
    std::size_t got = 0;
    for (std::size_t i = 0; i < chain.descriptors.size() && got < sizeof wire; ++i) {
      const std::size_t n = std::min<std::size_t>(chain.sizes[i], sizeof wire - got);
      std::memcpy(out + got, ram_ + buffer(chain.descriptors[i]), n);
      got += n;
    }
    const vsock::Header h = vsock::decode(wire);
    const std::string packet = vsock::describe(h);
    if (len != sizeof wire + h.len) device_bug(cid_, name(), "used length " + std::to_string(len) + " for " + packet);
    if (h.dst.cid != cid_) device_bug(cid_, name(), "another guest's packet: " + packet);
    // RSTs answer whatever the guest addressed; everything else comes from the host side or
    // is relayed from a sibling, which must share a group with this VM.
    if (!h.is(vsock::Op::rst) && h.src.cid != vsock::cid_host && !siblings(h.src.cid, cid_)) {
      device_bug(cid_, name(), "relayed across groups: " + packet);
    }
  }

  std::byte* ram_;
  std::uint16_t q_;
  std::uint64_t cid_;
  std::vector<std::uint16_t> free_;
  std::array<Chain, queue_size> chains_;
  std::uint16_t avail_idx_ = 0;
  std::uint16_t last_used_ = 0;
  std::size_t outstanding_ = 0;
  bool broken_ = false;
};

/// Guest RAM of one VM, made once per process and reused by every run: a fresh memfd per run
/// costs more than a short run (each page the rings and buffers touch is allocated and
/// zeroed again). Reuse keeps runs deterministic: every run resets the ring areas, and the
/// device reads no buffer byte the guest did not write in the same run (a tx chain holds
/// exactly the packet; rx buffers are only written).
struct GuestRam {
  UniqueFd fd;
  std::byte* map = nullptr;
};

GuestRam* guest_ram(std::size_t index) {
  static std::array<GuestRam, vm_count> pool = [] {
    std::array<GuestRam, vm_count> rams;
    for (auto& r : rams) {
      r.fd = UniqueFd{::memfd_create("fuzz-ram", MFD_CLOEXEC)};
      if (!r.fd || ::ftruncate(r.fd.get(), ram_size) != 0) continue;
      void* map = ::mmap(nullptr, ram_size, PROT_READ | PROT_WRITE, MAP_SHARED, r.fd.get(), 0);
      if (map != MAP_FAILED) r.map = static_cast<std::byte*>(map);
    }
    return rams;
  }();
  return pool[index].map != nullptr ? &pool[index] : nullptr;
}

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

/// Where the VMs' sockets go, for the whole process; removed at exit. On tmpfs when there is
/// one: every run binds six sockets, and creating socket inodes on a disk file system (ext4's
/// inode allocation) costs more than the rest of a short run.
class WorkDir {
 public:
  WorkDir() {
    std::error_code ec;
    const bool shm = std::filesystem::is_directory("/dev/shm", ec) && ::access("/dev/shm", W_OK) == 0;
    std::string tmpl = std::string(shm ? "/dev/shm" : "/tmp") + "/fuzz-vsock-XXXXXX";
    if (::mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~WorkDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

const std::filesystem::path& work_dir() {
  static const WorkDir dir;
  return dir.path();
}

/// One VM: its device on its own strand, the Session a front-end would drive, and the guest.
class Vm {
 public:
  Vm(boost::asio::io_context& io, vsock::Router& router, std::size_t index, std::uint8_t feature_bits)
      : cid_(cids[index]), strand_(boost::asio::make_strand(io)), ram_(guest_ram(index)) {
    config_.guest_cid = cid_;
    config_.uds_path = work_dir() / ("vm" + std::to_string(cid_) + ".vsock");
    config_.tx_buffer_size = 16 * 1024;
    config_.max_connections = 16;
    config_.groups = groups_of(cid_);
    features_ = bit(32) | bit(protocol_features_bit);
    if (feature_bits & 1) features_ |= bit(virtio::feature::event_idx);
    if (feature_bits & 2) features_ |= bit(vsock::feature::seqpacket);
    device_ = std::make_unique<vsock::VsockDevice>(strand_, config_, &router);
    session_ = std::make_unique<Session>("fuzz", *device_, watcher_);
  }
  ~Vm() {
    for (std::uint16_t p = 0; p < 4; ++p) {
      std::error_code ignored;
      if (ports_bound_ & (1u << p)) std::filesystem::remove(port_path(p), ignored);
    }
  }
  Vm(const Vm&) = delete;
  Vm& operator=(const Vm&) = delete;

  /// Binds the host side, joins the router and maps guest RAM; false if any of it failed.
  bool start() {
    if (!device_->listen()) return false;
    if (ram_ == nullptr) return false;
    rings_.emplace_back(ram_->map, vsock::VsockDevice::rx_queue, cid_);
    rings_.emplace_back(ram_->map, vsock::VsockDevice::tx_queue, cid_);
    frontend_start();
    return true;
  }

  [[nodiscard]] bool present() const { return !removed_; }
  [[nodiscard]] const std::filesystem::path& uds() const { return config_.uds_path; }
  [[nodiscard]] std::string port_path(std::uint32_t port) const {
    return config_.uds_path.native() + "_" + std::to_string(port);
  }
  /// A host application listens for guest connects to port `port` (< 4).
  vhostuser::Result<UniqueFd> listen_port(std::uint32_t port) {
    ports_bound_ |= 1u << port;
    return vhostuser::bind_unix_listener(port_path(port), SOCK_STREAM);
  }
  GuestRing& rx() { return rings_[0]; }
  GuestRing& tx() { return rings_[1]; }
  void kick(std::uint16_t q) { session_->kick(q); }

  /// The guest takes back what the device returned on both rings; returns how much.
  std::size_t reclaim() {
    if (removed_) return 0;
    std::size_t returned = 0;
    for (auto& r : rings_) returned += r.reclaim();
    return returned;
  }

  /// The guest posts 4 KiB rx buffers into every free descriptor, and kicks.
  void fill_rx() {
    if (removed_) return;
    while (rx().post({4096}, {})) {
    }
    kick(vsock::VsockDevice::rx_queue);
  }

  /// Whether the tx ring may keep chains for good: the guest broke it, or the device found
  /// it broken (a chain it refused), or the VM is gone.
  [[nodiscard]] bool tx_may_hold() const {
    return removed_ || rings_[1].broken() || session_->vring(vsock::VsockDevice::tx_queue).broken();
  }

  /// QEMU 7.2's start: features, memory table, both rings from index 0.
  void frontend_start() {
    (void)session_->handle(message(Request::set_protocol_features, session_->offered_protocol_features()));
    (void)session_->handle(message(Request::set_features, features_));
    std::vector<UniqueFd> fds;
    fds.emplace_back(::fcntl(ram_->fd.get(), F_DUPFD_CLOEXEC, 0));
    MemTable table{{MemRegion{0, ram_size, frontend_base, 0}}};
    RawMessage mem;
    mem.body = encode_payload(table);
    mem.header = {static_cast<std::uint32_t>(Request::set_mem_table), header_flags::version,
                  static_cast<std::uint32_t>(mem.body.size())};
    mem.fds = std::move(fds);
    (void)session_->handle(std::move(mem));
    for (std::uint16_t q = 0; q < 2; ++q) start_ring(q, 0);
  }

  /// The front-end stops ring `q` (GET_VRING_BASE) and returns the base it got.
  std::uint16_t stop_ring(std::uint16_t q) {
    (void)session_->handle(message(Request::set_vring_enable, VringState{q, 0}));
    auto reply = session_->handle(message(Request::get_vring_base, VringState{q, 0}));
    // The reply is the 12-byte header, then struct vhost_vring_state { u32 index; u32 num; }.
    if (!reply || reply->size() < 20) return 0;
    std::uint32_t num;
    std::memcpy(&num, reply->data() + 16, sizeof num);
    return static_cast<std::uint16_t>(num);
  }

  void start_ring(std::uint16_t q, std::uint16_t base) {
    const GuestRing& r = rings_[q];
    (void)session_->handle(message(Request::set_vring_num, VringState{q, queue_size}));
    (void)session_->handle(message(Request::set_vring_base, VringState{q, base}));
    (void)session_->handle(message(
        Request::set_vring_addr,
        VringAddr{q, 0, frontend_base + r.desc(), frontend_base + r.used(), frontend_base + r.avail(), 0}));
    std::vector<UniqueFd> kick;
    kick.emplace_back(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    (void)session_->handle(message(Request::set_vring_kick, std::uint64_t{q}, std::move(kick)));
    (void)session_->handle(message(Request::set_vring_enable, VringState{q, 1}));
  }

  /// Front-end and guest events (step 6).
  void lifecycle(Input& in) {
    switch (in.u8() % 6) {
      case 0:  // VM pause and resume (stop/cont): both rings restart from their saved bases
        for (std::uint16_t q = 0; q < 2; ++q) bases_[q] = stop_ring(q);
        for (std::uint16_t q = 0; q < 2; ++q) start_ring(q, bases_[q]);
        break;
      case 1:  // the tx ring alone stops and restarts (a packet on its way is set aside)
        start_ring(1, stop_ring(1));
        break;
      case 2:  // the guest driver restarts (reboot, module reload): rings anew from index 0
        for (std::uint16_t q = 0; q < 2; ++q) (void)stop_ring(q);
        for (auto& r : rings_) r.reset();
        for (std::uint16_t q = 0; q < 2; ++q) start_ring(q, 0);
        break;
      case 3:  // QEMU goes away and a new one connects
        session_->reset();
        for (auto& r : rings_) r.reset();
        frontend_start();
        break;
      case 4:  // the VM is removed from the daemon, as Server::close and VsockDevice::close do
        remove();
        break;
      default: {  // the guest breaks one of its rings
        const std::uint16_t q = in.u8() & 1;
        rings_[q].corrupt();
        kick(q);
        break;
      }
    }
  }

  void remove() {
    if (removed_) return;
    session_->reset();
    device_->close();
    removed_ = true;
  }

  std::uint64_t cid_;

 private:
  boost::asio::strand<boost::asio::io_context::executor_type> strand_;
  GuestRam* ram_;
  vsock::DeviceConfig config_;
  std::uint64_t features_ = 0;
  std::unique_ptr<vsock::VsockDevice> device_;
  NullWatcher watcher_;
  std::unique_ptr<Session> session_;  // after the device, which it refers to
  std::vector<GuestRing> rings_;
  std::array<std::uint16_t, 2> bases_{};
  unsigned ports_bound_ = 0;
  bool removed_ = false;
};

/// A tx packet of `vm` (step 0).
void send_packet(Vm& vm, Input& in) {
  vsock::Header h;
  const std::uint8_t which = in.u8();
  if (which & 1) {
    h.src.cid = vm.cid_;
  } else {
    h.src.cid = which & 32 ? cids[in.u8() % vm_count] : in.u32();  // a sibling's CID, or any
  }
  h.src.port = in.u16();
  if (which & 2) {
    h.dst.cid = vsock::cid_host;
  } else {
    const std::uint8_t to = in.u8() % 4;
    h.dst.cid = to < vm_count ? cids[to] : in.u32();  // a VM (itself too), or any CID
  }
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
  if (vm.tx().post(sizes, content)) vm.kick(vsock::VsockDevice::tx_queue);
}

/// rx buffers for `vm` (step 1).
void post_rx(Vm& vm, Input& in) {
  for (int chains = in.u8() % 8 + 1; chains > 0; --chains) {
    std::vector<std::uint32_t> sizes{static_cast<std::uint32_t>(in.u16() % 8192)};
    if (in.u8() & 1) sizes.push_back(in.u16() % 4096);
    (void)vm.rx().post(sizes, {});
  }
  vm.kick(vsock::VsockDevice::rx_queue);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bool quiet = (spdlog::set_level(std::getenv("FUZZ_LOG") ? spdlog::level::debug : spdlog::level::off), true);
  (void)quiet;
  if (work_dir().empty()) {
    std::fprintf(stderr, "vsock_device fuzz: cannot create a directory for the VMs' sockets\n");
    std::abort();
  }
  Input in(data, size);
  // Declared first, destroyed last: the devices' posted work dies with it, after they left.
  boost::asio::io_context io;
  vsock::Router router(max_sibling_connections);
  const std::uint8_t feature_bits = in.u8();
  std::vector<std::unique_ptr<Vm>> vms;
  for (std::size_t i = 0; i < vm_count; ++i) {
    vms.push_back(std::make_unique<Vm>(io, router, i, static_cast<std::uint8_t>(feature_bits >> (2 * i))));
    if (!vms.back()->start()) return 0;
  }

  std::vector<UniqueFd> host_sockets;
  std::vector<UniqueFd> host_listeners;
  for (int steps = 0; steps < 128 && !in.empty(); ++steps) {
    const std::uint8_t step = in.u8();
    Vm& vm = *vms[(step >> 3) % vm_count];
    switch (step & 7) {
      case 0:
        if (vm.present()) send_packet(vm, in);
        break;
      case 1:
        if (vm.present()) post_rx(vm, in);
        break;
      case 2: {  // a host client
        if (host_sockets.size() >= 12) break;
        UniqueFd fd = unix_socket_to(vm.uds().native());
        if (!fd) break;
        auto line = in.bytes(in.u8() % 40);
        (void)::send(fd.get(), line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
        host_sockets.push_back(std::move(fd));
        break;
      }
      case 3: {  // a host listener for guest connects
        if (host_listeners.size() >= 6) break;
        auto fd = vm.listen_port(in.u8() % 4);
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
      case 5: (void)io.poll(); break;
      case 6:
        if (vm.present()) vm.lifecycle(in);
        break;
      default:
        for (int n = in.u8() % 4 + 1; n > 0; --n) (void)io.poll_one();
        break;
    }
    // Accept guest connections that reached a listener, so they get a host peer.
    for (auto& l : host_listeners) {
      if (host_sockets.size() >= 24) break;
      UniqueFd c{::accept4(l.get(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC)};
      if (c) host_sockets.push_back(std::move(c));
    }
    for (auto& v : vms) v->reclaim();
  }
  // Every guest now posts rx buffers for whatever is waiting, until nothing moves any more.
  // Then no tx chain may be left: a packet to the host side goes back at once, one to a
  // sibling once the sibling has taken it (every sibling now has rx buffers) or is gone, and
  // replies waiting for rx buffers have them now. A chain still out is a packet the device
  // lost or a sender it left waiting for good.
  for (int round = 0; round < 64; ++round) {
    for (auto& v : vms) v->fill_rx();
    (void)io.poll();
    std::size_t moved = 0;
    for (auto& v : vms) moved += v->reclaim();
    if (moved == 0) break;
  }
  for (auto& v : vms) {
    if (!v->tx_may_hold() && v->tx().outstanding() != 0) {
      device_bug(v->cid_, "tx", std::to_string(v->tx().outstanding()) + " chain(s) never came back");
    }
  }
  for (auto& v : vms) v->remove();
  (void)io.poll();
  return 0;
}
