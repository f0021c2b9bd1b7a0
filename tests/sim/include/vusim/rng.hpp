#pragma once
// The guest side of virtio-rng (virtio 1.2, 5.4): reading entropy through the request queue.
#include <chrono>
#include <cstdint>

#include "vusim/driver.hpp"
#include "vusim/failure.hpp"
#include "vusim/guest_ram.hpp"

namespace vusim {

struct EntropyStats {
  std::uint64_t bytes = 0;     ///< entropy bytes the device returned
  std::uint64_t requests = 0;  ///< buffers it returned
  std::chrono::nanoseconds elapsed{};

  [[nodiscard]] double bytes_per_second() const;
};

/// Reads at least `bytes` bytes of entropy through `queue` (which must have nothing
/// outstanding), keeping it full of
/// `buffer_size`-byte device-writable buffers and draining it before returning. Each
/// returned buffer is checked: the device must place at least one byte (5.4.6.1: "MUST
/// place one or more random bytes into the buffer"), and every whole 16-byte block of what
/// it claims to have written must not be all zero (buffers are zeroed before they are
/// posted, so a device that reports bytes it never wrote is caught; true random data has a
/// 2^-128 chance per block of failing).
Result<EntropyStats> read_entropy(Driver& queue, const GuestRam& ram, std::uint64_t bytes,
                                  std::uint32_t buffer_size, std::chrono::milliseconds timeout);

/// The check above for one buffer's data.
Result<void> check_random(std::span<const std::byte> data);

}  // namespace vusim
