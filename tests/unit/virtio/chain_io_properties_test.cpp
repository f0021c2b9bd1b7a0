// Property: however a driver cuts two byte streams into descriptors (direct, then possibly
// one indirect table; zero-length pieces; pieces straddling two touching regions), a device
// reads the readable stream and writes the writable stream byte for byte, whether it copies
// or goes through iovecs.
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include <algorithm>
#include <cstring>
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

// Region 0 holds the ring and the indirect table; data goes up to and across the boundary
// with region 1 (which touches region 0), and past the end of region 1 into region 2,
// beyond a gap.
constexpr std::uint64_t indirect_table = 0x1000;
constexpr std::uint64_t boundary = 0x10000;
constexpr std::uint64_t r1_end = 0x14000;
constexpr std::uint64_t r2 = 0x20000;
constexpr std::uint16_t q = 64;
constexpr std::size_t max_stream = 3000;
constexpr std::size_t max_cuts = 20;

std::vector<std::byte> random_bytes() {
  const auto raw = *rc::gen::container<std::vector<std::uint8_t>>(
      *rc::gen::inRange<std::size_t>(0, max_stream), rc::gen::arbitrary<std::uint8_t>());
  std::vector<std::byte> bytes(raw.size());
  std::transform(raw.begin(), raw.end(), bytes.begin(), [](std::uint8_t b) { return std::byte{b}; });
  return bytes;
}

/// Piece lengths of a stream of n bytes cut at random points (equal cuts: empty pieces).
std::vector<std::uint32_t> random_split(std::size_t n) {
  auto cuts = *rc::gen::container<std::vector<std::size_t>>(*rc::gen::inRange<std::size_t>(0, max_cuts),
                                                            rc::gen::inRange<std::size_t>(0, n + 1));
  cuts.push_back(0);
  cuts.push_back(n);
  std::sort(cuts.begin(), cuts.end());
  std::vector<std::uint32_t> lengths;
  for (std::size_t i = 1; i < cuts.size(); ++i)
    lengths.push_back(static_cast<std::uint32_t>(cuts[i] - cuts[i - 1]));
  return lengths;
}

/// Hands out disjoint guest ranges in address order with random gaps, starting just below
/// the region 0/1 boundary so that some piece usually straddles it.
class Placer {
 public:
  explicit Placer(std::uint64_t start) : next_(start) {}
  GuestPhysAddr place(std::uint32_t len) {
    next_ += *rc::gen::inRange<std::uint64_t>(0, 17);
    if (next_ < r2 && next_ + len > r1_end) next_ = r2;  // never across the gap
    const GuestPhysAddr at{next_};
    next_ += len;
    return at;
  }

 private:
  std::uint64_t next_;
};

/// Copies `n` bytes out of the reader, through read() or through peek_iovecs() + skip().
std::vector<std::byte> take(ChainReader& reader, std::size_t n, bool via_iovecs) {
  std::vector<std::byte> out(n);
  if (!via_iovecs) {
    RC_ASSERT(reader.read(out).has_value());
    return out;
  }
  boost::container::small_vector<iovec, 4> iov;
  const auto covered = reader.peek_iovecs(n, iov);
  RC_ASSERT(covered.has_value() && *covered == n);
  std::size_t at = 0;
  for (const iovec& v : iov) {
    std::memcpy(out.data() + at, v.iov_base, v.iov_len);
    at += v.iov_len;
  }
  RC_ASSERT(reader.skip(n).has_value());
  return out;
}

/// Stores `bytes` through the writer, through write() or through peek_iovecs() + commit().
void put(ChainWriter& writer, std::span<const std::byte> bytes, bool via_iovecs) {
  if (!via_iovecs) {
    RC_ASSERT(writer.write(bytes).has_value());
    return;
  }
  boost::container::small_vector<iovec, 4> iov;
  const auto covered = writer.peek_iovecs(bytes.size(), iov);
  RC_ASSERT(covered.has_value() && *covered == bytes.size());
  std::size_t at = 0;
  for (const iovec& v : iov) {
    std::memcpy(v.iov_base, bytes.data() + at, v.iov_len);
    at += v.iov_len;
  }
  RC_ASSERT(writer.commit(bytes.size()).has_value());
}

