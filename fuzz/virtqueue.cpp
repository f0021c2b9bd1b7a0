// Fuzz target: the device side of a split virtqueue over hostile guest memory.
//
// Input layout:
//   byte 0     bit 0 EVENT_IDX, bit 1 INDIRECT_DESC, bit 2 NOTIFY_ON_EMPTY,
//              bit 3 region B touches region A (else it lies beyond a gap),
//              bits 4-7 log2 of the queue size (taken mod 12: 1..2048)
//   bytes 1-2  next_avail (SET_VRING_BASE), little-endian
//   byte 3     max descriptors per chain (0: the default, the queue size)
//   byte 4     bit 0 hold popped chains and push them at the end in reverse order,
//              bit 1 after the first chain, rewind the chains in flight (pop them again),
//              bit 2 after the first chain, switch to a snapshot without region B,
//              bit 3 after the first chain, try a snapshot without region A (rings unmapped),
//              bit 4 drain with kicks off (disable/enable loop) instead of popping until empty
//   rest       guest memory image: region A (64 KiB at GPA 0), then region B (64 KiB)
// The rings sit at the start of region A, avail ring first so that short inputs control
// avail->idx and the ring entries: avail ring, used ring, descriptor table, each aligned.
// The device pops until the ring is empty or broken, reads and fills each chain (up to 64 KiB
// each way) and pushes it, as a device would. Nothing here may crash or hang.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fuzz_target.hpp"
#include "virtio/chain_io.hpp"
#include "virtio/ring.hpp"
#include "virtio/split_queue.hpp"

namespace {

using namespace virtio;

constexpr std::size_t header_size = 5;
constexpr std::uint64_t region_size = 0x10000;

std::uint64_t align_up(std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; }

/// Reads and writes a chain the way a device would, through both stream interfaces. Chains
/// can reuse one buffer many times over; 64 KiB each way crosses every boundary an input
/// can describe without spending the fuzzer's time on bulk copies.
std::uint32_t process(const DescriptorChain& chain) {
  static std::byte scratch[0x1000];
  constexpr int max_chunks = 16;
  ChainReader reader(chain);
  boost::container::small_vector<iovec, 8> iov;
  if (auto covered = reader.peek_iovecs(sizeof scratch, iov); covered) {
    static_cast<void>(reader.skip(*covered / 2));
  }
  for (int i = 0; i < max_chunks && reader.remaining() > 0; ++i) {
    if (!reader.read(std::span(scratch).first(std::min(sizeof scratch, reader.remaining())))) break;
  }
  static_cast<void>(reader.skip(reader.remaining()));
  ChainWriter writer(chain);
  if (auto covered = writer.peek_iovecs(64, iov); covered) {
    for (const iovec& v : iov) std::memset(v.iov_base, 0x5a, v.iov_len);
    static_cast<void>(writer.commit(*covered));
  }
  for (int i = 0; i < max_chunks && writer.remaining() > 0; ++i) {
    if (!writer.write(std::span(scratch).first(std::min(sizeof scratch, writer.remaining())))) break;
  }
  return static_cast<std::uint32_t>(writer.bytes_written());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < header_size) return 0;
  const std::uint8_t flags = data[0];
  const bool event_idx = (flags & 1) != 0;
  const auto queue_size = static_cast<std::uint16_t>(1U << ((flags >> 4) % 12));
  const auto next_avail = static_cast<std::uint16_t>(data[1] | (data[2] << 8));
  const bool hold = (data[4] & 1) != 0;
  const bool rewind = (data[4] & 2) != 0;
  const bool drop_b = (data[4] & 4) != 0;
  const bool drop_a = (data[4] & 8) != 0;
  const bool batch = (data[4] & 16) != 0;

  // Guest RAM: the image fills region A, then region B. The storage is reused across runs
  // (a fresh 128 KiB per run would dominate the fuzzer's time); it outlives every snapshot.
  static std::vector<std::byte> a(region_size);
  static std::vector<std::byte> b(region_size);
  std::fill(a.begin(), a.end(), std::byte{0});
  std::fill(b.begin(), b.end(), std::byte{0});
  const std::size_t image = size - header_size;
  std::memcpy(a.data(), data + header_size, std::min<std::size_t>(image, region_size));
  if (image > region_size) {
    std::memcpy(b.data(), data + header_size + region_size,
                std::min<std::size_t>(image - region_size, region_size));
  }
  const std::uint64_t b_base = (flags & 8) != 0 ? region_size : 3 * region_size;
  const MemoryRegion region_a{GuestPhysAddr{0}, std::span(a), nullptr};
  const MemoryRegion region_b{GuestPhysAddr{b_base}, std::span(b), nullptr};
  auto both = GuestMemory::create({region_a, region_b});
  auto only_a = GuestMemory::create({region_a});
  auto only_b = GuestMemory::create({region_b});
  if (!both || !only_a || !only_b) return 0;

  const std::uint64_t avail = 0;
  const std::uint64_t used = align_up(avail + avail_ring_area(queue_size, event_idx).size, 4);
  const std::uint64_t desc = align_up(used + used_ring_area(queue_size, event_idx).size, 16);
  const QueueConfig config{queue_size, GuestPhysAddr{desc}, GuestPhysAddr{avail}, GuestPhysAddr{used},
                           event_idx,  (flags & 2) != 0,    (flags & 4) != 0,     next_avail};
  auto queue = SplitQueue::create(config, *both);
  if (!queue) return 0;

  std::vector<std::pair<std::uint16_t, std::uint32_t>> held;
  bool first_chain = true;
  for (unsigned round = 0; round < 2U * queue_size + 4; ++round) {
    if (batch) queue->disable_notifications();
    auto popped = data[3] == 0 ? queue->pop() : queue->pop(data[3]);
    if (!popped) break;  // broken ring: a device stops here
    if (!*popped) {
      if (batch && queue->enable_notifications()) continue;
      break;
    }
    const DescriptorChain& chain = **popped;
    const std::uint32_t written = process(chain);
    if (hold) {
      held.emplace_back(chain.head(), written);
    } else {
      static_cast<void>(queue->push(chain.head(), written));
      static_cast<void>(queue->needs_notification());
    }
    if (first_chain) {
      first_chain = false;
      if (drop_b) static_cast<void>(queue->update_memory(*only_a));
      if (drop_a) static_cast<void>(queue->update_memory(*only_b));
      if (rewind) queue->rewind_in_flight();
    }
  }
  for (auto it = held.rbegin(); it != held.rend(); ++it) {
    static_cast<void>(queue->push(it->first, it->second));
  }
  static_cast<void>(queue->needs_notification());
  return 0;
}
