#include "vusim/rng.hpp"

#include <algorithm>

#include <fmt/format.h>

namespace vusim {

double EntropyStats::bytes_per_second() const {
  const double seconds = std::chrono::duration<double>(elapsed).count();
  return seconds > 0 ? static_cast<double>(bytes) / seconds : 0.0;
}

Result<void> check_random(std::span<const std::byte> data) {
  constexpr std::size_t block = 16;
  for (std::size_t at = 0; at + block <= data.size(); at += block) {
    const auto chunk = data.subspan(at, block);
    if (std::all_of(chunk.begin(), chunk.end(), [](std::byte b) { return b == std::byte{0}; })) {
      return Failure{Fault::guest,
                     fmt::format("bytes {}..{} of a {}-byte entropy buffer are all zero: not written", at,
                                 at + block, data.size())};
    }
  }
  return {};
}

Result<EntropyStats> read_entropy(Driver& queue, const GuestRam& ram, std::uint64_t bytes,
                                  std::uint32_t buffer_size, std::chrono::milliseconds timeout) {
  if (buffer_size == 0) return Failure{Fault::usage, "entropy buffers need at least one byte"};
  if (queue.outstanding() > 0)
    return Failure{Fault::usage, "read_entropy needs a queue with nothing outstanding"};
  const auto begin = std::chrono::steady_clock::now();
  EntropyStats stats;
  std::uint64_t posted = 0;  // capacity of the buffers outstanding
  const auto consume = [&](std::vector<Completion> done) -> Result<void> {
    for (const auto& c : done) {
      if (c.len == 0) {
        return Failure{Fault::guest, fmt::format("vring {}: head {} returned with no entropy (5.4.6.1)",
                                                 queue.options().index, c.head)};
      }
      auto data = c.written(ram);
      if (!data) return data.error();
      if (auto ok = check_random(*data); !ok) return ok;
      stats.bytes += c.len;
      ++stats.requests;
      posted -= c.writable_capacity;
    }
    return {};
  };

  while (stats.bytes < bytes) {
    while (queue.free_descriptors() > 0 && stats.bytes + posted < bytes) {
      if (auto head = queue.add({.segments = {{.len = buffer_size}}}); !head) return head.error();
      posted += buffer_size;
    }
    if (auto kicked = queue.kick(); !kicked) return kicked.error();
    auto done = queue.wait_used(1, timeout);
    if (!done) return done.error();
    if (auto ok = consume(std::move(*done)); !ok) return ok.error();
  }
  // Leave no buffer behind: a device that returned short buffers left some outstanding.
  if (queue.outstanding() > 0) {
    auto done = queue.wait_used(queue.outstanding(), timeout);
    if (!done) return done.error();
    if (auto ok = consume(std::move(*done)); !ok) return ok.error();
  }
  stats.elapsed = std::chrono::steady_clock::now() - begin;
  return stats;
}

}  // namespace vusim