RC_GTEST_PROP(ChainIoProperty, StreamsSurviveAnyDescriptorLayout, ()) {
  GuestRam ram{{{0x0, boundary}, {boundary, r1_end - boundary}, {r2, 0x4000}}};
  DriverRing ring{ram, RingLayout::packed(GuestPhysAddr{0}, q, false)};

  const auto in = random_bytes();
  const auto out = random_bytes();

  // Lay out both streams: readable pieces first (2.7.4.2), then writable ones, starting
  // below the boundary of regions 0 and 1 or below the end of region 1 (then the later
  // pieces go to region 2).
  const auto anchor = *rc::gen::element(boundary, r1_end);
  Placer placer(anchor - *rc::gen::inRange<std::uint64_t>(0, max_stream));
  std::vector<BufferSpec> buffers;
  std::size_t at = 0;
  for (std::uint32_t len : random_split(in.size())) {
    buffers.push_back({placer.place(len), len, false});
    ram.write(buffers.back().addr, std::span(in).subspan(at, len));
    at += len;
  }
  for (std::uint32_t len : random_split(out.size())) buffers.push_back({placer.place(len), len, true});

  // The first `direct` pieces go in the descriptor table, the rest in one indirect table.
  const auto direct = *rc::gen::weightedOneOf<std::size_t>(
      {{1, rc::gen::just(buffers.size())}, {2, rc::gen::inRange<std::size_t>(0, buffers.size() + 1)}});
  const auto tail = std::span(buffers).subspan(direct);
  if (tail.empty()) {
    ring.write_chain(0, buffers);
  } else {
    const auto head_part = std::span(buffers).first(direct);
    if (!head_part.empty()) ring.write_chain(0, head_part);
    const auto pointer = static_cast<std::uint16_t>(direct);
    ring.write_indirect_chain(pointer, GuestPhysAddr{indirect_table}, tail);
    if (!head_part.empty()) {
      // Link the last direct descriptor to the one pointing at the table.
      const BufferSpec& last = head_part.back();
      const auto flags =
          static_cast<std::uint16_t>(VIRTQ_DESC_F_NEXT | (last.writable ? VIRTQ_DESC_F_WRITE : 0));
      ring.set_descriptor(static_cast<std::uint16_t>(pointer - 1),
                          DriverRing::descriptor(last.addr.raw(), last.len, flags, pointer));
    }
  }
  ring.offer(0);

  auto queue = SplitQueue::create(ring.queue_config(true), ram.memory());
  RC_ASSERT(queue.has_value());
  auto popped = queue->pop(1000);
  RC_ASSERT(popped.has_value() && popped->has_value());
  const DescriptorChain& chain = **popped;
  RC_ASSERT(chain.readable_bytes() == in.size());
  RC_ASSERT(chain.writable_bytes() == out.size());

  ChainReader reader(chain);
  std::vector<std::byte> got;
  while (reader.remaining() > 0) {
    const auto n = *rc::gen::inRange<std::size_t>(1, reader.remaining() + 1);
    const auto part = take(reader, n, *rc::gen::arbitrary<bool>());
    got.insert(got.end(), part.begin(), part.end());
  }
  RC_ASSERT(got == in);

  ChainWriter writer(chain);
  for (std::size_t done = 0; done < out.size();) {
    const auto n = *rc::gen::inRange<std::size_t>(1, out.size() - done + 1);
    put(writer, std::span(out).subspan(done, n), *rc::gen::arbitrary<bool>());
    done += n;
  }
  RC_ASSERT(writer.bytes_written() == out.size());
  RC_ASSERT(writer.remaining() == 0U);

  std::vector<std::byte> stored;
  for (const BufferSpec& b : buffers) {
    if (!b.writable) continue;
    const auto piece = ram.read(b.addr, b.len);
    stored.insert(stored.end(), piece.begin(), piece.end());
  }
  RC_ASSERT(stored == out);
}

}  // namespace
}  // namespace virtio
