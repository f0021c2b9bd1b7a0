#pragma once
// virtio-rng (virtio spec 5.4, "Entropy Device") on the generic vhost-user device interface.
//
// The worked example of a device: one request queue, no config space, no feature bits. The
// driver posts device-writable buffers; the device fills each one from the kernel's CSPRNG
// (getrandom(2)) and returns it. Everything else — negotiation, rings, memory, notifications
// — is the vhostuser layer's job.
#include <cstdint>

#include "vhostuser/device.hpp"

namespace rng {

class RngDevice final : public vhostuser::Device {
 public:
  /// Bytes given for one buffer at most, so a guest posting huge buffers cannot keep the
  /// event loop busy for long (spec 5.4.6.1: the device MAY fill fewer bytes than offered).
  static constexpr std::uint32_t max_bytes_per_buffer = 64 * 1024;

  [[nodiscard]] std::uint64_t device_features() const override { return 0; }
  [[nodiscard]] std::uint16_t queue_count() const override { return 1; }  // requestq
  [[nodiscard]] std::uint16_t max_queue_size() const override { return 1024; }

  void on_queue_started(vhostuser::Vring& vring) override { (void)vring; }
  void on_queue_kicked(vhostuser::Vring& vring) override;
  void on_queue_stopped(vhostuser::Vring& vring) override { (void)vring; }

  /// Entropy bytes handed to the driver so far.
  [[nodiscard]] std::uint64_t bytes_served() const { return bytes_served_; }

 private:
  /// Fills every available buffer; false if the ring broke.
  bool serve_available(vhostuser::Vring& vring);

  std::uint64_t bytes_served_ = 0;
};

}  // namespace rng
