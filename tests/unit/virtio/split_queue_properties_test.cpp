// Properties of SplitQueue: index arithmetic against a model of the driver across u16 wrap,
// and robustness against arbitrary ring memory.
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <deque>
#include <vector>

#include "driver_ring.hpp"
#include "virtio/chain_io.hpp"
#include "virtio/split_queue.hpp"

namespace virtio {
namespace {

using test::BufferSpec;
using test::DriverRing;
using test::GuestRam;
using test::RingLayout;

constexpr std::uint64_t data = 0x8000;

std::uint16_t random_queue_size(int max_log2) {
  return static_cast<std::uint16_t>(1U << *rc::gen::inRange(0, max_log2 + 1));
}

/// A start index anywhere, or close enough to 65535 that the run wraps.
std::uint16_t random_start_index() {
  return *rc::gen::oneOf(
      rc::gen::arbitrary<std::uint16_t>(),
      rc::gen::map(rc::gen::inRange(65400, 65536), [](int v) { return static_cast<std::uint16_t>(v); }));
}

RC_GTEST_PROP(SplitQueueProperty, IndicesFollowTheDriverModelAcrossWrap, ()) {
  const std::uint16_t q = random_queue_size(5);
  const std::uint16_t start = random_start_index();
  GuestRam ram{{{0x0, 0x10000}}};
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};
  ring.set_used_idx(start);
  ring.set_avail_idx(start);
  auto queue = SplitQueue::create(ring.queue_config(false, false, start), ram.memory());
  RC_ASSERT(queue.has_value());

  // The driver's view: free descriptors, offered entries the device has not popped, chains
  // the device holds (with the avail index they were popped from, in pop order), and used
  // entries the driver has not reaped.
  struct Popped {
    std::uint16_t avail_index;
    std::uint16_t head;
  };
  std::vector<std::uint16_t> free_heads;
  for (std::uint16_t h = 0; h < q; ++h) free_heads.push_back(h);
  std::deque<std::uint16_t> offered;
  std::vector<Popped> held;
  std::deque<DriverRing::Used> published;
  std::uint16_t next_avail = start;
  std::uint16_t next_used = start;

