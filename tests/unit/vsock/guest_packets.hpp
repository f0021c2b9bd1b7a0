#pragma once
// Guest-side packets in test guest memory: tx chains the driver would post (header and
// payload over any descriptor split) and rx chains of given buffer sizes, read back after
// the device filled them.
#include <numeric>
#include <stdexcept>
#include <vector>

#include "driver_ring.hpp"
#include "virtio/chain_io.hpp"
#include "virtio/descriptor_chain.hpp"
#include "vsock/packet.hpp"

namespace vsock::test {

using virtio::GuestPhysAddr;

class GuestPackets {
 public:
  static constexpr std::uint64_t ram_size = 4 << 20;

  GuestPackets() : ram_({{0, ram_size}}), ring_(ram_, virtio::test::RingLayout::packed(GuestPhysAddr{0}, 256, false)) {}

  /// A tx chain carrying `header` and `payload`, cut into descriptors of `split` bytes (the
  /// last one takes the rest). `split` empty: one descriptor for everything.
  virtio::DescriptorChain tx(const Header& header, std::span<const std::byte> payload,
                             const std::vector<std::uint32_t>& split = {}) {
    std::vector<std::byte> bytes(sizeof(WireHeader) + payload.size());
    const WireHeader wire = encode(header);
    std::memcpy(bytes.data(), &wire, sizeof wire);
    std::copy(payload.begin(), payload.end(), bytes.begin() + sizeof wire);
    std::vector<std::uint32_t> sizes = split;
    const std::uint64_t used = std::accumulate(sizes.begin(), sizes.end(), std::uint64_t{0});
    if (used > bytes.size()) throw std::logic_error("split longer than the packet");
    if (used < bytes.size()) sizes.push_back(static_cast<std::uint32_t>(bytes.size() - used));
    return chain(bytes, sizes, false);
  }

  /// An rx chain of writable buffers of `sizes` bytes.
  virtio::DescriptorChain rx(const std::vector<std::uint32_t>& sizes) {
    const auto total = std::accumulate(sizes.begin(), sizes.end(), std::size_t{0});
    return chain(std::vector<std::byte>(total), sizes, true);
  }

  /// The packet the device wrote into `rx` (`used` bytes): header and payload.
  std::pair<Header, std::vector<std::byte>> read_rx(const virtio::DescriptorChain& rx, std::uint32_t used) {
    std::vector<std::byte> bytes(used);
    std::size_t off = 0;
    for (const auto& b : rx.writable_buffers()) {
      const std::size_t n = std::min<std::size_t>(b.len, used - off);
      ram_.read(b.addr, {bytes.data() + off, n});
      off += n;
      if (off == used) break;
    }
    WireHeader wire;
    std::memcpy(&wire, bytes.data(), sizeof wire);
    return {decode(wire), std::vector<std::byte>(bytes.begin() + sizeof wire, bytes.end())};
  }

 private:
  virtio::DescriptorChain chain(const std::vector<std::byte>& bytes, const std::vector<std::uint32_t>& sizes,
                                bool writable) {
    std::vector<virtio::test::BufferSpec> buffers;
    std::size_t off = 0;
    for (std::uint32_t size : sizes) {
      // Each buffer in its own spot, 64 bytes apart, so no two descriptors are contiguous.
      const GuestPhysAddr addr{next_ + 64};
      next_ = addr.raw() + size;
      ram_.write(addr, {bytes.data() + off, size});
      off += size;
      buffers.push_back({addr, size, writable});
    }
    if (next_ > ram_size - (1 << 20)) next_ = 0x10000;  // recycle: tests hold few chains at once
    const std::uint16_t head = ring_.write_chain(0, buffers);
    auto walked = virtio::DescriptorChain::walk(ram_.memory(), ring_.layout().desc, head,
                                                virtio::ChainRules{.queue_size = 256, .indirect = false, .max_descriptors = 256});
    if (!walked) throw std::logic_error("test chain invalid: " + walked.error().message());
    return std::move(*walked);
  }

  virtio::test::GuestRam ram_;
  virtio::test::DriverRing ring_;
  std::uint64_t next_ = 0x10000;
};

}  // namespace vsock::test
