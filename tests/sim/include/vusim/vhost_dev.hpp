#pragma once
// What QEMU keeps per vhost-user device (struct vhost_dev and struct vhost_user in
// hw/virtio/vhost.c, vhost-user.c) and the guest's rings, for the sequences to work on.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "vhostuser/unique_fd.hpp"
#include "vhostuser/wire.hpp"
#include "vusim/driver.hpp"
#include "vusim/guest_ram.hpp"

namespace vusim {

/// What QEMU's device model (hw/virtio/vhost-user-<device>.c) and the guest driver decide.
struct DeviceModel {
  std::string name{};
  std::uint16_t queues = 1;      ///< vrings handed to the backend (vhost_dev.nvqs)
  std::uint16_t queue_size = 4;  ///< virtio_add_queue() size of each
  /// Features the guest driver acknowledges when the backend offers them. QEMU masks the
  /// driver's choice with the backend's GET_FEATURES for ring features; the simulator
  /// masks all of them, so it never sends a bit the backend did not offer.
  std::uint64_t driver_features = 0;
  /// Bytes of config space QEMU reads at realize (GET_CONFIG); 0 for a device without a
  /// config notifier, for which QEMU does not acknowledge VHOST_USER_PROTOCOL_F_CONFIG.
  std::uint32_t config_size = 0;
  /// Whether vhost_user_dev_start() reaches the backend: QEMU only sends the DRIVER_OK
  /// status at start and status 0 at stop for the "last queue pair" (vq_index + nvqs ==
  /// vq_index_end), which vhost-user-vsock and -rng never set up (see the 7.2 trace).
  bool driver_ok_status = false;

  /// vhost-user-rng-pci: one request queue of 4 entries, no config; a Linux guest acks
  /// VERSION_1, INDIRECT_DESC and EVENT_IDX (vring_transport_features()).
  static DeviceModel rng();
  /// vhost-user-vsock-pci: rx and tx of 128 entries (QEMU keeps the event queue), an 8-byte
  /// config (guest_cid); the guest also acks VIRTIO_VSOCK_F_SEQPACKET.
  static DeviceModel vsock();
};

struct VhostDev {
  VhostDev(DeviceModel device, GuestRam guest_ram) : model(std::move(device)), ram(std::move(guest_ram)) {}

  DeviceModel model;
  GuestRam ram;

  // Negotiated with the backend (realize).
  std::uint64_t backend_features = 0;   ///< GET_FEATURES
  std::uint64_t protocol_features = 0;  ///< acknowledged with SET_PROTOCOL_FEATURES
  std::uint64_t max_mem_slots = 0;      ///< GET_MAX_MEM_SLOTS, capped at 512 as QEMU does
  std::vector<std::byte> config;        ///< GET_CONFIG

  // The guest.
  std::uint64_t guest_features = 0;       ///< driver_features ∩ backend_features
  std::vector<Driver> drivers;            ///< one per queue, from the first start on
  std::vector<std::uint16_t> last_avail;  ///< vq->last_avail_idx: SET_VRING_BASE at next start

  // QEMU's own eventfds per queue: the call notifier used while the guest's is masked
  // (vhost_virtqueue_init's masked_notifier) and the error notifier (SET_VRING_ERR).
  std::vector<vhostuser::UniqueFd> masked_notifiers;
  std::vector<vhostuser::UniqueFd> error_notifiers;
  /// CONFIGURE_MEM_SLOTS: the regions the backend holds (vhost_user's shadow_regions).
  std::vector<vhostuser::MemRegion> shadow_regions;
  bool started = false;

  [[nodiscard]] bool negotiated(vhostuser::ProtocolFeature f) const {
    return (protocol_features & vhostuser::bit(f)) != 0;
  }
  /// A new connection: forget everything the old backend was told. The guest's rings stay;
  /// each resumes at the used->idx in guest memory, QEMU's fallback when GET_VRING_BASE
  /// could not be asked (virtio_queue_restore_last_avail_idx).
  void forget_backend();
};

}  // namespace vusim
