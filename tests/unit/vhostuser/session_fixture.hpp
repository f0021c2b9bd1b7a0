#pragma once
// A Session driven directly, without sockets: messages are built in memory, guest RAM is a
// memfd mapped here, and a fake device records what the layer tells it.
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <fcntl.h>

#include <functional>
#include <map>
#include <stdexcept>
#include <memory>
#include <string>
#include <vector>

#include "vhostuser/codec.hpp"
#include "vhostuser/session.hpp"
#include "virtio/ring.hpp"

namespace vhostuser::testing {

/// Records every device callback; optionally pops chains on a kick without completing them.
class RecordingDevice final : public Device {
 public:
  std::uint64_t device_features() const override { return bit(0); }
  std::uint16_t queue_count() const override { return 2; }
  std::uint16_t max_queue_size() const override { return 256; }
  std::vector<std::byte> config_space() const override {
    return {std::byte{3}, {}, {}, {}, {}, {}, {}, {}};  // le64 3, like virtio-vsock's guest_cid
  }
  void on_features(std::uint64_t f) override { events.push_back("features " + std::to_string(f)); }
  void on_memory_changed(const std::shared_ptr<const virtio::GuestMemory>&) override { events.push_back("memory"); }
  void on_queue_started(Vring& v) override { events.push_back("started " + std::to_string(v.index())); }
  void on_queue_kicked(Vring& v) override {
    events.push_back("kicked " + std::to_string(v.index()));
    if (on_kick) on_kick(v);
  }
  void on_queue_stopped(Vring& v) override { events.push_back("stopped " + std::to_string(v.index())); }
  void on_reset() override { events.push_back("reset"); }

  std::vector<std::string> events;
  std::function<void(Vring&)> on_kick;
};

class RecordingWatcher final : public KickWatcher {
 public:
  void watch_kick(std::uint16_t index, int fd) override { watched[index] = fd; }
  void unwatch_kick(std::uint16_t index) override { watched.erase(index); }
  std::map<std::uint16_t, int> watched;
};

/// 1 MiB of guest RAM at GPA 0, which the "front-end" sees at frontend_base.
class GuestRam {
 public:
  static constexpr std::uint64_t size = 1 << 20;
  static constexpr std::uint64_t frontend_base = 0x7f0000000000ull;

  GuestRam() : fd_(::memfd_create("guest", MFD_CLOEXEC)) {
    if (::ftruncate(fd_.get(), size) != 0) throw std::runtime_error("ftruncate");
    base_ = static_cast<std::byte*>(::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0));
  }
  ~GuestRam() { ::munmap(base_, size); }

  UniqueFd dup_fd() const { return UniqueFd{::fcntl(fd_.get(), F_DUPFD_CLOEXEC, 0)}; }
  std::byte* at(std::uint64_t gpa) { return base_ + gpa; }
  template <class T>
  void put(std::uint64_t gpa, const T& v) {
    std::memcpy(at(gpa), &v, sizeof v);
  }
  template <class T>
  T get(std::uint64_t gpa) {
    T v;
    std::memcpy(&v, at(gpa), sizeof v);
    return v;
  }

 private:
  UniqueFd fd_;
  std::byte* base_;
};

/// Ring layout per queue index: 16 KiB apart, descriptor table, avail and used rings.
struct RingLayout {
  std::uint64_t desc, avail, used;
  static RingLayout of(std::uint16_t q) {
    const std::uint64_t base = 0x10000 + q * 0x4000ull;
    return {base, base + 0x1000, base + 0x2000};
  }
};

class SessionFixture {
 public:
  RecordingDevice device;
  RecordingWatcher watcher;
  GuestRam ram;
  Session session{"test", device, watcher};

  template <class T>
  static RawMessage raw(Request r, const T& payload, std::vector<UniqueFd> fds = {}, std::uint32_t flags = 0) {
    auto b = bytes_of(payload);
    return raw_bytes(r, {b.begin(), b.end()}, std::move(fds), flags);
  }
  static RawMessage raw_bytes(Request r, std::vector<std::byte> body, std::vector<UniqueFd> fds = {},
                              std::uint32_t flags = 0) {
    RawMessage m;
    m.header = {static_cast<std::uint32_t>(r), header_flags::version | flags, static_cast<std::uint32_t>(body.size())};
    m.body = std::move(body);
    m.fds = std::move(fds);
    return m;
  }
  static RawMessage empty(Request r, std::uint32_t flags = 0) { return raw_bytes(r, {}, {}, flags); }

  /// Sends a request; returns the reply bytes or the error that would drop the connection.
  Result<std::vector<std::byte>> send(RawMessage m) { return session.handle(std::move(m)); }

  /// The u64 payload of a reply.
  static std::uint64_t u64_of(const std::vector<std::byte>& reply) {
    return load<std::uint64_t>(std::span(reply).subspan(sizeof(Header)));
  }

  static UniqueFd eventfd() { return UniqueFd{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)}; }

  void set_mem_table() {
    MemTable table{{MemRegion{0, GuestRam::size, GuestRam::frontend_base, 0}}};
    std::vector<UniqueFd> fds;
    fds.push_back(ram.dup_fd());
    ASSERT_OK(send(raw_bytes(Request::set_mem_table, encode_payload(table), std::move(fds))));
  }

  /// NUM, BASE, ADDR, KICK for queue q, as QEMU's vhost_virtqueue_start sends them.
  void configure_ring(std::uint16_t q, std::uint16_t size = 128, std::uint16_t base = 0) {
    const auto l = RingLayout::of(q);
    ASSERT_OK(send(raw(Request::set_vring_num, VringState{q, size})));
    ASSERT_OK(send(raw(Request::set_vring_base, VringState{q, base})));
    ASSERT_OK(send(raw(Request::set_vring_addr,
                       VringAddr{q, 0, GuestRam::frontend_base + l.desc, GuestRam::frontend_base + l.used,
                                 GuestRam::frontend_base + l.avail, 0})));
    std::vector<UniqueFd> kick;
    kick.push_back(eventfd());
    ASSERT_OK(send(raw(Request::set_vring_kick, std::uint64_t{q}, std::move(kick))));
  }

  /// Posts one device-writable buffer on queue q as the driver would, at avail slot `slot`.
  void post_buffer(std::uint16_t q, std::uint16_t head, std::uint16_t slot, std::uint16_t new_avail_idx) {
    const auto l = RingLayout::of(q);
    virtio::Descriptor d{};
    d.addr = virtio::Le64{0x80000 + head * 0x100ull};
    d.len = virtio::Le32{64};
    d.flags = virtio::Le16{virtio::VIRTQ_DESC_F_WRITE};
    ram.put(l.desc + head * sizeof d, d);
    ram.put(l.avail + virtio::avail_ring_entry_offset(slot), virtio::Le16{head});
    ram.put(l.avail + 2, virtio::Le16{new_avail_idx});
  }

  static void ASSERT_OK(const Result<std::vector<std::byte>>& r) {
    if (!r) throw std::runtime_error("request refused: " + r.error().message());
  }
};

}  // namespace vhostuser::testing
