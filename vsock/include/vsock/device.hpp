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
//    descriptors), validated, routed, and returned to the used ring at once, with length 0.
//    Packets for CID 2 go to the host side; anything it cannot route is answered with RST.
//  - rx: pull-based. When the host side or the connection-less reply queue has something
//    for the guest and the guest has posted buffers, one packet is written per buffer, cut
//    to the buffer's real writable size.
// Backpressure instead of loss: when the queue of connection-less replies is full, tx
// processing pauses (chains stay in the ring) until rx drains it.
#include <cstdint>
#include <deque>
#include <memory>

#include <boost/asio/any_io_executor.hpp>

#include "vhostuser/device.hpp"
#include "vhostuser/liveness.hpp"
#include "vsock/config.hpp"
#include "vsock/host_side.hpp"
#include "vsock/packet.hpp"

namespace vsock {

class VsockDevice final : public vhostuser::Device {
 public:
  static constexpr std::uint16_t rx_queue = 0;
  static constexpr std::uint16_t tx_queue = 1;
  static constexpr std::uint16_t event_queue = 2;
  /// Connection-less replies (RSTs) waiting for rx buffers, at most.
  static constexpr std::size_t max_pending_replies = 256;

  VsockDevice(boost::asio::any_io_executor executor, DeviceConfig config);

  /// Binds the host-side listeners; the device is usable before any front-end connects.
  vhostuser::Result<void> listen() { return host_.listen(); }
  /// Closes the host side (listeners, connections, socket files).
  void close() { host_.close(); }

  [[nodiscard]] const DeviceConfig& config() const { return config_; }
  [[nodiscard]] const HostSide& host() const { return host_; }

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
  void process_tx();
  /// Handles one tx chain; false if the ring is broken.
  bool handle_tx(const virtio::DescriptorChain& chain);
  void process_rx();
  void queue_reply(const Header& reply);

  vhostuser::Liveness live_;  // guards posted work against a destroyed device
  boost::asio::any_io_executor executor_;
  DeviceConfig config_;
  HostSide host_;
  bool seqpacket_ = false;
  vhostuser::Vring* rx_ = nullptr;
  vhostuser::Vring* tx_ = nullptr;
  bool rx_ever_started_ = false;
  bool in_rx_ = false;
  bool tx_paused_ = false;  // tx stopped on a full reply queue
  std::deque<Header> replies_;
};

}  // namespace vsock
