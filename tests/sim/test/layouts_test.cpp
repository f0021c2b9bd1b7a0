// Property: whatever shape the guest gives its request buffers (any number of descriptors,
// zero-length ones, an indirect table for all or part of the chain, a buffer straddling two
// memory regions), the rng backend fills exactly what it reports, and the ring stays sound.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include "rc_require.hpp"
#include "backend_fixture.hpp"
#include "rng_device.hpp"
#include "virtio/ring.hpp"
#include "vusim/rng.hpp"
#include "vusim/sequences.hpp"

namespace vusim {
namespace {

using namespace std::chrono_literals;
using vhostuser::bit;

constexpr std::uint64_t mib = 1 << 20;
constexpr std::uint16_t queue_size = 16;

/// One chain's shape, drawn inside the property so rapidcheck can shrink it.
struct GenChain {
  std::vector<std::uint32_t> lens;
  std::optional<std::size_t> indirect_from;
  std::optional<std::size_t> straddle;  ///< segment placed across the region boundary
};

GenChain draw_chain() {
  GenChain g;
  const auto n = *rc::gen::inRange<std::size_t>(1, 7);
  g.lens = *rc::gen::container<std::vector<std::uint32_t>>(
      n, rc::gen::weightedOneOf<std::uint32_t>({{1, rc::gen::just<std::uint32_t>(0)},
                                                {6, rc::gen::inRange<std::uint32_t>(1, 9000)},
                                                {1, rc::gen::inRange<std::uint32_t>(60000, 70000)}}));
  if (*rc::gen::arbitrary<bool>()) g.indirect_from = *rc::gen::inRange<std::size_t>(0, n);
  if (*rc::gen::inRange(0, 4) == 0) g.straddle = *rc::gen::inRange<std::size_t>(0, n);
  return g;
}

using test::require;

RC_GTEST_PROP(RandomLayouts, RngFillsEveryChainShapeItReports, ()) {
  std::vector<GenChain> chains(*rc::gen::inRange<std::size_t>(1, 40));
  for (auto& c : chains) c = draw_chain();
  const Sequence& sequence = all_sequences()[*rc::gen::inRange<std::size_t>(0, all_sequences().size())];
  const Backing backing = *rc::gen::element(Backing::memfd_per_region, Backing::one_memfd);

  rng::RngDevice device;
  test::Backend backend(device);
  auto ram = require(GuestRam::contiguous(4 * mib, 2, backing), "guest RAM");
  DeviceModel model = DeviceModel::rng();
  model.queue_size = queue_size;
  if (!*rc::gen::arbitrary<bool>()) model.driver_features &= ~bit(virtio::feature::event_idx);
  VhostDev dev(model, ram);
  auto fe = require(Frontend::connect(backend.socket(), {.timeout = 5000ms, .trace = {}}), "connect");
  require(sequence.realize(fe, dev), "realize");
  require(sequence.start(fe, dev, {}), "start");
  RC_ASSERT(dev.drivers[0].options().indirect);
  Driver& q = dev.drivers[0];

  std::uint64_t reported = 0;
  bool straddling_in_flight = false;
  bool any_indirect = false, any_straddle = false, any_empty = false;
  const auto drain = [&] {
    require(q.kick(), "kick");
    for (const Completion& c : require(q.wait_used(q.outstanding(), 5s), "wait_used")) {
      // RngDevice fills whole buffers, up to its per-buffer cap.
      RC_ASSERT(c.len == std::min<std::uint64_t>(c.writable_capacity, rng::RngDevice::max_bytes_per_buffer));
      require(check_random(require(c.written(ram), "read back")), "entropy");
      reported += c.len;
    }
    straddling_in_flight = false;
  };

  for (const GenChain& g : chains) {
    ChainLayout layout{.segments = {}, .indirect_from = g.indirect_from};
    for (std::size_t i = 0; i < g.lens.size(); ++i) {
      // Only one buffer can cross the one region boundary at a time; it needs 2 bytes.
      const bool straddle = g.straddle == i && g.lens[i] >= 2;
      layout.segments.push_back({.len = g.lens[i], .writable = true, .straddle = straddle});
    }
    const bool wants_straddle = std::any_of(layout.segments.begin(), layout.segments.end(),
                                            [](const Segment& s) { return s.straddle; });
    const std::size_t ring_entries = g.indirect_from ? *g.indirect_from + 1 : g.lens.size();
    if (q.free_descriptors() < ring_entries || (wants_straddle && straddling_in_flight)) drain();
    any_indirect = any_indirect || g.indirect_from.has_value();
    any_straddle = any_straddle || wants_straddle;
    any_empty = any_empty || std::count(g.lens.begin(), g.lens.end(), 0U) > 0;
    require(q.add(layout), "add");
    straddling_in_flight = straddling_in_flight || wants_straddle;
  }
  drain();
  RC_CLASSIFY(any_indirect, "indirect tables");
  RC_CLASSIFY(any_straddle, "buffers across regions");
  RC_CLASSIFY(any_empty, "zero-length buffers");
  RC_ASSERT(backend.on_backend([&] { return device.bytes_served(); }) == reported);

  const auto bases = require(sequence.stop(fe, dev), "stop");
  RC_ASSERT(bases.at(0) == q.avail_idx());
  require(fe.disconnect(), "disconnect");
}

}  // namespace
}  // namespace vusim
