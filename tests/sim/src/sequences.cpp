#include "vusim/sequences.hpp"

#include <sys/eventfd.h>

#include <algorithm>
#include <array>

#include <fmt/format.h>

#include "posix.hpp"
#include "virtio/ring.hpp"

namespace vusim {
namespace {

using vhostuser::bit;
using PF = vhostuser::ProtocolFeature;

enum class Version { pre72, v72, v82 };

/// VHOST_USER_PROTOCOL_FEATURE_MASK: the protocol features each QEMU knows (STATUS = 16 is
/// the last in 7.1 and 7.2; 8.2 adds XEN_MMAP, SHARED_OBJECT and DEVICE_STATE).
constexpr std::uint64_t known_protocol_features(Version v) {
  return v == Version::v82 ? bit(20) - 1 : bit(17) - 1;
}

/// Acknowledging these would oblige the simulator to serve the backend channel or a
/// different region layout (see sequences.hpp).
constexpr std::uint64_t unimplemented_protocol_features =
    bit(PF::backend_req) | bit(PF::backend_send_fd) | bit(PF::host_notifier) | bit(PF::inband_notifications) |
    bit(PF::xen_mmap) | bit(PF::shared_object);

// Virtio device status bits (virtio 2.1).
constexpr std::uint64_t status_acknowledge = 1;
constexpr std::uint64_t status_driver = 2;
constexpr std::uint64_t status_driver_ok = 4;
constexpr std::uint64_t status_features_ok = 8;

/// QEMU caps GET_MAX_MEM_SLOTS at VHOST_USER_MAX_RAM_SLOTS.
constexpr std::uint64_t qemu_max_ram_slots = 512;

Failure in_phase(Failure failure, std::string_view phase) {
  failure.message = fmt::format("{}: {}", phase, failure.message);
  return failure;
}

bool protocol_features_bit(std::uint64_t features) {
  return (features & bit(vhostuser::protocol_features_bit)) != 0;
}

Result<vhostuser::UniqueFd> make_eventfd() {
  vhostuser::UniqueFd fd{::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)};
  if (!fd) return io_failure("eventfd");
  return fd;
}

/// vhost_user_add_status(): GET_STATUS, then SET_STATUS with the bits added if missing.
Result<void> add_status(Frontend& fe, std::uint64_t bits) {
  auto status = fe.get_status();
  if (!status) return status.error();
  if ((*status & bits) == bits) return {};
  return fe.set_status(*status | bits);
}

bool same_region(const vhostuser::MemRegion& a, const vhostuser::MemRegion& b) {
  return a.guest_phys_addr == b.guest_phys_addr && a.memory_size == b.memory_size &&
         a.userspace_addr == b.userspace_addr && a.mmap_offset == b.mmap_offset;
}

/// vhost_user_set_mem_table(): the whole table, or with CONFIGURE_MEM_SLOTS only the
/// difference to what the backend already has (vhost_user_add_remove_regions), so a
/// restart with unchanged RAM sends no memory message at all.
Result<void> send_memory(Frontend& fe, VhostDev& dev) {
  std::vector<vhostuser::MemRegion> regions;
  std::vector<int> fds;
  for (const auto& r : dev.ram.regions()) {
    regions.push_back(r.wire());
    fds.push_back(r.fd);
  }
  if (!dev.negotiated(PF::configure_mem_slots)) {
    if (regions.size() > vhostuser::max_mem_table_regions) {
      return Failure{Fault::unsupported,
                     fmt::format("{} RAM regions need CONFIGURE_MEM_SLOTS", regions.size())};
    }
    return fe.set_mem_table(regions, fds, Wait::reply_ack);
  }
  if (regions.size() > dev.max_mem_slots) {
    return Failure{Fault::unsupported, fmt::format("{} RAM regions, backend has {} memory slots",
                                                   regions.size(), dev.max_mem_slots)};
  }
  for (const auto& old : dev.shadow_regions) {
    if (std::none_of(regions.begin(), regions.end(), [&](const auto& r) { return same_region(r, old); })) {
      if (auto ok = fe.rem_mem_reg(old, Wait::reply_ack); !ok) return ok;
    }
  }
  for (std::size_t i = 0; i < regions.size(); ++i) {
    const auto& shadow = dev.shadow_regions;
    if (std::any_of(shadow.begin(), shadow.end(),
                    [&](const auto& r) { return same_region(r, regions[i]); })) {
      continue;
    }
    if (auto ok = fe.add_mem_reg(regions[i], fds[i], Wait::reply_ack); !ok) return ok;
  }
  dev.shadow_regions = std::move(regions);
  return {};
}

/// The guest's rings, created at the first start with the features the driver acked.
Result<void> ensure_drivers(VhostDev& dev) {
  const bool event_idx = (dev.guest_features & bit(virtio::feature::event_idx)) != 0;
  const bool indirect = (dev.guest_features & bit(virtio::feature::indirect_desc)) != 0;
  if (!dev.drivers.empty()) {
    const auto& o = dev.drivers.front().options();
    if (o.event_idx != event_idx || o.indirect != indirect) {
      return Failure{Fault::unsupported,
                     "the backend now offers other ring features than the rings were built for"};
    }
    return {};
  }
  for (std::uint16_t i = 0; i < dev.model.queues; ++i) {
    auto driver = Driver::create(
        dev.ram, {.index = i, .size = dev.model.queue_size, .event_idx = event_idx, .indirect = indirect});
    if (!driver) return driver.error();
    dev.drivers.push_back(std::move(*driver));
  }
  dev.last_avail.assign(dev.model.queues, 0);
  return {};
}

Result<void> realize(Frontend& fe, VhostDev& dev, Version version) {
  const auto& model = dev.model;
  // vhost_user_backend_init.
  auto features = fe.get_features();
  if (!features) return features.error();
  dev.backend_features = *features;
  if (protocol_features_bit(*features)) {
    auto offered = fe.get_protocol_features();
    if (!offered) return offered.error();
    std::uint64_t acked = *offered & known_protocol_features(version) & ~unimplemented_protocol_features;
    if (model.config_size == 0) {
      acked &= ~bit(PF::config);  // "Don't acknowledge CONFIG feature if device doesn't support it"
    } else if ((acked & bit(PF::config)) == 0) {
      return Failure{Fault::unsupported,
                     "device expects VHOST_USER_PROTOCOL_F_CONFIG but backend does not support it"};
    }
    if (auto ok = fe.set_protocol_features(acked); !ok) return ok;
    dev.protocol_features = acked;
    if (dev.negotiated(PF::mq)) {
      auto queues = fe.get_queue_num();
      if (!queues) return queues.error();
      if (*queues < model.queues) {
        return Failure{Fault::unsupported,
                       fmt::format("backend supports {} queues, the device needs {}", *queues, model.queues)};
      }
    }
    if (dev.negotiated(PF::configure_mem_slots)) {
      auto slots = fe.get_max_mem_slots();
      if (!slots) return slots.error();
      dev.max_mem_slots = std::min(*slots, qemu_max_ram_slots);
    }
  } else if (model.config_size > 0) {
    return Failure{Fault::unsupported, "device needs a config space, backend offers no protocol features"};
  }
  if (auto ok = fe.set_owner(); !ok) return ok;
  // vhost_dev_init: the features are read again and kept.
  features = fe.get_features();
  if (!features) return features.error();
  dev.backend_features = *features;
  // vhost_virtqueue_init: the masked call notifier and the error notifier of each queue.
  for (std::uint16_t i = 0; i < model.queues; ++i) {
    auto masked = make_eventfd();
    auto error = make_eventfd();
    if (!masked) return masked.error();
    if (!error) return error.error();
    if (auto ok = fe.set_vring_call(i, masked->get()); !ok) return ok;
    if (auto ok = fe.set_vring_err(i, error->get()); !ok) return ok;
    dev.masked_notifiers.push_back(std::move(*masked));
    dev.error_notifiers.push_back(std::move(*error));
  }
  if (dev.negotiated(PF::config)) {
    auto config = fe.get_config(0, model.config_size);
    if (!config) return config.error();
    dev.config = std::move(*config);
  }
  return {};
}

/// The guest notifiers unbound at stop (virtio_pci_set_guest_notifiers(false) masks every
/// vector): each ring's call goes back to QEMU's masked notifier, last queue first.
Result<void> mask_calls(Frontend& fe, VhostDev& dev) {
  for (std::size_t i = dev.model.queues; i-- > 0;) {
    if (auto ok = fe.set_vring_call(static_cast<std::uint32_t>(i), dev.masked_notifiers.at(i).get()); !ok)
      return ok;
  }
  return {};
}

/// The guest notifiers bound at start (virtio_pci_set_guest_notifiers(true) unmasks every
/// vector the guest left unmasked, last queue first): each ring's call becomes the guest's
/// eventfd. A notification the backend sent to the masked notifier meanwhile is passed on,
/// as virtio_pci_one_vector_unmask does ("Test after unmasking to avoid losing events").
Result<void> unmask_calls(Frontend& fe, VhostDev& dev) {
  for (std::size_t i = dev.model.queues; i-- > 0;) {
    const auto index = static_cast<std::uint32_t>(i);
    if (auto ok = fe.set_vring_call(index, dev.drivers[i].call_fd()); !ok) return ok;
    eventfd_t pending = 0;
    if (::eventfd_read(dev.masked_notifiers.at(i).get(), &pending) == 0 &&
        ::eventfd_write(dev.drivers[i].call_fd(), 1) != 0) {
      return io_failure("eventfd_write(guest notifier)");
    }
  }
  return {};
}

Result<void> start(Frontend& fe, VhostDev& dev, Version version, const StartHooks& hooks) {
  const auto& model = dev.model;
  if (dev.masked_notifiers.size() != model.queues) return Failure{Fault::usage, "start before realize"};
  // The guest acked its features before DRIVER_OK; its rings and notifiers exist by now.
  dev.guest_features = model.driver_features & dev.backend_features & ~bit(vhostuser::protocol_features_bit);
  if (auto ok = ensure_drivers(dev); !ok) return ok;
  if (auto ok = unmask_calls(fe, dev); !ok) return ok;

  // vhost_dev_set_features: what the guest acked, plus bit 30 from 7.2 on
  // (02b61f38d3 "hw/virtio: incorporate backend features in features").
  const bool bit30 = version != Version::pre72 && protocol_features_bit(dev.backend_features);
  if (auto ok = fe.set_features(dev.guest_features | (bit30 ? bit(vhostuser::protocol_features_bit) : 0));
      !ok) {
    return ok;
  }
  if (dev.negotiated(PF::status)) {
    if (auto ok = add_status(fe, status_features_ok); !ok) return ok;
  }
  if (auto ok = send_memory(fe, dev); !ok) return ok;

  for (std::uint16_t i = 0; i < model.queues; ++i) {
    const Driver& d = dev.drivers[i];
    if (auto ok = fe.set_vring_num(i, model.queue_size); !ok) return ok;
    if (auto ok = fe.set_vring_base(i, dev.last_avail[i]); !ok) return ok;
    if (auto ok = fe.set_vring_addr(d.vring_addr()); !ok) return ok;
    if (auto ok = fe.set_vring_kick(i, d.kick_fd()); !ok) return ok;
  }
  if (hooks.before_enable) {
    if (auto ok = hooks.before_enable(dev); !ok) return in_phase(ok.error(), "guest before SET_VRING_ENABLE");
  }
  // 4daa5054c5 "vhost: enable vrings in vhost_dev_start() for vhost-user devices" (7.2).
  if (bit30) {
    const Wait wait = version == Version::v82 ? Wait::enforce : Wait::none;
    for (std::uint16_t i = 0; i < model.queues; ++i) {
      if (auto ok = fe.set_vring_enable(i, true, wait); !ok) return ok;
    }
  }
  if (model.driver_ok_status && dev.negotiated(PF::status)) {
    if (auto ok = add_status(fe, status_acknowledge | status_driver | status_driver_ok); !ok) return ok;
  }
  // The device's start then unmasks every queue again, in order ("guest_notifier_mask/
  // pending not used yet, so just unmask everything here", vhost-vsock-common.c).
  for (std::uint16_t i = 0; i < model.queues; ++i) {
    if (auto ok = fe.set_vring_call(i, dev.drivers[i].call_fd()); !ok) return ok;
  }
  dev.started = true;
  return {};
}

Result<std::vector<std::uint16_t>> stop(Frontend& fe, VhostDev& dev, Version version) {
  const auto& model = dev.model;
  if (!dev.started) return Failure{Fault::usage, "stop without start"};
  if (model.driver_ok_status && dev.negotiated(PF::status)) {
    if (auto ok = fe.set_status(0); !ok) return ok.error();
  }
  if (version != Version::pre72 && protocol_features_bit(dev.backend_features)) {
    const Wait wait = version == Version::v82 ? Wait::enforce : Wait::none;
    for (std::uint16_t i = 0; i < model.queues; ++i) {
      if (auto ok = fe.set_vring_enable(i, false, wait); !ok) return ok.error();
    }
  }
  for (std::uint16_t i = 0; i < model.queues; ++i) {
    auto state = fe.get_vring_base(i);
    if (!state) return state.error();
    // Split ring: only bits 0-15 carry the index, the rest is reserved (vhost-user.rst,
    // "vring descriptor indices"). QEMU would truncate silently; a backend setting them is
    // wrong, so say so.
    if (state->num > 0xffff) {
      return Failure{Fault::bad_reply,
                     fmt::format("GET_VRING_BASE {}: num {:#x} sets reserved bits", i, state->num)};
    }
    dev.last_avail[i] = static_cast<std::uint16_t>(state->num);
  }
  if (auto ok = mask_calls(fe, dev); !ok) return ok.error();
  dev.started = false;
  return dev.last_avail;
}

/// The result of one phase, its failure prefixed with the phase's name.
template <class T>
Result<T> phase(Result<T> result, std::string_view name) {
  if (!result) return in_phase(std::move(result.error()), name);
  return result;
}

}  // namespace