  const int steps = *rc::gen::inRange(0, 400);
  for (int step = 0; step < steps; ++step) {
    switch (*rc::gen::inRange(0, 5)) {
      case 0: {  // driver offers a one-buffer chain
        if (free_heads.empty()) break;
        const auto k = *rc::gen::inRange<std::size_t>(0, free_heads.size());
        const std::uint16_t head = free_heads[k];
        free_heads.erase(free_heads.begin() + static_cast<std::ptrdiff_t>(k));
        const BufferSpec b{GuestPhysAddr{data + 0x10ULL * head}, head + 1U, true};
        ring.write_chain(head, std::span(&b, 1));
        ring.offer(head);
        offered.push_back(head);
        break;
      }
      case 1: {  // device pops
        auto popped = queue->pop();
        RC_ASSERT(popped.has_value());
        if (offered.empty()) {
          RC_ASSERT(!popped->has_value());
          break;
        }
        RC_ASSERT(popped->has_value());
        RC_ASSERT((*popped)->head() == offered.front());
        held.push_back({next_avail++, offered.front()});
        offered.pop_front();
        break;
      }
      case 2: {  // device completes any chain it holds
        if (held.empty()) break;
        const auto k = *rc::gen::inRange<std::size_t>(0, held.size());
        const std::uint16_t head = held[k].head;
        const auto len = *rc::gen::inRange<std::uint32_t>(0, head + 2U);
        RC_ASSERT(queue->push(head, len).has_value());
        held.erase(held.begin() + static_cast<std::ptrdiff_t>(k));
        published.push_back({head, len});
        ++next_used;
        break;
      }
      case 3: {  // driver reaps
        const auto used = ring.take_used();
        if (published.empty()) {
          RC_ASSERT(!used.has_value());
          break;
        }
        RC_ASSERT(used.has_value());
        RC_ASSERT(used->id == published.front().id);
        RC_ASSERT(used->len == published.front().len);
        free_heads.push_back(static_cast<std::uint16_t>(used->id));
        published.pop_front();
        break;
      }
      case 4: {  // device rewinds, valid when the chains it holds are the last ones popped
        bool last_popped = true;
        for (std::size_t i = 0; i < held.size(); ++i) {
          last_popped =
              last_popped && held[i].avail_index == static_cast<std::uint16_t>(next_avail - held.size() + i);
        }
        if (!last_popped) break;
        queue->rewind_in_flight();
        for (auto it = held.rbegin(); it != held.rend(); ++it) offered.push_front(it->head);
        next_avail = static_cast<std::uint16_t>(next_avail - held.size());
        held.clear();
        break;
      }
    }
    RC_ASSERT(queue->next_avail() == next_avail);
    RC_ASSERT(queue->next_used() == next_used);
    RC_ASSERT(queue->in_flight() == held.size());
    RC_ASSERT(ring.used_idx() == next_used);
    RC_ASSERT(queue->has_available() == !offered.empty());
  }
}

// Guest RAM for arbitrary rings: regions 0 and 1 touch, region 2 lies beyond a gap. Region 1
// starts with a pool of well-formed-looking descriptors that indirect tables point into.
constexpr std::uint64_t noise_end = 0x3000;
constexpr std::uint64_t descriptor_pool = 0x2000;
constexpr std::uint16_t pool_entries = 64;
constexpr std::uint64_t far_region = 0x10000;

template <class T>
rc::Gen<T> narrow(int min, int max) {
  return rc::gen::map(rc::gen::inRange(min, max), [](int v) { return static_cast<T>(v); });
}

/// A descriptor whose fields are usually plausible (mapped addresses, small lengths, known
/// flags, in-range next) so walks get deep before they fail, but can be anything.
Descriptor random_descriptor(std::uint16_t table_size) {
  using namespace rc;
  const auto addr = *gen::weightedOneOf<std::uint64_t>({
      {1, gen::arbitrary<std::uint64_t>()},
      {4, gen::inRange<std::uint64_t>(0, noise_end)},
      {1, gen::inRange<std::uint64_t>(far_region, far_region + 0x1000)},
      {2,
       gen::map(gen::inRange(0, int{pool_entries}),
                [](int i) { return descriptor_pool + std::uint64_t{16} * static_cast<std::uint64_t>(i); })},
  });
  const auto len = *gen::weightedOneOf<std::uint32_t>({
      {1, gen::arbitrary<std::uint32_t>()},
      {4, gen::inRange<std::uint32_t>(0, 0x200)},
      {2, gen::map(gen::inRange(1, 8), [](int n) { return 16U * n; })},
  });
  const auto flags = *gen::weightedOneOf<std::uint16_t>(
      {{1, gen::arbitrary<std::uint16_t>()}, {6, narrow<std::uint16_t>(0, 8)}});
  const auto next = *gen::weightedOneOf<std::uint16_t>(
      {{1, gen::arbitrary<std::uint16_t>()}, {6, narrow<std::uint16_t>(0, table_size)}});
  return DriverRing::descriptor(addr, len, flags, next);
}

RC_GTEST_PROP(SplitQueueProperty, ArbitraryRingMemoryYieldsChainsOrErrors, ()) {
  const std::uint16_t q = random_queue_size(6);
  const bool event_idx = *rc::gen::arbitrary<bool>();
  GuestRam ram{{{0x0, 0x2000}, {0x2000, noise_end - 0x2000}, {far_region, 0x1000}}};
  const auto noise =
      *rc::gen::container<std::vector<std::uint8_t>>(noise_end, rc::gen::arbitrary<std::uint8_t>());
  ram.write(GuestPhysAddr{0}, std::as_bytes(std::span(noise)));
  for (std::uint16_t i = 0; i < pool_entries; ++i) {
    ram.write_obj(GuestPhysAddr{descriptor_pool + 16ULL * i}, random_descriptor(8));
  }

  const auto layout = RingLayout::packed(GuestPhysAddr{0}, q, event_idx);
  DriverRing ring{ram, layout};  // zeroes the ring areas; refill them below
  for (std::uint16_t i = 0; i < q; ++i) ring.set_descriptor(i, random_descriptor(q));
  const auto next_avail = *rc::gen::arbitrary<std::uint16_t>();
  ring.set_avail_idx(*rc::gen::weightedOneOf<std::uint16_t>(
      {{1, rc::gen::arbitrary<std::uint16_t>()}, {6, rc::gen::map(rc::gen::inRange(1, q + 1), [&](int n) {
                                                    return static_cast<std::uint16_t>(next_avail + n);
                                                  })}}));
  for (std::uint16_t slot = 0; slot < q; ++slot) {
    ring.set_avail_entry(slot,
                         *rc::gen::weightedOneOf<std::uint16_t>(
                             {{1, rc::gen::arbitrary<std::uint16_t>()}, {6, narrow<std::uint16_t>(0, q)}}));
  }
  ring.set_used_idx(*rc::gen::arbitrary<std::uint16_t>());
  if (event_idx) ring.set_used_event(*rc::gen::arbitrary<std::uint16_t>());
  ring.set_avail_flags(*rc::gen::arbitrary<std::uint16_t>());

  const QueueConfig config =
      ring.queue_config(*rc::gen::arbitrary<bool>(), *rc::gen::arbitrary<bool>(), next_avail);
  auto queue = SplitQueue::create(config, ram.memory());
  RC_ASSERT(queue.has_value());

  const std::vector<std::byte> fill(0x400, std::byte{0xa5});
  int chains = 0;
  for (int round = 0; round < 2 * q + 4; ++round) {
    if (*rc::gen::arbitrary<bool>()) queue->disable_notifications();
    const unsigned max_descriptors = *rc::gen::inRange(1U, 2U * q + 1);
    auto popped = queue->pop(max_descriptors);
    if (!popped || !*popped) break;  // broken ring (the device stops) or empty ring
    ++chains;
    const DescriptorChain& chain = **popped;
    RC_ASSERT(chain.head() < q);
    RC_ASSERT(chain.buffers().size() <= max_descriptors);
    RC_ASSERT(std::uint64_t{chain.readable_bytes()} + chain.writable_bytes() <= UINT32_MAX);
    for (const ChainBuffer& b : chain.readable_buffers()) RC_ASSERT(!b.device_writable);
    for (const ChainBuffer& b : chain.writable_buffers()) RC_ASSERT(b.device_writable);

    ChainReader reader(chain);
    std::vector<std::byte> sink(reader.remaining());
    RC_ASSERT(reader.read(sink).has_value());
    ChainWriter writer(chain);
    while (writer.remaining() > 0) {
      RC_ASSERT(writer.write(std::span(fill).first(std::min(fill.size(), writer.remaining()))).has_value());
    }
    RC_ASSERT(queue->push(chain.head(), static_cast<std::uint32_t>(writer.bytes_written())).has_value());
    static_cast<void>(queue->needs_notification());
    if (*rc::gen::arbitrary<bool>()) static_cast<void>(queue->enable_notifications());
  }
  RC_CLASSIFY(chains > 0, "popped chains");  // shows the property is not vacuous
}

}  // namespace
}  // namespace virtio
