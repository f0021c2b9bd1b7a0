#pragma once
// A simulated VM (guest RAM + QEMU's vhost state) wired to an in-process backend, and the
// devices the tests serve besides rng::RngDevice.
#include <chrono>
#include <string>
#include <vector>

#include <boost/endian/conversion.hpp>

#include "backend_fixture.hpp"
#include "rng_device.hpp"
#include "vhostuser/codec.hpp"
#include "vusim/sequences.hpp"

namespace vusim::test {

/// Shaped like vhost-user-vsock for the control path: two queues, an 8-byte config space
/// holding guest_cid 3, one device feature (bit 1, VIRTIO_VSOCK_F_SEQPACKET), and the
/// default SET_CONFIG refusal. Every chain is completed at once with nothing written, as a
/// tx queue would.
class TwoQueueDevice final : public vhostuser::Device {
 public:
  [[nodiscard]] std::uint64_t device_features() const override { return vhostuser::bit(1); }
  [[nodiscard]] std::uint16_t queue_count() const override { return 2; }
  [[nodiscard]] std::uint16_t max_queue_size() const override { return 256; }
  [[nodiscard]] std::vector<std::byte> config_space() const override {
    const std::uint64_t cid = boost::endian::native_to_little(std::uint64_t{3});
    const auto bytes = vhostuser::bytes_of(cid);
    return {bytes.begin(), bytes.end()};
  }
  void on_queue_started(vhostuser::Vring& vring) override { (void)vring; }
  void on_queue_kicked(vhostuser::Vring& vring) override {
    for (;;) {
      auto chain = vring.queue().pop();
      if (!chain || !*chain) break;
      (void)vring.queue().push((*chain)->head(), 0);
    }
    vring.notify();
  }
  void on_queue_stopped(vhostuser::Vring& vring) override { (void)vring; }
};

/// Holds every chain it pops until release() (a vsock rx queue keeping buffers for data
/// that has not arrived yet). Forgets them when its ring stops, as the Device contract
/// asks: the layer rewinds them, so GET_VRING_BASE must not count them as consumed.
class HoldingDevice final : public vhostuser::Device {
 public:
  [[nodiscard]] std::uint64_t device_features() const override { return 0; }
  [[nodiscard]] std::uint16_t queue_count() const override { return 1; }
  [[nodiscard]] std::uint16_t max_queue_size() const override { return 256; }
  void on_queue_started(vhostuser::Vring& vring) override { ring_ = &vring; }
  void on_queue_kicked(vhostuser::Vring& vring) override {
    for (;;) {
      auto chain = vring.queue().pop();
      if (!chain || !*chain) break;
      held_.push_back((*chain)->head());
    }
  }
  void on_queue_stopped(vhostuser::Vring& vring) override {
    (void)vring;
    ring_ = nullptr;
    held_.clear();
  }

  [[nodiscard]] const std::vector<std::uint16_t>& held() const { return held_; }
  /// Completes every held chain with nothing written.
  void release() {
    for (auto head : held_) (void)ring_->queue().push(head, 0);
    held_.clear();
    ring_->notify();
  }

 private:
  vhostuser::Vring* ring_ = nullptr;
  std::vector<std::uint16_t> held_;
};

/// One simulated VM against one in-process backend serving a DeviceT. Guest RAM: `regions`
/// adjacent regions of 4 MiB. Prints the vhost-user conversation if the test failed.
template <class DeviceT>
struct Vm {
  static constexpr std::uint64_t region_size = 4 << 20;

  explicit Vm(DeviceModel model, unsigned regions = 2, Backing backing = Backing::one_memfd)
      : ram(*GuestRam::contiguous(region_size, regions, backing)), dev(std::move(model), ram) {}
  ~Vm() { dump_on_failure(log); }

  Result<Frontend> connect() { return Frontend::connect(backend.socket(), traced_options(log)); }
  std::uint64_t bytes_served() {
    return backend.on_backend([this] { return device.bytes_served(); });
  }

  std::vector<std::string> log;
  DeviceT device;
  Backend backend{device};
  GuestRam ram;
  VhostDev dev;
};

}  // namespace vusim::test
