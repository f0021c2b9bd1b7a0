#include "vsock/relay.hpp"

#include <algorithm>

#include <boost/container/small_vector.hpp>

#include "virtio/chain_io.hpp"

namespace vsock {

void RelaySlot::load(const Header& packet, virtio::DescriptorChain chain) {
  std::lock_guard lock(mutex_);
  header_ = packet;
  chain_ = std::move(chain);
  detached_.clear();
  sent_ = 0;
  detached_at_ = 0;
  done_ = false;
}

std::optional<RelaySlot::Delivery> RelaySlot::deliver(const virtio::DescriptorChain& rx, std::uint64_t receiver_cid) {
  bool finished = false;
  std::optional<Delivery> delivery;
  {
    std::lock_guard lock(mutex_);
    if (!header_ || done_ || header_->dst.cid != receiver_cid) return std::nullopt;
    if (rx.writable_bytes() < sizeof(WireHeader)) return Delivery{0, false};
    const std::uint32_t left = header_->len - sent_;
    const std::uint32_t n = std::min<std::uint32_t>(left, rx.writable_bytes() - sizeof(WireHeader));
    if (n == 0 && left > 0) return Delivery{0, false};

    Header fragment = *header_;
    fragment.len = n;
    const bool last = n == left;
    if (!last && fragment.type == static_cast<std::uint16_t>(Type::seqpacket)) {
      fragment.flags &= ~(seqpacket_flag::eom | seqpacket_flag::eor);
    }
    virtio::ChainWriter out(rx);
    (void)out.write_obj(encode(fragment));  // fits: checked above
    if (chain_) {
      // The one copy: sender's guest memory -> receiver's guest memory.
      virtio::ChainReader in(*chain_);
      (void)in.skip(sizeof(WireHeader) + sent_);  // within the chain: the device checked len
      boost::container::small_vector<iovec, 8> pieces;
      for (std::uint32_t copied = 0; copied < n;) {
        auto got = in.peek_iovecs(n - copied, pieces);
        if (!got || *got == 0) break;  // cannot happen: len was checked against the chain
        for (const iovec& piece : pieces) {
          (void)out.write({static_cast<const std::byte*>(piece.iov_base), piece.iov_len});
        }
        (void)in.skip(*got);
        copied += static_cast<std::uint32_t>(*got);
      }
    } else {
      (void)out.write(std::span(detached_).subspan(sent_ - detached_at_, n));
    }
    sent_ += n;
    if (last) finished = done_ = true;
    delivery = Delivery{static_cast<std::uint32_t>(sizeof(WireHeader) + n), last};
  }
  if (finished) finished_();
  return delivery;
}

void RelaySlot::abandon(std::uint64_t receiver_cid) {
  {
    std::lock_guard lock(mutex_);
    if (!header_ || done_ || header_->dst.cid != receiver_cid) return;
    done_ = true;
  }
  finished_();
}

std::optional<std::uint16_t> RelaySlot::clear() {
  std::optional<std::uint16_t> head;
  if (chain_) head = chain_->head();
  header_.reset();
  chain_.reset();
  detached_ = {};
  return head;
}

std::optional<std::uint16_t> RelaySlot::collect() {
  std::lock_guard lock(mutex_);
  if (!header_ || !done_) return std::nullopt;
  return clear();
}

std::optional<std::uint16_t> RelaySlot::detach() {
  std::lock_guard lock(mutex_);
  if (!header_) return std::nullopt;
  if (done_) return clear();
  if (!chain_) return std::nullopt;
  // The rest of the payload is copied out of the sender's memory, so the chain can go back.
  virtio::ChainReader in(*chain_);
  (void)in.skip(sizeof(WireHeader) + sent_);
  detached_.resize(header_->len - sent_);
  (void)in.read(detached_);
  detached_at_ = sent_;
  const std::uint16_t head = chain_->head();
  chain_.reset();
  return head;
}

std::optional<std::uint16_t> RelaySlot::drop() {
  std::lock_guard lock(mutex_);
  return clear();
}

bool RelaySlot::busy() const {
  std::lock_guard lock(mutex_);
  return header_.has_value();
}

std::uint64_t RelaySlot::destination() const {
  std::lock_guard lock(mutex_);
  return header_ ? header_->dst.cid : 0;
}

}  // namespace vsock