Result<void> pre72_realize(Frontend& fe, VhostDev& dev) {
  return phase(realize(fe, dev, Version::pre72), "realize");
}
Result<void> pre72_start(Frontend& fe, VhostDev& dev, const StartHooks& hooks) {
  return phase(start(fe, dev, Version::pre72, hooks), "start");
}
Result<std::vector<std::uint16_t>> pre72_stop(Frontend& fe, VhostDev& dev) {
  return phase(stop(fe, dev, Version::pre72), "stop");
}

Result<void> qemu72_realize(Frontend& fe, VhostDev& dev) {
  return phase(realize(fe, dev, Version::v72), "realize");
}
Result<void> qemu72_start(Frontend& fe, VhostDev& dev, const StartHooks& hooks) {
  return phase(start(fe, dev, Version::v72, hooks), "start");
}
Result<std::vector<std::uint16_t>> qemu72_stop(Frontend& fe, VhostDev& dev) {
  return phase(stop(fe, dev, Version::v72), "stop");
}

Result<void> qemu82_realize(Frontend& fe, VhostDev& dev) {
  return phase(realize(fe, dev, Version::v82), "realize");
}
Result<void> qemu82_start(Frontend& fe, VhostDev& dev, const StartHooks& hooks) {
  return phase(start(fe, dev, Version::v82, hooks), "start");
}
Result<std::vector<std::uint16_t>> qemu82_stop(Frontend& fe, VhostDev& dev) {
  return phase(stop(fe, dev, Version::v82), "stop");
}

