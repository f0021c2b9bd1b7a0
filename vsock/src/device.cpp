#include "vsock/device.hpp"

#include <boost/asio/post.hpp>
#include <spdlog/spdlog.h>

#include "virtio/chain_io.hpp"
#include "vhostuser/wire.hpp"

namespace vsock {

VsockDevice::VsockDevice(boost::asio::any_io_executor executor, DeviceConfig config, Router* router)
    : executor_(executor),
      config_(std::move(config)),
      host_(executor, config_, counters_, [this] { process_rx(); }),
      siblings_(executor, router, config_.guest_cid, config_.groups,
                SiblingLink::Hooks{.rx_wanted = [this] { process_rx(); },
                                   .tx_done = [this](std::optional<std::uint16_t> head) { on_sibling_tx_done(head); },
                                   .reset =
                                       [this](const Header& rst) {
                                         queue_reply(rst);
                                         process_rx();
                                       }}) {}

vhostuser::Result<void> VsockDevice::listen() {
  if (!siblings_.attach()) {
    // The configuration rejects duplicate CIDs; this guards against a caller that did not.
    spdlog::error("cid {}: another VM on the sibling router has this CID", config_.guest_cid);
    return boost::system::errc::make_error_code(boost::system::errc::device_or_resource_busy);
  }
  if (auto ok = host_.listen(); !ok) {
    siblings_.detach();
    return ok;
  }
  return {};
}

void VsockDevice::close() {
  host_.close();
  siblings_.detach();
}

void VsockDevice::set_groups(Router::Groups groups) {
  config_.groups = groups;
  siblings_.set_groups(std::move(groups));
}

DeviceCounters VsockDevice::counters() const {
  DeviceCounters all = counters_;
  all.credit_stalls = host_.credit_stalls();
  return all;
}

namespace {

Drop drop_of(Router::Refusal refusal) {
  switch (refusal) {
    case Router::Refusal::unknown_cid: return Drop::unknown_cid;
    case Router::Refusal::own_cid: return Drop::own_cid;
    case Router::Refusal::not_started: return Drop::not_started;
    case Router::Refusal::no_shared_group: return Drop::no_shared_group;
    case Router::Refusal::connection_limit: return Drop::sibling_limit;
  }
  return Drop::unknown_cid;
}

}  // namespace

std::uint64_t VsockDevice::device_features() const {
  // STREAM is implied without VIRTIO_VSOCK_F_NO_IMPLIED_STREAM (spec 5.10.3); SEQPACKET is
  // offered, and QEMU passes it to the guest (vhost-vsock-common.c feature list).
  return vhostuser::bit(feature::seqpacket);
}

std::vector<std::byte> VsockDevice::config_space() const {
  // struct virtio_vsock_config { le64 guest_cid; } (spec 5.10.4)
  const virtio::Le64 cid{config_.guest_cid};
  const auto* p = reinterpret_cast<const std::byte*>(&cid);
  return {p, p + sizeof cid};
}

void VsockDevice::on_features(std::uint64_t features) {
  seqpacket_ = (features & vhostuser::bit(feature::seqpacket)) != 0;
  host_.set_seqpacket(seqpacket_);
}

void VsockDevice::on_queue_started(vhostuser::Vring& vring) {
  if (vring.index() == rx_queue) {
    // A ring that starts from index 0 after having run before belongs to a driver that was
    // reset (guest reboot, driver reload): its sockets are gone, so are ours. A VM that was
    // merely paused resumes from its saved, non-zero index. (The back-end cannot tell the
    // two apart otherwise: vhost-user.rst, "Ring states".)
    auto& q = vring.queue();
    if (rx_ever_started_ && q.next_avail() == 0 && q.next_used() == 0) guest_gone("guest driver restarted");
    rx_ever_started_ = true;
    rx_ = &vring;
    siblings_.guest_started();
  } else if (vring.index() == tx_queue) {
    tx_ = &vring;
  }
}

void VsockDevice::on_queue_stopped(vhostuser::Vring& vring) {
  if (&vring == rx_) rx_ = nullptr;
  if (&vring == tx_) {
    // A packet on its way to a sibling holds its chain; the layer is about to rewind what
    // was not pushed, and must not offer that chain again (it was consumed). The rest of
    // its payload is set aside and the chain goes back now.
    if (auto head = siblings_.tx_stopping(); head && !vring.broken()) {
      if (auto ok = vring.queue().push(*head, 0); ok) vring.notify();
    }
    tx_ = nullptr;
  }
}

void VsockDevice::on_reset() {
  rx_ = tx_ = nullptr;
  replies_.clear();
  tx_paused_ = false;
  guest_gone("front-end disconnected");
}

void VsockDevice::guest_gone(const char* why) {
  host_.guest_reset(why);
  siblings_.guest_gone();
}

void VsockDevice::on_queue_kicked(vhostuser::Vring& vring) {
  if (vring.index() == tx_queue) process_tx();
  if (vring.index() == rx_queue) process_rx();
}

void VsockDevice::queue_reply(const Header& reply) { replies_.push_back(reply); }

void VsockDevice::process_tx() {
  if (tx_ == nullptr || tx_->broken()) return;
  auto& q = tx_->queue();
  bool pushed = false;
  do {
    q.disable_notifications();
    while (!tx_blocked()) {
      auto chain = q.pop();
      if (!chain) {
        tx_->fail("tx: " + chain.error().message());
        return;
      }
      if (!*chain) break;
      if (handle_tx(**chain) == TxOutcome::held) continue;
      // A chain for the host goes back at once: its data has been written to the host
      // socket or copied into the connection's bounded buffer. Used length 0: the device
      // wrote nothing.
      if (auto ok = q.push((*chain)->head(), 0); !ok) {
        tx_->fail("tx used ring: " + ok.error().message());
        return;
      }
      pushed = true;
    }
    if (tx_blocked()) {
      // Resumed, kicks or not, by process_rx once replies drain, or by the sibling link
      // once the packet on its way has been copied.
      tx_paused_ = true;
      break;
    }
  } while (q.enable_notifications());
  if (pushed) tx_->notify();
  process_rx();
}

bool VsockDevice::tx_blocked() const { return replies_.size() >= max_pending_replies || siblings_.busy(); }

void VsockDevice::on_sibling_tx_done(std::optional<std::uint16_t> head) {
  if (head && tx_ != nullptr && !tx_->broken()) {
    if (auto ok = tx_->queue().push(*head, 0); !ok) {
      tx_->fail("tx used ring: " + ok.error().message());
      return;
    }
    tx_->notify();
  }
  if (tx_paused_ && !tx_blocked()) {
    tx_paused_ = false;
    process_tx();
  }
}

VsockDevice::TxOutcome VsockDevice::handle_tx(const virtio::DescriptorChain& chain) {
  virtio::ChainReader reader(chain);
  auto wire = reader.read_obj<WireHeader>();
  if (!wire) {
    // Not even a header: nothing to answer to. The chain is returned, the ring goes on.
    counters_.count(Drop::no_header);
    spdlog::warn("cid {}: tx chain of {} bytes has no packet header", config_.guest_cid, chain.readable_bytes());
    return TxOutcome::returned;
  }
  const Header packet = decode(*wire);
  counters_.tx.count(packet);
  auto refuse = [&](Drop reason, const char* why) {
    counters_.count(reason);
    spdlog::info("cid {}: {}: {}", config_.guest_cid, why, describe(packet));
    std::optional<Header> reply;
    if (packet.dst.cid == cid_host) {
      reply = host_.on_bad_packet(packet, why);  // resets the connection on both ends, if any
    } else if (!packet.is(Op::rst)) {
      reply = reset_reply(packet);
    }
    if (reply) queue_reply(*reply);
    return TxOutcome::returned;
  };
  if (packet.src.cid != config_.guest_cid) {
    // Anti-spoofing: a guest speaks only for its own CID. No RST: it would go to a CID that
    // did not send the packet.
    counters_.count(Drop::spoofed_source);
    spdlog::warn("cid {}: dropped packet with spoofed source: {}", config_.guest_cid, describe(packet));
    return TxOutcome::returned;
  }
  if (packet.len > reader.remaining() || packet.len > max_packet_payload) return refuse(Drop::bad_length, "bad payload length");
  const bool type_ok = packet.type == static_cast<std::uint16_t>(Type::stream) ||
                       (seqpacket_ && packet.type == static_cast<std::uint16_t>(Type::seqpacket));
  if (!type_ok) return refuse(Drop::unsupported_type, "unsupported socket type");
  if (packet.dst.cid != cid_host) {
    // A sibling VM: the header goes as it is, the payload is copied once into its rx
    // buffers, and the chain is held until then.
    if (auto sent = siblings_.send(packet, chain); !sent) return refuse(drop_of(sent.error()), Router::to_string(sent.error()));
    return TxOutcome::held;
  }

  if (auto reply = host_.on_guest_packet(packet, reader)) queue_reply(*reply);
  return TxOutcome::returned;
}

void VsockDevice::rx_broken() {
  // The guest receives nothing until the front-end restarts the ring. Packets of other VMs
  // must not wait for it (their senders' tx queues would stall with them), so for its
  // siblings this guest is gone; it is reachable again once the ring starts anew.
  siblings_.guest_gone();
}

std::optional<std::uint32_t> VsockDevice::produce_rx(const virtio::DescriptorChain& rx) {
  for (int turn = 0; turn < 2; ++turn) {
    siblings_turn_ = !siblings_turn_;
    auto written = siblings_turn_ ? siblings_.produce_rx(rx) : host_.produce_rx(rx);
    if (written) return written;
  }
  return std::nullopt;
}

void VsockDevice::count_rx(const virtio::DescriptorChain& rx, std::uint32_t written) {
  if (written < sizeof(WireHeader)) return;  // a buffer returned unused
  // Whoever wrote the packet (a reply, a host connection, a sibling's relayed packet), its
  // header is at the start of the buffer: reading it back counts every producer the same
  // way. The device may read what it has just written (the guest gets the buffer back only
  // with the used element, pushed before this); a guest that scribbles on a buffer it has
  // handed over skews nothing but its own counters.
  virtio::ChainReader back(*rx.memory(), rx.writable_buffers());
  if (auto wire = back.read_obj<WireHeader>()) counters_.rx.count(decode(*wire));
}

void VsockDevice::process_rx() {
  if (rx_ == nullptr || in_rx_) return;
  if (rx_->broken()) return rx_broken();
  in_rx_ = true;
  auto& q = rx_->queue();
  bool pushed = false;
  for (;;) {
    if (replies_.empty() && !host_.has_rx() && !siblings_.has_rx()) break;
    auto chain = q.pop();
    if (!chain) {
      rx_->fail("rx: " + chain.error().message());
      in_rx_ = false;
      return rx_broken();
    }
    if (!*chain) {
      // No buffer: re-arm kicks and look again (a buffer may have come meanwhile); the
      // guest's next kick resumes us otherwise. Nothing waits in a loop.
      if (q.enable_notifications()) continue;
      ++counters_.rx_ring_stalls;
      break;
    }
    const auto& rx = **chain;
    std::optional<std::uint32_t> written;
    if (rx.writable_bytes() < sizeof(WireHeader)) {
      written = 0;  // a buffer that cannot hold a header (a driver bug): returned unused
    } else if (!replies_.empty()) {
      virtio::ChainWriter writer(rx);
      (void)writer.write_obj(encode(replies_.front()));
      replies_.pop_front();
      written = static_cast<std::uint32_t>(sizeof(WireHeader));
    } else {
      written = produce_rx(rx);
    }
    if (!written) {
      q.rewind_in_flight();  // nobody had data after all: the buffer stays the guest's
      break;
    }
    if (auto ok = q.push(rx.head(), *written); !ok) {
      rx_->fail("rx used ring: " + ok.error().message());
      in_rx_ = false;
      return rx_broken();
    }
    count_rx(rx, *written);
    pushed = true;
  }
  if (pushed) rx_->notify();
  in_rx_ = false;
  // Replies drained: tx processing may have paused on a full reply queue.
  // Tx paused on a full reply queue skipped re-arming its kicks: resume it whether or not
  // chains are waiting, so notifications are enabled again.
  if (tx_paused_ && replies_.size() < max_pending_replies / 2 && !siblings_.busy()) {
    tx_paused_ = false;
    boost::asio::post(executor_, live_.guard([this] { process_tx(); }));
  }
}

}  // namespace vsock
