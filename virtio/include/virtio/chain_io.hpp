#pragma once
// Byte streams over the buffers of a descriptor chain.
//
// A device should not care how the driver cut a message into descriptors: the vsock header
// may sit in its own descriptor or share one with the payload (VIRTIO_F_ANY_LAYOUT, implied
// by VERSION_1: "the device MUST NOT make assumptions about the particular arrangement of
// descriptors", 2.7.4.1), and a buffer may straddle two memory regions. ChainReader and
// ChainWriter present the device-readable and the device-writable buffers of a chain as one
// contiguous stream each, so a device reads a header with read_obj<Header>() without
// computing a single offset (virtio-queue's Reader/Writer).
//
// Two ways to move bytes:
//  - copies: read()/read_obj()/skip() and write()/write_obj(), all-or-nothing;
//  - zero copy: peek_iovecs() describes the next bytes as host iovecs, to hand straight to
//    readv/writev/sendmsg/recvmsg between a socket and guest memory; afterwards skip(n) or
//    commit(n) moves past the n bytes the syscall actually transferred.
//
// Both streams only go forward. "A device MUST NOT write to a device-readable buffer"
// (2.7.5.1) holds by construction: a ChainWriter never sees the readable buffers. Failures
// are values: a stream shorter than asked for is Errc::short_chain; a buffer outside guest
// memory is Errc::unmapped_address or Errc::address_overflow (only possible for buffer lists
// not produced by DescriptorChain::walk, which rejects such chains). On any failure the
// position does not move; a failed write may have stored some of its bytes.
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <bit>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <span>
#include <type_traits>

#include <boost/container/small_vector.hpp>

#include "virtio/descriptor_chain.hpp"
#include "virtio/errors.hpp"
#include "virtio/guest_memory.hpp"

namespace virtio {

/// Output of peek_iovecs(); any boost::container::small_vector<iovec, N> binds to it.
using IovecVector = boost::container::small_vector_base<iovec>;

/// peek_iovecs() never returns more entries than one readv/writev call accepts.
inline constexpr std::size_t max_iovecs = IOV_MAX;

namespace detail {

/// A forward position in a list of guest buffers: the mechanism shared by ChainReader and
/// ChainWriter. It does not check n against remaining(); its owners do.
class BufferCursor {
 public:
  BufferCursor(const GuestMemory& memory, std::span<const ChainBuffer> buffers);

  [[nodiscard]] std::size_t remaining() const { return remaining_; }
  [[nodiscard]] std::size_t consumed() const { return consumed_; }

  /// Calls fn(std::span<std::byte>) on the host pieces of the next n bytes, in order,
  /// without moving. Zero-length buffers produce no pieces.
  template <class Fn>
  Result<void> for_each_span(std::size_t n, Fn&& fn) const;

  /// Replaces `out` with the pieces of the next min(max_bytes, remaining()) bytes, at most
  /// max_iovecs of them; returns the bytes they cover.
  Result<std::size_t> peek_iovecs(std::size_t max_bytes, IovecVector& out) const;

  void advance(std::size_t n);

 private:
  const GuestMemory* memory_;
  std::span<const ChainBuffer> buffers_;
  std::size_t index_ = 0;     ///< buffer the position is in
  std::uint32_t offset_ = 0;  ///< bytes of buffers_[index_] already passed
  std::size_t remaining_ = 0;
  std::size_t consumed_ = 0;
};

template <class Fn>
Result<void> BufferCursor::for_each_span(std::size_t n, Fn&& fn) const {
  std::size_t index = index_;
  std::uint32_t offset = offset_;
  while (n > 0) {
    const ChainBuffer& buffer = buffers_[index];
    const std::size_t piece = std::min<std::size_t>(n, buffer.len - offset);
    if (piece > 0) {
      const auto start = buffer.addr.checked_add(offset);
      if (!start) return Errc::address_overflow;
      if (auto ok = memory_->for_each_span(*start, piece, fn); !ok) return ok;
      n -= piece;
    }
    ++index;
    offset = 0;
  }
  return {};
}

}  // namespace detail

/// The device-readable part of a chain as a byte stream.
class ChainReader {
 public:
  /// Reads chain.readable_buffers(); the chain must outlive the reader and stay in place
  /// (its buffers may live inline in the chain object).
  explicit ChainReader(const DescriptorChain& chain);
  explicit ChainReader(const DescriptorChain&& chain) = delete;
  /// Reads any list of guest buffers, whatever their device_writable flags say; memory and
  /// buffers must outlive the reader.
  ChainReader(const GuestMemory& memory, std::span<const ChainBuffer> buffers);

  [[nodiscard]] std::size_t remaining() const { return cursor_.remaining(); }
  [[nodiscard]] std::size_t bytes_read() const { return cursor_.consumed(); }

  /// Copies the next out.size() bytes; Errc::short_chain if fewer remain.
  Result<void> read(std::span<std::byte> out);

  /// The next sizeof(T) bytes as a T (a wire struct built from Le fields).
  template <class T>
  requires std::is_trivially_copyable_v<T> Result<T> read_obj() {
    std::array<std::byte, sizeof(T)> raw;
    if (auto ok = read(raw); !ok) return ok.error();
    return std::bit_cast<T>(raw);
  }

  /// Moves past n bytes without copying them, e.g. after a writev() on peek_iovecs().
  Result<void> skip(std::size_t n);

  /// Host iovecs for the next min(max_bytes, remaining()) bytes (see BufferCursor).
  Result<std::size_t> peek_iovecs(std::size_t max_bytes, IovecVector& out) const {
    return cursor_.peek_iovecs(max_bytes, out);
  }

 private:
  detail::BufferCursor cursor_;
};

/// The device-writable part of a chain as a byte stream. bytes_written() is the `len` to
/// push to the used ring: "the total bytes written into the buffer" (2.7.8), counted from the
/// first device-writable buffer as 2.7.8.2 requires.
class ChainWriter {
 public:
  /// Writes chain.writable_buffers(); the chain must outlive the writer and stay in place
  /// (its buffers may live inline in the chain object).
  explicit ChainWriter(const DescriptorChain& chain);
  explicit ChainWriter(const DescriptorChain&& chain) = delete;
  /// Writes any list of guest buffers, whatever their device_writable flags say; memory and
  /// buffers must outlive the writer.
  ChainWriter(const GuestMemory& memory, std::span<const ChainBuffer> buffers);

  [[nodiscard]] std::size_t remaining() const { return cursor_.remaining(); }
  [[nodiscard]] std::size_t bytes_written() const { return cursor_.consumed(); }

  /// Stores all of `bytes`; Errc::short_chain, storing nothing, if they do not fit.
  Result<void> write(std::span<const std::byte> bytes);

  template <class T>
  requires std::is_trivially_copyable_v<T> Result<void> write_obj(const T& value) {
    const auto raw = std::bit_cast<std::array<std::byte, sizeof(T)>>(value);
    return write(raw);
  }

  /// Host iovecs for the next min(max_bytes, remaining()) bytes (see BufferCursor).
  Result<std::size_t> peek_iovecs(std::size_t max_bytes, IovecVector& out) const {
    return cursor_.peek_iovecs(max_bytes, out);
  }

  /// Counts n bytes stored through peek_iovecs() (e.g. by recvmsg) as written.
  Result<void> commit(std::size_t n);

 private:
  detail::BufferCursor cursor_;
};

}  // namespace virtio
