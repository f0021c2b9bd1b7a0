#pragma once
// The generic device interface: what a vhost-user device implements to be served by Session.
//
// The layer answers every protocol message itself; a device only declares what it is and
// reacts to its queues. All calls for one session come from one thread (the session's
// strand), so a device needs no locking for its own state.
//
// What the layer adds on its own (a device must not declare these):
//  - ring features it implements: VERSION_1, VIRTIO_F_INDIRECT_DESC, VIRTIO_F_EVENT_IDX,
//    VIRTIO_F_NOTIFY_ON_EMPTY, and VHOST_USER_F_PROTOCOL_FEATURES (bit 30);
//  - protocol features: MQ, REPLY_ACK, CONFIGURE_MEM_SLOTS, STATUS, RESET_DEVICE, and CONFIG
//    when the device has a config space.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "vhostuser/errors.hpp"
#include "vhostuser/vring.hpp"
#include "virtio/guest_memory.hpp"

namespace vhostuser {

class Device {
 public:
  virtual ~Device() = default;

  /// Device-specific virtio feature bits (e.g. VIRTIO_VSOCK_F_SEQPACKET).
  [[nodiscard]] virtual std::uint64_t device_features() const = 0;
  /// Number of queues the device can use; vring indices at or above it are refused.
  [[nodiscard]] virtual std::uint16_t queue_count() const = 0;
  /// Largest queue size accepted in SET_VRING_NUM.
  [[nodiscard]] virtual std::uint16_t max_queue_size() const = 0;

  /// The whole device config space; empty when the device has none (then CONFIG is not
  /// offered, as QEMU's vhost-user-rng expects).
  [[nodiscard]] virtual std::vector<std::byte> config_space() const { return {}; }
  /// SET_CONFIG. The default refuses: config fields of most devices are read-only for the
  /// driver (virtio spec 2.5.1 per device type).
  virtual Result<void> write_config(std::uint32_t offset, std::span<const std::byte> data) {
    (void)offset;
    (void)data;
    return Errc::not_supported;
  }

  /// The features the driver acknowledged (SET_FEATURES), before any queue starts with them.
  virtual void on_features(std::uint64_t features) { (void)features; }
  /// The guest memory changed (SET_MEM_TABLE, ADD/REM_MEM_REG). Active queues have already
  /// been moved to the new snapshot.
  virtual void on_memory_changed(const std::shared_ptr<const virtio::GuestMemory>& memory) { (void)memory; }

  /// The ring is started and enabled: the device may use it until on_queue_stopped.
  virtual void on_queue_started(Vring& vring) = 0;
  /// The driver made buffers available (or buffers were pending when the ring started).
  virtual void on_queue_kicked(Vring& vring) = 0;
  /// The ring stops (disabled, GET_VRING_BASE, reset or disconnect). The device completes
  /// what it can and forgets every chain it still holds: the layer rewinds chains that were
  /// popped and not pushed, so the driver's next start offers them again.
  virtual void on_queue_stopped(Vring& vring) = 0;

  /// The front-end reset the device (RESET_DEVICE, RESET_OWNER) or went away: every queue
  /// has stopped; return to the state of a freshly constructed device.
  virtual void on_reset() {}
};

}  // namespace vhostuser