std::span<const Sequence> all_sequences() {
  static constexpr std::array sequences{
      Sequence{"pre-7.2", pre72_realize, pre72_start, pre72_stop},
      Sequence{"qemu-7.2", qemu72_realize, qemu72_start, qemu72_stop},
      Sequence{"qemu-8.2", qemu82_realize, qemu82_start, qemu82_stop},
  };
  return sequences;
}

const Sequence* find_sequence(std::string_view name) {
  for (const auto& s : all_sequences()) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

Result<std::vector<std::uint16_t>> pause_resume(Frontend& fe, VhostDev& dev, const Sequence& sequence) {
  auto bases = sequence.stop(fe, dev);
  if (!bases) return in_phase(bases.error(), "pause");
  if (auto ok = sequence.start(fe, dev, {}); !ok) return in_phase(ok.error(), "resume");
  return bases;
}

Result<Frontend> reconnect(Frontend& old, VhostDev& dev, const Sequence& sequence,
                           const std::filesystem::path& socket, Frontend::Options options) {
  if (auto ok = old.disconnect(); !ok) return in_phase(ok.error(), "disconnect");
  dev.forget_backend();
  auto fresh = Frontend::connect(socket, std::move(options));
  if (!fresh) return in_phase(fresh.error(), "reconnect");
  if (auto ok = sequence.realize(*fresh, dev); !ok) return ok.error();
  if (auto ok = sequence.start(*fresh, dev, {}); !ok) return ok.error();
  return fresh;
}

}  // namespace vusim
