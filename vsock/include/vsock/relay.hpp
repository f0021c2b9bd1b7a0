#pragma once
// One guest packet on its way to a sibling VM: the sibling router's data path.
//
// The payload is copied once, straight from the sender's tx descriptors into the receiver's
// rx descriptors, cut to the receiver's buffer sizes. Until its last byte is copied the
// sender's tx chain stays out of the sender's used ring, and the sender takes no further
// chain: that is the backpressure (the sender's tx queue is left unconsumed while the
// receiver posts no rx buffers), and it bounds what is in flight to one packet per sender,
// so nothing grows with what either guest does.
//
// The daemon is no endpoint of a sibling connection: the header goes across as the sender
// wrote it (credit runs end to end between the two guests). Only `len` changes, to the
// fragment's size, and for SEQPACKET the EOM/EOR flags stay on the last fragment only
// (spec 5.10.6.4.1), as for the daemon's own packets.
//
// Sender and receiver run on different worker threads; the slot is the one thing they
// share, under its mutex. Each sender owns one slot for its life:
//  - sender:   load() a routed tx chain, then offer the slot to the receiver;
//  - receiver: deliver() fragments into its rx buffers; on the last one, finished() runs
//              (it tells the sender, on the sender's thread, to collect());
//  - sender:   collect() returns the chain's head for the used ring and frees the slot.
// When the sender must stop using its tx ring while a packet is still on its way (the
// front-end stops the ring, e.g. a VM pause), detach() copies what is left into the slot
// (the only second copy, and only then) and gives the chain back at once; the receiver
// carries on from the copy. abandon() ends a packet whose receiver is going away, or whose
// sender's guest is gone while its tx ring may still run (the chain goes back through
// collect() as for a delivered packet); drop() ends one whose sender is going away.
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <vector>

#include "virtio/descriptor_chain.hpp"
#include "vsock/packet.hpp"

namespace vsock {

class RelaySlot {
 public:
  /// `finished` is called (on the thread that ended it, outside the lock) when a packet is
  /// done with, delivered or abandoned: the sender must collect().
  explicit RelaySlot(std::function<void()> finished) : finished_(std::move(finished)) {}
  RelaySlot(const RelaySlot&) = delete;
  RelaySlot& operator=(const RelaySlot&) = delete;

  /// Sender: takes a packet whose header is the first 44 readable bytes of `chain` and whose
  /// `packet.len` payload bytes follow (the device checked both). The slot must be free.
  void load(const Header& packet, virtio::DescriptorChain chain);

  /// Receiver `receiver_cid`: writes the next fragment (header, then as much payload as `rx`
  /// holds) and returns the used length (44 + fragment), or nothing if the slot holds
  /// nothing for this receiver any more (dropped, delivered, or reloaded with a packet for
  /// another VM since it was offered). A buffer too small for a header, or one that holds
  /// only a header while payload remains, is returned with length 0: an empty RW is no
  /// packet (Linux drops used buffers shorter than a header).
  struct Delivery {
    std::uint32_t used_len;
    bool last;  ///< the packet is done with: the receiver drops the slot from its queue
  };
  std::optional<Delivery> deliver(const virtio::DescriptorChain& rx, std::uint64_t receiver_cid);

  /// The packet will not be delivered to `receiver_cid` (the receiver's guest is gone, or
  /// the sender's): finished() runs as after the last fragment. Nothing happens if the slot
  /// holds no packet for this receiver.
  void abandon(std::uint64_t receiver_cid);

  /// Sender: after finished(), frees the slot; returns the head of the tx chain to push to
  /// the used ring, unless detach() already returned it.
  std::optional<std::uint16_t> collect();
  /// Sender: stops holding the tx chain (the ring stops); see the file comment. Returns the
  /// head to push now, if a chain was held.
  std::optional<std::uint16_t> detach();
  /// Sender: ends the packet wherever it is (the sender's guest is gone, or the route died);
  /// returns the head of a held chain.
  std::optional<std::uint16_t> drop();

  /// Between load() and collect()/drop().
  [[nodiscard]] bool busy() const;
  /// The destination CID of the packet in the slot (0 when free).
  [[nodiscard]] std::uint64_t destination() const;

 private:
  /// Frees the slot; returns a held chain's head. Lock held.
  std::optional<std::uint16_t> clear();

  mutable std::mutex mutex_;
  std::function<void()> finished_;
  std::optional<Header> header_;
  std::optional<virtio::DescriptorChain> chain_;  // the sender's, keeping its memory mapped
  std::vector<std::byte> detached_;               // the rest of the payload after detach()
  std::uint32_t sent_ = 0;                        // payload bytes delivered so far
  std::uint32_t detached_at_ = 0;                 // payload offset of detached_[0]
  bool done_ = false;                             // delivered or abandoned
};

}  // namespace vsock
