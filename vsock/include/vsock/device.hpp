#pragma once
// The virtio-vsock device (virtio spec 5.10) of one VM, on the generic vhost-user device
// interface.
//
// Queues: 0 rx (device -> driver), 1 tx (driver -> device), 2 event. QEMU keeps the event
// queue for itself and hands only rx and tx to the back-end; other front-ends (crosvm) hand
// all three, so three are declared and the event queue is simply never used.
//
// The device moves packets between the rings and the host side; it owns no connection
// state itself:
//  - tx: every chain is parsed (header anywhere in the chain, payload over any number of
//    descriptors), validated and routed. Packets for CID 2 go to the host side and the
//    chain is returned to the used ring at once, with length 0. Packets for a sibling VM go
//    through the SiblingLink, which holds the chain until the sibling has copied it (tx
//    takes no further chain meanwhile). Anything that cannot be routed is answered with RST.
//  - rx: pull-based. When the reply queue, the host side or a sibling has something for the
//    guest and the guest has posted buffers, one packet is written per buffer, cut to the
//    buffer's real writable size; host side and siblings take turns.
// Backpressure instead of loss: when the queue of connection-less replies is full, tx
// processing pauses (chains stay in the ring) until rx drains it.
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>

#include <boost/asio/any_io_executor.hpp>

#include "vhostuser/device.hpp"
#include "vhostuser/liveness.hpp"
#include "vsock/config.hpp"
#include "vsock/counters.hpp"
#include "vsock/host_side.hpp"
#include "vsock/packet.hpp"
#include "vsock/router.hpp"
#include "vsock/sibling_link.hpp"

namespace vsock {

class VsockDevice final : public vhostuser::Device {
 public:
  static constexpr std::uint16_t rx_queue = 0;
  static constexpr std::uint16_t tx_queue = 1;
  static constexpr std::uint16_t event_queue = 2;
  /// Connection-less replies (RSTs) waiting for rx buffers, at most.
  static constexpr std::size_t max_pending_replies = 256;

  /// `router`: the daemon's sibling router (it must outlive the device), or null for a VM
  /// that reaches no other VM.
  VsockDevice(boost::asio::any_io_executor executor, DeviceConfig config, Router* router = nullptr);

  /// Binds the host-side listeners and joins the router; the device is usable before any
  /// front-end connects. Fails if the router already has a VM with this CID.
  vhostuser::Result<void> listen();
  /// Closes the host side (listeners, connections, socket files) and leaves the router
  /// (sibling connections end with RST on the other side).
  void close();

  [[nodiscard]] const DeviceConfig& config() const { return config_; }
  [[nodiscard]] const HostSide& host() const { return host_; }

  /// New sibling groups, as Router::set_groups: sibling connections to VMs that no longer
  /// share a group with this one end with RST on both sides.
  void set_groups(Router::Groups groups);

  /// What the device has counted since it was created (see counters.hpp).
  [[nodiscard]] DeviceCounters counters() const;
  /// Whether the guest driver runs: the front-end has started the rx ring.
  [[nodiscard]] bool driver_running() const { return rx_ != nullptr; }

  // vhostuser::Device
  [[nodiscard]] std::uint64_t device_features() const override;
  [[nodiscard]] std::uint16_t queue_count() const override { return 3; }
  [[nodiscard]] std::uint16_t max_queue_size() const override { return config_.queue_size; }
  [[nodiscard]] std::vector<std::byte> config_space() const override;
  void on_features(std::uint64_t features) override;
  void on_queue_started(vhostuser::Vring& vring) override;
  void on_queue_kicked(vhostuser::Vring& vring) override;
  void on_queue_stopped(vhostuser::Vring& vring) override;
  void on_reset() override;

 private:
  /// What became of a tx chain: back to the used ring now, or held by the sibling link.
  enum class TxOutcome { returned, held };

  void process_tx();
  TxOutcome handle_tx(const virtio::DescriptorChain& chain);
  /// Whether tx must take no further chain: the reply queue is full, or a packet to a
  /// sibling is on its way. Each condition resumes tx when it clears.
  [[nodiscard]] bool tx_blocked() const;
  /// A chain the sibling link held is free (head: push it, if the ring still runs).
  void on_sibling_tx_done(std::optional<std::uint16_t> head);
  void process_rx();
  /// The rx ring broke (a malformed chain): see the definition.
  void rx_broken();
  /// Host side and siblings take turns at rx buffers.
  std::optional<std::uint32_t> produce_rx(const virtio::DescriptorChain& rx);
  void queue_reply(const Header& reply);
  /// Counts a packet the guest gets: `written` bytes of `rx` went to the used ring.
  void count_rx(const virtio::DescriptorChain& rx, std::uint32_t written);
  void guest_gone(const char* why);

  vhostuser::Liveness live_;  // guards posted work against a destroyed device
  boost::asio::any_io_executor executor_;
  DeviceConfig config_;
  DeviceCounters counters_;  // credit_stalls here: of ended host connections (see counters())
  HostSide host_;
  SiblingLink siblings_;
  bool seqpacket_ = false;
  bool siblings_turn_ = false;
  vhostuser::Vring* rx_ = nullptr;
  vhostuser::Vring* tx_ = nullptr;
  bool rx_ever_started_ = false;
  bool in_rx_ = false;
  bool tx_paused_ = false;  // tx stopped on a full reply queue or a packet to a sibling
  std::deque<Header> replies_;
};

}  // namespace vsock
