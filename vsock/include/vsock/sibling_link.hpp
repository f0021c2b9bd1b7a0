#pragma once
// One VM's link to its siblings through the daemon's Router: the device's counterpart of
// HostSide for packets whose destination is another VM's CID.
//
//  - Sending: a routed tx packet is loaded into the VM's RelaySlot and offered to the
//    destination; the tx chain stays held (and tx takes no further chain) until the
//    destination has copied it into its rx buffers, then the device gets it back through
//    Hooks::tx_done. A packet with no route is refused with the Router's reason (the device
//    answers RST at once).
//  - Receiving: slots offered by other VMs queue here (at most one per sender) and are
//    written into this VM's rx buffers by produce_rx, fragment by fragment, round robin.
//  - Life cycle: while the guest driver runs (guest_started .. guest_gone) the VM is
//    reachable. guest_gone (front-end gone, driver reset) and detach (VM removed) end every
//    sibling connection: the Router tells the other VMs, which deliver an RST to their
//    guests; packets on their way to or from this VM are ended.
//
// Threads: everything here runs on this VM's executor, except what other VMs call on its
// Inbox (the Router::Endpoint attached for it), which only posts to that executor. A
// posted offer that never runs (this VM destroyed first) abandons its slot, so a sender is
// never left waiting.
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>

#include <boost/asio/any_io_executor.hpp>
#include <boost/system/result.hpp>

#include "vhostuser/liveness.hpp"
#include "virtio/descriptor_chain.hpp"
#include "vsock/packet.hpp"
#include "vsock/relay.hpp"
#include "vsock/router.hpp"

namespace vsock {

class SiblingLink {
 public:
  /// What the link asks of its device, on the device's executor.
  struct Hooks {
    std::function<void()> rx_wanted;                         ///< sibling packets wait for rx buffers
    std::function<void(std::optional<std::uint16_t>)> tx_done;  ///< the held chain (head, if still held) is free; tx may go on
    std::function<void(const Header&)> reset;                ///< an RST to deliver to the guest
  };

  /// `router` may be null: a VM without siblings, for which every other CID is unknown.
  SiblingLink(boost::asio::any_io_executor executor, Router* router, std::uint64_t cid, Router::Groups groups,
              Hooks hooks);
  ~SiblingLink();
  SiblingLink(const SiblingLink&) = delete;
  SiblingLink& operator=(const SiblingLink&) = delete;

  /// Joins the router; false if another VM holds the CID.
  bool attach();
  /// Leaves the router: every sibling connection of this VM ends.
  void detach();
  /// New groups (Router::set_groups): connections to VMs outside them end, on both sides.
  void set_groups(Router::Groups groups);

  /// A guest packet for another VM (source CID already checked). On success the chain is
  /// held: tx_done gives it back.
  boost::system::result<void, Router::Refusal> send(const Header& packet, const virtio::DescriptorChain& chain);
  /// A packet of this VM is on its way: the tx queue must take no further chain.
  [[nodiscard]] bool busy() const { return slot_->busy(); }
  /// The ring stops while a packet is on its way: the chain is given back now (the rest of
  /// the payload is copied aside); returns its head, to push before the ring stops.
  std::optional<std::uint16_t> tx_stopping() { return slot_->detach(); }

  [[nodiscard]] bool has_rx() const { return !incoming_.empty(); }
  /// Writes the next fragment of the next sender's packet into `rx` (see RelaySlot::deliver).
  std::optional<std::uint32_t> produce_rx(const virtio::DescriptorChain& rx);

  /// The guest driver runs (rx ring started): the VM is reachable.
  void guest_started();
  /// The guest driver is gone (front-end gone, driver reset): sibling connections end, and
  /// so do packets on their way to or from this VM.
  void guest_gone();

 private:
  class Inbox;
  void on_offer(std::shared_ptr<RelaySlot> slot);
  void on_collect();
  void on_reset(const Header& rst);
  void deliver(const std::vector<Router::Reset>& resets);
  void end_traffic();

  vhostuser::Liveness live_;
  Router* router_;
  std::uint64_t cid_;
  Router::Groups groups_;
  Hooks hooks_;
  std::shared_ptr<Inbox> inbox_;
  std::shared_ptr<RelaySlot> slot_;
  std::deque<std::shared_ptr<RelaySlot>> incoming_;
  bool attached_ = false;
  bool running_ = false;
};

}  // namespace vsock
