#include "vusim/vhost_dev.hpp"

#include "virtio/ring.hpp"

namespace vusim {
namespace {

using vhostuser::bit;

/// The transport features a Linux guest keeps (drivers/virtio/virtio_ring.c,
/// vring_transport_features): of the ring features a vhost-user backend offers, these.
constexpr std::uint64_t linux_ring_features =
    bit(virtio::feature::version_1) | bit(virtio::feature::indirect_desc) | bit(virtio::feature::event_idx);

constexpr unsigned vsock_f_seqpacket = 1;  // VIRTIO_VSOCK_F_SEQPACKET (virtio 5.10.3)

}  // namespace

DeviceModel DeviceModel::rng() {
  return {.name = "rng", .queues = 1, .queue_size = 4, .driver_features = linux_ring_features};
}

DeviceModel DeviceModel::vsock() {
  return {.name = "vsock",
          .queues = 2,
          .queue_size = 128,
          .driver_features = linux_ring_features | bit(vsock_f_seqpacket),
          .config_size = 8};
}

void VhostDev::forget_backend() {
  backend_features = 0;
  protocol_features = 0;
  max_mem_slots = 0;
  config.clear();
  masked_notifiers.clear();
  error_notifiers.clear();
  shadow_regions.clear();
  started = false;
  for (std::size_t i = 0; i < drivers.size(); ++i) last_avail[i] = drivers[i].device_used_idx();
}

}  // namespace vusim
