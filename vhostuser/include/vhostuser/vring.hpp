#pragma once
// One vring of a vhost-user session, as a device sees it.
//
// The session owns the vring's configuration and life cycle (vhost-user spec "Ring states");
// a device is handed a Vring& when the ring becomes active (started and enabled) and must let
// go of it when told the ring stopped. Between the two it pops and pushes through queue() and
// calls notify() after a batch of pushes.
#include <cstdint>
#include <optional>
#include <string_view>

#include "vhostuser/unique_fd.hpp"
#include "virtio/split_queue.hpp"

namespace vhostuser {

class Vring {
 public:
  explicit Vring(std::uint16_t index) : index_(index) {}

  [[nodiscard]] std::uint16_t index() const { return index_; }

  /// The virtqueue; valid from on_queue_started until on_queue_stopped.
  [[nodiscard]] virtio::SplitQueue& queue() { return *queue_; }

  /// Signals the driver if the queue says it wants an interrupt now (EVENT_IDX or the
  /// NO_INTERRUPT flag, see SplitQueue::needs_notification). Without a call fd (the front-end
  /// set the no-fd flag) the front-end polls and nothing is signalled.
  void notify();

  /// Declares the ring broken (a malformed chain, a buffer outside guest memory): the device
  /// stops using it, the front-end is told through the error fd, and it stays broken until
  /// the front-end stops it (GET_VRING_BASE) or the session resets; the device still gets
  /// on_queue_stopped then. Like libvhost-user's vu_panic, but for one ring only.
  void fail(std::string_view reason);

  [[nodiscard]] bool broken() const { return state_ == State::broken; }

 private:
  friend class Session;

  /// Started/stopped life cycle (spec "Ring states": a ring starts on SET_VRING_KICK, stops
  /// on GET_VRING_BASE). Enabled/disabled is independent of it (SET_VRING_ENABLE), kept in
  /// enabled_. A ring is active for the device when started and enabled.
  enum class State { stopped, started, broken };

  std::uint16_t index_;
  // Configuration from the front-end (SET_VRING_NUM/ADDR/BASE/KICK/CALL/ERR).
  std::uint16_t num_ = 0;
  std::optional<virtio::GuestPhysAddr> desc_, avail_, used_;
  std::uint16_t base_ = 0;
  UniqueFd kick_, call_, err_;
  State state_ = State::stopped;
  bool enabled_ = false;
  bool kick_pending_ = false;  // a kick seen while started but disabled (spec: do not drop it)
  bool announced_ = false;     // the device was told on_queue_started and not yet stopped
  std::optional<virtio::SplitQueue> queue_;  // exists unless stopped
};

}  // namespace vhostuser
