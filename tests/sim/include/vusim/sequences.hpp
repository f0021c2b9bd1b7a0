#pragma once
// The message sequences QEMU sends over a device's life, one function per phase and version
// (hw/virtio/vhost.c vhost_dev_init/start/stop, vhost-user.c, and the devices' start/stop;
// checked against ../shared/reference/qemu-7.2-vhost-user-vsock-trace.txt):
//
// realize (vhost_user_backend_init + vhost_dev_init + device realize), all versions:
//   GET_FEATURES, [GET_PROTOCOL_FEATURES, SET_PROTOCOL_FEATURES(offered ∩ known),
//   GET_QUEUE_NUM if MQ, GET_MAX_MEM_SLOTS if CONFIGURE_MEM_SLOTS] if bit 30 offered,
//   SET_OWNER, GET_FEATURES, per queue SET_VRING_CALL(masked notifier) + SET_VRING_ERR,
//   GET_CONFIG if CONFIG.
// start (guest sets DRIVER_OK):
//   SET_VRING_CALL(guest notifier) last queue first, SET_FEATURES(acked [| bit 30 from 7.2]),
//   [GET_STATUS + SET_STATUS(|FEATURES_OK) if STATUS], SET_MEM_TABLE (or REM/ADD_MEM_REG for
//   what changed, with CONFIGURE_MEM_SLOTS; NEED_REPLY with REPLY_ACK), per queue
//   SET_VRING_NUM, SET_VRING_BASE(saved base), SET_VRING_ADDR, SET_VRING_KICK,
//   [SET_VRING_ENABLE(1) per queue from 7.2; 8.2 waits for each], [DRIVER_OK status],
//   SET_VRING_CALL(guest notifier) per queue.
// stop (guest reset, VM pause, shutdown):
//   [SET_STATUS(0): vhost_dev_stop() calls vhost_dev_start(false) first], [SET_VRING_ENABLE(0)
//   per queue from 7.2; 8.2 waits], GET_VRING_BASE per queue (saved for the next start),
//   SET_VRING_CALL(QEMU's masked notifier) last queue first.
//
// Versions: pre-7.2 (QEMU 7.1 and older) never echoes bit 30 in SET_FEATURES, so it never
// sends SET_VRING_ENABLE and the backend must run rings enabled from the start; 7.2 echoes
// bit 30 and enables/disables rings without waiting; 8.2 waits for every SET_VRING_ENABLE
// (NEED_REPLY with REPLY_ACK, else a GET_FEATURES barrier, "vhost-user: call
// VHOST_USER_SET_VRING_ENABLE synchronously") and knows protocol features up to
// DEVICE_STATE.
//
// Protocol features the simulator never acknowledges, because they need the backend
// channel or a memory layout it does not implement: BACKEND_REQ, BACKEND_SEND_FD,
// HOST_NOTIFIER, INBAND_NOTIFICATIONS, XEN_MMAP, SHARED_OBJECT.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <span>
#include <string_view>
#include <vector>

#include "vusim/failure.hpp"
#include "vusim/frontend.hpp"
#include "vusim/vhost_dev.hpp"

namespace vusim {

struct StartHooks {
  /// Runs after every ring got its kick fd and before the first SET_VRING_ENABLE: where a
  /// Linux guest fills its rx ring and kicks, before the backend enables the rings.
  std::function<Result<void>(VhostDev&)> before_enable;
};

Result<void> pre72_realize(Frontend& frontend, VhostDev& dev);
Result<void> pre72_start(Frontend& frontend, VhostDev& dev, const StartHooks& hooks = {});
Result<std::vector<std::uint16_t>> pre72_stop(Frontend& frontend, VhostDev& dev);

Result<void> qemu72_realize(Frontend& frontend, VhostDev& dev);
Result<void> qemu72_start(Frontend& frontend, VhostDev& dev, const StartHooks& hooks = {});
Result<std::vector<std::uint16_t>> qemu72_stop(Frontend& frontend, VhostDev& dev);

Result<void> qemu82_realize(Frontend& frontend, VhostDev& dev);
Result<void> qemu82_start(Frontend& frontend, VhostDev& dev, const StartHooks& hooks = {});
Result<std::vector<std::uint16_t>> qemu82_stop(Frontend& frontend, VhostDev& dev);

/// One QEMU version's three phases, for code that runs "a sequence" chosen at run time.
struct Sequence {
  std::string_view name;  ///< "pre-7.2", "qemu-7.2", "qemu-8.2"
  Result<void> (*realize)(Frontend&, VhostDev&);
  Result<void> (*start)(Frontend&, VhostDev&, const StartHooks&);
  Result<std::vector<std::uint16_t>> (*stop)(Frontend&, VhostDev&);
};

std::span<const Sequence> all_sequences();
/// The sequence called `name`, or nullptr.
const Sequence* find_sequence(std::string_view name);

/// VM pause and resume (`stop` / `cont`): stop, then start again with the bases
/// GET_VRING_BASE returned, which are returned.
Result<std::vector<std::uint16_t>> pause_resume(Frontend& frontend, VhostDev& dev, const Sequence& sequence);

/// Drops the connection (orderly close, rings still running) and connects a fresh front-end
/// to the same socket, which then replays realize and start.
Result<Frontend> reconnect(Frontend& old, VhostDev& dev, const Sequence& sequence,
                           const std::filesystem::path& socket, Frontend::Options options);

}  // namespace vusim
