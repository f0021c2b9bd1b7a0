#include "vsock/sibling_link.hpp"

#include <algorithm>
#include <atomic>

#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>

namespace vsock {
namespace asio = boost::asio;

/// The Router::Endpoint of one VM: what other VMs' threads may call. It only posts to the
/// VM's executor, through handlers made (and guarded) on that executor.
class SiblingLink::Inbox final : public Router::Endpoint {
 public:
  // By reference: only a handler that really runs takes the slot. One whose VM was destroyed
  // meanwhile (Liveness::guard skips it) leaves the slot in the Offer, whose destructor
  // abandons it, so the sender gets its chain back.
  using OfferFn = std::function<void(std::shared_ptr<RelaySlot>&)>;
  Inbox(asio::any_io_executor ex, std::uint64_t cid, OfferFn offer, std::function<void(Header)> reset,
        std::function<void()> collect)
      : ex_(std::move(ex)), cid_(cid), offer_(std::move(offer)), reset_(std::move(reset)), collect_(std::move(collect)) {}

  /// After close() nothing is posted any more: the VM left the router, and at shutdown its
  /// executor may be going away (an abandoned offer would otherwise post to it from a
  /// handler destroyed with the io_context).
  void close() { open_ = false; }
  void open() { open_ = true; }

  void offer(std::shared_ptr<RelaySlot> slot) const {
    if (!open_) {  // this VM left the router after the sender routed to it
      slot->abandon(cid_);
      return;
    }
    // If the handler never runs (the VM is destroyed first), the sender must not wait for
    // a delivery that will not come: the offer abandons its slot when it is destroyed unrun.
    struct Offer {
      std::shared_ptr<RelaySlot> slot;
      std::uint64_t receiver;
      Offer(std::shared_ptr<RelaySlot> s, std::uint64_t r) : slot(std::move(s)), receiver(r) {}
      Offer(Offer&& o) noexcept : slot(std::move(o.slot)), receiver(o.receiver) {}
      Offer(const Offer&) = delete;
      ~Offer() {
        if (slot) slot->abandon(receiver);
      }
    };
    asio::post(ex_, [f = offer_, o = Offer(std::move(slot), cid_)]() mutable { f(o.slot); });
  }
  void reset(const Header& rst) const {
    if (open_) asio::post(ex_, [f = reset_, rst] { f(rst); });
  }
  void collect() const {
    if (open_) asio::post(ex_, collect_);
  }

 private:
  asio::any_io_executor ex_;
  std::uint64_t cid_;
  OfferFn offer_;
  std::function<void(Header)> reset_;
  std::function<void()> collect_;
  std::atomic<bool> open_{true};
};

SiblingLink::SiblingLink(asio::any_io_executor executor, Router* router, std::uint64_t cid, Router::Groups groups,
                         Hooks hooks)
    : router_(router), cid_(cid), groups_(std::move(groups)), hooks_(std::move(hooks)) {
  inbox_ = std::make_shared<Inbox>(
      std::move(executor), cid_, live_.guard([this](std::shared_ptr<RelaySlot>& s) { on_offer(std::move(s)); }),
      live_.guard([this](const Header& rst) { on_reset(rst); }), live_.guard([this] { on_collect(); }));
  slot_ = std::make_shared<RelaySlot>([inbox = inbox_] { inbox->collect(); });
}

SiblingLink::~SiblingLink() { detach(); }

bool SiblingLink::attach() {
  if (router_ == nullptr || attached_) return true;
  attached_ = router_->attach(cid_, groups_, inbox_);
  if (attached_) inbox_->open();
  return attached_;
}

void SiblingLink::detach() {
  if (!attached_) return;
  attached_ = false;
  running_ = false;
  // Our own traffic ends before the other VMs hear the RSTs: once a peer has its RST, no
  // fragment of ours may follow it from another worker thread.
  auto resets = router_->detach(cid_);
  end_traffic();
  deliver(resets);
  inbox_->close();
}

void SiblingLink::set_groups(Router::Groups groups) {
  groups_ = std::move(groups);
  if (attached_) deliver(router_->set_groups(cid_, groups_));
}

void SiblingLink::guest_started() {
  if (!attached_ || running_) return;
  running_ = true;
  (void)router_->set_started(cid_, true);
}

void SiblingLink::guest_gone() {
  if (!attached_) return;
  running_ = false;
  auto resets = router_->set_started(cid_, false);  // as in detach(): traffic ends first
  end_traffic();
  deliver(resets);
}

void SiblingLink::end_traffic() {
  for (const auto& slot : incoming_) slot->abandon(cid_);
  incoming_.clear();
  // Our own packet on its way ends as if its receiver had abandoned it, so its chain goes
  // back through on_collect like any finished packet. The tx ring it came from may well
  // still run (only the rx ring broke, see VsockDevice::rx_broken): its guest must get the
  // chain back and tx must resume. If that ring stopped instead, detach() has returned the
  // chain already and there is nothing left to push.
  if (slot_->busy()) slot_->abandon(slot_->destination());
}

void SiblingLink::deliver(const std::vector<Router::Reset>& resets) {
  for (const auto& reset : resets) {
    if (auto endpoint = router_->endpoint(reset.to)) static_cast<const Inbox&>(*endpoint).reset(reset.rst);
  }
}

boost::system::result<void, Router::Refusal> SiblingLink::send(const Header& packet,
                                                               const virtio::DescriptorChain& chain) {
  if (!attached_) return Router::Refusal::unknown_cid;
  auto route = router_->route(packet);
  if (!route) return route.error();
  slot_->load(packet, chain);
  static_cast<const Inbox&>(**route).offer(slot_);
  return {};
}

void SiblingLink::on_offer(std::shared_ptr<RelaySlot> slot) {
  if (!running_) {
    // The guest is gone (or not there yet): the packet has nowhere to go. The router has
    // reset or will reset its connection.
    slot->abandon(cid_);
    return;
  }
  // A sender whose guest went away and came back may offer its slot again while the first
  // offer still waits here: one entry per sender, or it would get extra turns.
  if (std::find(incoming_.begin(), incoming_.end(), slot) == incoming_.end()) incoming_.push_back(std::move(slot));
  hooks_.rx_wanted();
}

std::optional<std::uint32_t> SiblingLink::produce_rx(const virtio::DescriptorChain& rx) {
  // Round robin over senders, one fragment each; a slot leaves the queue with its last
  // fragment, or when it has nothing for us any more (dropped by its sender).
  while (!incoming_.empty()) {
    auto slot = std::move(incoming_.front());
    incoming_.pop_front();
    if (auto delivery = slot->deliver(rx, cid_)) {
      if (!delivery->last) incoming_.push_back(std::move(slot));
      return delivery->used_len;
    }
  }
  return std::nullopt;
}

void SiblingLink::on_collect() {
  // The destination is done with our packet (or abandoned it): the chain goes back.
  if (!slot_->busy()) return;
  auto head = slot_->collect();
  if (slot_->busy()) return;  // not done yet: a stale notice
  hooks_.tx_done(head);
}

void SiblingLink::on_reset(const Header& rst) {
  // A sibling connection died on the other side. A packet of ours on its way there is
  // ended too if that VM is gone altogether (its offer may never have run).
  if (slot_->busy() && slot_->destination() == rst.src.cid && router_->endpoint(rst.src.cid) == nullptr) {
    hooks_.tx_done(slot_->drop());
  }
  hooks_.reset(rst);
}

}  // namespace vsock
