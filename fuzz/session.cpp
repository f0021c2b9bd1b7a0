// Fuzz target: message sequences into a vhost-user Session, with fds simulated.
//
// The input is a little program. Each step is one of:
//   - a front-end message: request id, flags, payload bytes, and fds to attach (memfds
//     standing in for guest RAM, eventfds for kick/call/err);
//   - a write of fuzzed bytes into the guest RAM memfd (rings, descriptors, buffers);
//   - a kick on a vring, or a disconnect (session reset).
// A device that pops every chain and reads/writes its buffers runs on the rings, so the
// split-queue code sees whatever the fuzzer put in guest memory. Nothing may crash, leak or
// trip a sanitizer; the session may refuse anything.
#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include <spdlog/spdlog.h>

#include "fuzz_target.hpp"
#include "vhostuser/session.hpp"
#include "virtio/chain_io.hpp"

namespace {

using namespace vhostuser;

class Input {
 public:
  explicit Input(std::span<const std::uint8_t> data) : data_(data) {}
  bool empty() const { return data_.empty(); }
  std::uint8_t byte() { return take(1).empty() ? 0 : data_consumed_last_[0]; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(byte() | (byte() << 8)); }
  std::span<const std::uint8_t> take(std::size_t n) {
    n = std::min(n, data_.size());
    data_consumed_last_ = data_.first(n);
    data_ = data_.subspan(n);
    return data_consumed_last_;
  }

 private:
  std::span<const std::uint8_t> data_;
  std::span<const std::uint8_t> data_consumed_last_;
};

/// Pops every chain, reads what is readable, fills what is writable, pushes, notifies.
class EchoDevice final : public Device {
 public:
  std::uint64_t device_features() const override { return 1; }
  std::uint16_t queue_count() const override { return 3; }
  std::uint16_t max_queue_size() const override { return 1024; }
  std::vector<std::byte> config_space() const override { return std::vector<std::byte>(8, std::byte{3}); }
  void on_queue_started(Vring&) override {}
  void on_queue_stopped(Vring&) override {}
  void on_queue_kicked(Vring& vring) override {
    // Bounded: a ring of at most 1024 entries, each chain popped once per kick.
    for (int i = 0; i < 1024 && !vring.broken(); ++i) {
      auto chain = vring.queue().pop();
      if (!chain) {
        vring.fail(chain.error().message());
        return;
      }
      if (!*chain) break;
      std::byte scratch[4096];
      virtio::ChainReader reader(**chain);
      while (reader.remaining() > 0) {
        const std::size_t n = std::min(reader.remaining(), sizeof scratch);
        if (!reader.read(std::span(scratch, n))) break;
      }
      virtio::ChainWriter writer(**chain);
      std::memset(scratch, 0xab, sizeof scratch);
      while (writer.remaining() > 0) {
        const std::size_t n = std::min(writer.remaining(), sizeof scratch);
        if (!writer.write(std::span(scratch, n))) break;
      }
      if (!vring.queue().push((*chain)->head(), static_cast<std::uint32_t>(writer.bytes_written()))) {
        vring.fail("push");
        return;
      }
    }
    vring.notify();
  }
};

class NullWatcher final : public KickWatcher {
 public:
  void watch_kick(std::uint16_t, int) override {}
  void unwatch_kick(std::uint16_t) override {}
};

constexpr std::size_t ram_size = 64 * 1024;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const bool quiet = (spdlog::set_level(spdlog::level::off), true);
  (void)quiet;
  Input in({data, size});
  EchoDevice device;
  NullWatcher watcher;
  Session session("fuzz", device, watcher);

  // One memfd of guest RAM shared by every region the fuzzer describes.
  UniqueFd ram{::memfd_create("fuzz-ram", MFD_CLOEXEC)};
  if (!ram || ::ftruncate(ram.get(), ram_size) != 0) return 0;

  for (int steps = 0; steps < 256 && !in.empty(); ++steps) {
    switch (in.byte() % 4) {
      case 0: {  // a message
        RawMessage msg;
        msg.header.request = in.byte() % 46;  // ids 0..45: unknown ones included
        msg.header.flags = in.byte() % 16;
        const std::size_t len = in.u16() % 600;
        const auto body = in.take(len);
        msg.body.assign(reinterpret_cast<const std::byte*>(body.data()),
                        reinterpret_cast<const std::byte*>(body.data()) + body.size());
        msg.header.size = static_cast<std::uint32_t>(msg.body.size());
        for (unsigned fds = in.byte() % 4, i = 0; i < fds; ++i) {
          msg.fds.emplace_back(in.byte() % 2 == 0 ? ::fcntl(ram.get(), F_DUPFD_CLOEXEC, 0)
                                                   : ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        }
        (void)session.handle(std::move(msg));
        break;
      }
      case 1: {  // guest writes into its RAM
        const std::size_t offset = in.u16() % ram_size;
        const auto bytes = in.take(in.byte());
        (void)::pwrite(ram.get(), bytes.data(), std::min(bytes.size(), ram_size - offset),
                       static_cast<off_t>(offset));
        break;
      }
      case 2: session.kick(in.byte() % 4); break;
      case 3: session.reset(); break;
    }
  }
  return 0;
}
