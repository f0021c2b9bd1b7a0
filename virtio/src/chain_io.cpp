#include "virtio/chain_io.hpp"

#include <cstring>
#include <numeric>

namespace virtio {
namespace detail {

BufferCursor::BufferCursor(const GuestMemory& memory, std::span<const ChainBuffer> buffers)
    : memory_(&memory),
      buffers_(buffers),
      remaining_(std::accumulate(buffers.begin(), buffers.end(), std::size_t{0},
                                 [](std::size_t sum, const ChainBuffer& b) { return sum + b.len; })) {}

Result<std::size_t> BufferCursor::peek_iovecs(std::size_t max_bytes, IovecVector& out) const {
  out.clear();
  std::size_t covered = 0;
  auto collected = for_each_span(std::min(max_bytes, remaining_), [&](std::span<std::byte> piece) {
    if (out.size() == max_iovecs) return;
    out.push_back(iovec{piece.data(), piece.size()});
    covered += piece.size();
  });
  if (!collected) return collected.error();
  return covered;
}

void BufferCursor::advance(std::size_t n) {
  remaining_ -= n;
  consumed_ += n;
  while (n > 0) {
    const std::size_t left_in_buffer = buffers_[index_].len - offset_;
    if (n < left_in_buffer) {
      offset_ += static_cast<std::uint32_t>(n);
      return;
    }
    n -= left_in_buffer;
    ++index_;
    offset_ = 0;
  }
}

}  // namespace detail

ChainReader::ChainReader(const DescriptorChain& chain) : cursor_(*chain.memory(), chain.readable_buffers()) {}

ChainReader::ChainReader(const GuestMemory& memory, std::span<const ChainBuffer> buffers)
    : cursor_(memory, buffers) {}

Result<void> ChainReader::read(std::span<std::byte> out) {
  if (out.size() > cursor_.remaining()) return Errc::short_chain;
  std::span<std::byte> rest = out;
  auto copied = cursor_.for_each_span(out.size(), [&rest](std::span<std::byte> piece) {
    std::memcpy(rest.data(), piece.data(), piece.size());
    rest = rest.subspan(piece.size());
  });
  if (!copied) return copied;
  cursor_.advance(out.size());
  return {};
}

Result<void> ChainReader::skip(std::size_t n) {
  if (n > cursor_.remaining()) return Errc::short_chain;
  cursor_.advance(n);
  return {};
}

ChainWriter::ChainWriter(const DescriptorChain& chain) : cursor_(*chain.memory(), chain.writable_buffers()) {}

ChainWriter::ChainWriter(const GuestMemory& memory, std::span<const ChainBuffer> buffers)
    : cursor_(memory, buffers) {}

Result<void> ChainWriter::write(std::span<const std::byte> bytes) {
  if (bytes.size() > cursor_.remaining()) return Errc::short_chain;
  std::span<const std::byte> rest = bytes;
  auto stored = cursor_.for_each_span(bytes.size(), [&rest](std::span<std::byte> piece) {
    std::memcpy(piece.data(), rest.data(), piece.size());
    rest = rest.subspan(piece.size());
  });
  if (!stored) return stored;
  cursor_.advance(bytes.size());
  return {};
}

Result<void> ChainWriter::commit(std::size_t n) {
  if (n > cursor_.remaining()) return Errc::short_chain;
  cursor_.advance(n);
  return {};
}

}  // namespace virtio
