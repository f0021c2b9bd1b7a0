#include "vhostuser/session.hpp"

#include <bit>
#include <utility>

#include <spdlog/spdlog.h>

#include "vhostuser/codec.hpp"
#include "virtio/ring.hpp"

namespace vhostuser {
namespace {

/// Ring features the layer implements for every device (see device.hpp).
constexpr std::uint64_t layer_features =
    bit(virtio::feature::version_1) | bit(virtio::feature::indirect_desc) |
    bit(virtio::feature::event_idx) | bit(virtio::feature::notify_on_empty) | bit(protocol_features_bit);

constexpr std::uint64_t layer_protocol_features =
    bit(ProtocolFeature::mq) | bit(ProtocolFeature::reply_ack) | bit(ProtocolFeature::configure_mem_slots) |
    bit(ProtocolFeature::status) | bit(ProtocolFeature::reset_device);

/// VHOST_VRING_F_LOG, the only flag of SET_VRING_ADDR.
constexpr std::uint32_t vring_flag_log = 0x1;

std::vector<std::byte> u64_reply(Request r, std::uint64_t value) { return encode_reply(r, value); }

}  // namespace

Session::Session(std::string name, Device& device, KickWatcher& watcher)
    : name_(std::move(name)), device_(device), watcher_(watcher) {
  vrings_.reserve(device_.queue_count());
  for (std::uint16_t i = 0; i < device_.queue_count(); ++i) vrings_.emplace_back(i);
}

Session::~Session() { reset(); }

std::uint64_t Session::offered_features() const { return device_.device_features() | layer_features; }

std::uint64_t Session::offered_protocol_features() const {
  std::uint64_t features = layer_protocol_features;
  if (!device_.config_space().empty()) features |= bit(ProtocolFeature::config);
  return features;
}

Result<std::vector<std::byte>> Session::handle(RawMessage raw) {
  in_use_ = true;
  const Header header = raw.header;
  const bool need_reply = (header.flags & header_flags::need_reply) != 0;
  auto msg = decode_request(header, raw.body, std::move(raw.fds));
  if (!msg) {
    spdlog::warn("{}: malformed request {} ({}, {} bytes): {}", name_, header.request,
                 to_string(static_cast<Request>(header.request)), header.size, msg.error().message());
    // Framing is intact, so a front-end that asked for an ack can be told and go on.
    if (need_reply) return u64_reply(static_cast<Request>(header.request), 1);
    return msg.error();
  }
  const RequestRule& rule = *find_rule(header.request);
  spdlog::trace("{}: {}", name_, rule.name);

  auto reply = dispatch(rule, *msg);
  if (!reply) {
    spdlog::warn("{}: {} refused: {}", name_, rule.name, reply.error().message());
    if (rule.reply == ReplyRule::ack && msg->need_reply()) return u64_reply(rule.request, 1);
    if (rule.request == Request::get_config) return failure_reply(rule, *msg);
    return reply.error();
  }
  if (rule.reply == ReplyRule::always) return encode_reply(rule.request, std::span<const std::byte>(**reply));
  if (msg->need_reply()) return u64_reply(rule.request, 0);
  return std::vector<std::byte>{};
}

std::vector<std::byte> Session::failure_reply(const RequestRule& rule, const Message& msg) const {
  // GET_CONFIG's error form: the header echoed with size 0 and no data.
  ConfigHeader header = msg.as<ConfigPayload>().header;
  header.size = 0;
  return encode_reply(rule.request, header);
}

Result<void> Session::check_gate(const RequestRule& rule) const {
  if (rule.needs && (acked_protocol_features_ & bit(*rule.needs)) == 0) return Errc::feature_not_negotiated;
  if (rule.needs_protocol_features_bit && (acked_features_ & bit(protocol_features_bit)) == 0) {
    return Errc::feature_not_negotiated;
  }
  return {};
}

Result<Session::Reply> Session::dispatch(const RequestRule& rule, Message& msg) {
  if (auto ok = check_gate(rule); !ok) return ok.error();
  auto done = [](Result<void> r) -> Result<Reply> {
    if (!r) return r.error();
    return Reply{};
  };
  auto value = [](std::uint64_t v) -> Result<Reply> {
    auto bytes = bytes_of(v);
    return Reply{std::vector<std::byte>(bytes.begin(), bytes.end())};
  };

  switch (msg.request) {
    case Request::get_features: return value(offered_features());
    case Request::set_features: return done(set_features(msg.as<U64Payload>().value));
    case Request::set_owner: return done(set_owner());
    case Request::reset_owner:
      reset_device();
      owned_ = false;
      return Reply{};
    case Request::reset_device: reset_device(); return Reply{};
    case Request::set_mem_table: return done(set_mem_table(msg));
    case Request::add_mem_reg: return done(add_mem_reg(msg));
    case Request::rem_mem_reg: return done(rem_mem_reg(msg));
    case Request::get_max_mem_slots: return value(MemoryTable::max_slots);
    case Request::set_vring_num: return done(set_vring_num(msg.as<VringState>()));
    case Request::set_vring_addr: return done(set_vring_addr(msg.as<VringAddr>()));
    case Request::set_vring_base: return done(set_vring_base(msg.as<VringState>()));
    case Request::get_vring_base: {
      auto state = get_vring_base(msg.as<VringState>());
      if (!state) return state.error();
      auto bytes = bytes_of(*state);
      return Reply{std::vector<std::byte>(bytes.begin(), bytes.end())};
    }
    case Request::set_vring_kick:
    case Request::set_vring_call:
    case Request::set_vring_err: return done(set_vring_fd(msg.request, msg.as<VringFd>(), msg.fds));
    case Request::get_protocol_features: return value(offered_protocol_features());
    case Request::set_protocol_features: return done(set_protocol_features(msg.as<U64Payload>().value));
    case Request::get_queue_num: return value(device_.queue_count());
    case Request::set_vring_enable: return done(set_vring_enable(msg.as<VringState>()));
    case Request::get_config: {
      auto config = get_config(msg.as<ConfigPayload>());
      if (!config) return config.error();
      std::vector<std::byte> bytes(sizeof(ConfigHeader) + config->data.size());
      std::memcpy(bytes.data(), &config->header, sizeof(ConfigHeader));
      std::memcpy(bytes.data() + sizeof(ConfigHeader), config->data.data(), config->data.size());
      return Reply{std::move(bytes)};
    }
    case Request::set_config: return done(set_config(msg.as<ConfigPayload>()));
    case Request::set_status: return done(set_status(msg.as<U64Payload>().value));
    case Request::get_status: return value(status_);
    default:
      // Everything else sits behind a protocol feature this layer never offers (check_gate
      // refused it already) or belongs to another device type (GPU_SET_SOCKET).
      return Errc::not_supported;
  }
}

Result<Vring*> Session::ring(std::uint32_t index) {
  if (index >= vrings_.size()) return Errc::bad_vring_index;
  return &vrings_[index];
}

Result<void> Session::set_features(std::uint64_t features) {
  if ((features & ~offered_features()) != 0) return Errc::feature_not_offered;
  acked_features_ = features;
  device_.on_features(features);
  // Spec "Ring states": without VHOST_USER_F_PROTOCOL_FEATURES there is no SET_VRING_ENABLE
  // and rings are enabled from the start (QEMU before 7.2). With it, SET_FEATURES must not
  // touch the enabled state: QEMU re-sends it to toggle dirty logging on running rings.
  if ((features & bit(protocol_features_bit)) == 0) {
    for (auto& v : vrings_) {
      v.enabled_ = true;
      update_activity(v);
    }
  }
  return {};
}

Result<void> Session::set_protocol_features(std::uint64_t features) {
  if ((features & ~offered_protocol_features()) != 0) return Errc::feature_not_offered;
  acked_protocol_features_ = features;
  return {};
}

Result<void> Session::set_owner() {
  if (owned_) return Errc::already_owned;
  owned_ = true;
  return {};
}

void Session::reset_device() {
  for (auto& v : vrings_) {
    if (v.state_ != Vring::State::stopped) stop(v);
    const std::uint16_t index = v.index_;
    watcher_.unwatch_kick(index);
    v = Vring(index);
  }
  device_.on_reset();
  acked_features_ = 0;
  status_ = 0;
}

void Session::reset() {
  // Once reset, the session calls nothing more on the device: its connection may outlive
  // the server (a pending handler holds it) and the device with it.
  if (!in_use_) return;
  in_use_ = false;
  reset_device();
  owned_ = false;
  acked_protocol_features_ = 0;
  memory_.clear();
}

Result<void> Session::set_mem_table(Message& msg) {
  if (auto ok = memory_.replace(msg.as<MemTable>().regions, msg.fds); !ok) return ok;
  memory_changed();
  return {};
}

Result<void> Session::add_mem_reg(Message& msg) {
  if (auto ok = memory_.add(msg.as<SingleMemRegion>().region, std::move(msg.fds.front())); !ok) return ok;
  memory_changed();
  return {};
}

Result<void> Session::rem_mem_reg(const Message& msg) {
  if (auto ok = memory_.remove(msg.as<SingleMemRegion>().region); !ok) return ok;
  memory_changed();
  return {};
}

void Session::memory_changed() {
  for (auto& v : vrings_) {
    if (v.state_ != Vring::State::started) continue;
    // A table without the ring's areas breaks the ring, not the session: the other rings and
    // the device keep running (QEMU only removes memory it no longer uses for rings).
    if (!memory_.snapshot()) {
      v.fail("guest memory removed under a running ring");
      continue;
    }
    if (auto ok = v.queue_->update_memory(memory_.snapshot()); !ok) {
      v.fail("ring no longer in guest memory: " + ok.error().message());
    }
  }
  if (memory_.snapshot()) device_.on_memory_changed(memory_.snapshot());
}

Result<void> Session::set_vring_num(const VringState& s) {
  auto v = ring(s.index);
  if (!v) return v.error();
  if ((*v)->state_ != Vring::State::stopped) return Errc::ring_busy;
  // Virtio spec 2.7 "Queue Size ... a power of 2", at most 32768 for a split ring.
  if (s.num == 0 || s.num > 32768 || !std::has_single_bit(s.num) || s.num > device_.max_queue_size()) {
    return Errc::bad_queue_size;
  }
  (*v)->num_ = static_cast<std::uint16_t>(s.num);
  return {};
}

Result<void> Session::set_vring_addr(const VringAddr& a) {
  auto v = ring(a.index);
  if (!v) return v.error();
  if ((a.flags & ~vring_flag_log) != 0) return Errc::bad_payload;
  if ((a.flags & vring_flag_log) != 0 && (acked_features_ & bit(log_all_bit)) == 0) {
    return Errc::feature_not_negotiated;
  }
  if ((*v)->state_ != Vring::State::stopped) return Errc::ring_busy;
  // Ring addresses are front-end virtual addresses: convert each once, here. The areas'
  // extent and alignment are checked by SplitQueue::create when the ring starts.
  auto desc = memory_.to_guest_phys(FrontendVirtAddr{a.desc_user_addr}, 1);
  auto avail = memory_.to_guest_phys(FrontendVirtAddr{a.avail_user_addr}, 1);
  auto used = memory_.to_guest_phys(FrontendVirtAddr{a.used_user_addr}, 1);
  if (!desc) return desc.error();
  if (!avail) return avail.error();
  if (!used) return used.error();
  (*v)->desc_ = *desc;
  (*v)->avail_ = *avail;
  (*v)->used_ = *used;
  return {};
}

Result<void> Session::set_vring_base(const VringState& s) {
  auto v = ring(s.index);
  if (!v) return v.error();
  if ((*v)->state_ != Vring::State::stopped) return Errc::ring_busy;
  // Split ring: bits 0-15 are the next avail index; the rest is for packed rings only.
  if (s.num > 0xffff) return Errc::bad_payload;
  (*v)->base_ = static_cast<std::uint16_t>(s.num);
  return {};
}

Result<VringState> Session::get_vring_base(const VringState& s) {
  auto v = ring(s.index);
  if (!v) return v.error();
  if ((*v)->state_ != Vring::State::stopped) stop(**v);
  return VringState{s.index, (*v)->base_};
}

Result<void> Session::set_vring_fd(Request request, const VringFd& f, std::vector<UniqueFd>& fds) {
  auto v = ring(f.index);
  if (!v) return v.error();
  UniqueFd fd = fds.empty() ? UniqueFd{} : std::move(fds.front());
  switch (request) {
    case Request::set_vring_call: (*v)->call_ = std::move(fd); return {};
    case Request::set_vring_err: (*v)->err_ = std::move(fd); return {};
    default: break;
  }
  // SET_VRING_KICK. Without an fd the back-end would have to poll the ring; no front-end
  // does that for vsock or rng, and a poller we do not have is worse than a clear refusal.
  if (f.no_fd) return Errc::not_supported;
  Vring& ring = **v;
  ring.kick_ = std::move(fd);
  if (ring.state_ == Vring::State::stopped) {
    if (auto ok = start(ring); !ok) {
      ring.kick_.reset();
      return ok;
    }
  }
  watcher_.watch_kick(ring.index_, ring.kick_.get());
  return {};
}

Result<void> Session::start(Vring& v) {
  if (v.num_ == 0) return Errc::bad_queue_size;
  if (!v.desc_ || !v.avail_ || !v.used_) return Errc::unmapped_ring;
  if (!memory_.snapshot()) return Errc::no_memory_table;
  const virtio::QueueConfig config{
      .size = v.num_,
      .desc = *v.desc_,
      .avail = *v.avail_,
      .used = *v.used_,
      .event_idx = (acked_features_ & bit(virtio::feature::event_idx)) != 0,
      .indirect = (acked_features_ & bit(virtio::feature::indirect_desc)) != 0,
      .notify_on_empty = (acked_features_ & bit(virtio::feature::notify_on_empty)) != 0,
      .next_avail = v.base_,
  };
  auto queue = virtio::SplitQueue::create(config, memory_.snapshot());
  if (!queue) return Errc::unmapped_ring;
  v.queue_.emplace(std::move(*queue));
  v.state_ = Vring::State::started;
  update_activity(v);
  return {};
}

void Session::stop(Vring& v) {
  if (v.announced_) {
    v.announced_ = false;
    device_.on_queue_stopped(v);
  }
  if (v.state_ == Vring::State::started) {
    // Spec GET_VRING_BASE: reply with the index of the first buffer not yet consumed, so
    // chains the device popped but never completed are offered again on the next start.
    v.queue_->rewind_in_flight();
    v.base_ = v.queue_->next_avail();
  }
  // A broken ring keeps the base it was configured with: its indices cannot be trusted.
  v.queue_.reset();
  v.state_ = Vring::State::stopped;
  v.kick_pending_ = false;
  watcher_.unwatch_kick(v.index_);
  v.kick_.reset();
}

Result<void> Session::set_vring_enable(const VringState& s) {
  auto v = ring(s.index);
  if (!v) return v.error();
  if (s.num > 1) return Errc::bad_payload;
  (*v)->enabled_ = s.num == 1;
  update_activity(**v);
  return {};
}

void Session::update_activity(Vring& v) {
  const bool active = v.state_ == Vring::State::started && v.enabled_;
  if (active && !v.announced_) {
    v.announced_ = true;
    device_.on_queue_started(v);
    // Buffers made available while the ring was disabled or stopped got no kick we could
    // act on: look now (spec: kicks are deferred, not dropped, while a ring is disabled).
    const bool pending = std::exchange(v.kick_pending_, false);
    if (v.state_ == Vring::State::started && (pending || v.queue_->has_available())) deliver_kick(v);
  } else if (!active && v.announced_ && v.state_ == Vring::State::started) {
    v.announced_ = false;
    device_.on_queue_stopped(v);
  }
}

void Session::kick(std::uint16_t index) {
  if (index >= vrings_.size()) return;
  Vring& v = vrings_[index];
  if (v.state_ != Vring::State::started) return;  // stopped or broken: nothing to do
  if (!v.announced_) {
    v.kick_pending_ = true;
    return;
  }
  deliver_kick(v);
}

void Session::deliver_kick(Vring& v) { device_.on_queue_kicked(v); }

Result<ConfigPayload> Session::get_config(const ConfigPayload& c) const {
  const std::vector<std::byte> space = device_.config_space();
  if (c.header.offset > space.size() || c.header.size > space.size() - c.header.offset) {
    return Errc::config_out_of_range;
  }
  const auto first = space.begin() + c.header.offset;
  return ConfigPayload{c.header, std::vector<std::byte>(first, first + c.header.size)};
}

Result<void> Session::set_config(const ConfigPayload& c) {
  const std::size_t size = device_.config_space().size();
  if (c.header.offset > size || c.header.size > size - c.header.offset) return Errc::config_out_of_range;
  return device_.write_config(c.header.offset, c.data);
}

Result<void> Session::set_status(std::uint64_t status) {
  if (status > 0xff) return Errc::bad_payload;  // the virtio device status is one byte
  // Status 0 also comes with a VM pause (QEMU's vhost_dev_stop), so it is recorded, not
  // taken as a device reset: rings are stopped by GET_VRING_BASE, not by the status.
  status_ = static_cast<std::uint8_t>(status);
  return {};
}

}  // namespace vhostuser
