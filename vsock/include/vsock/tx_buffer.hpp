#pragma once
// Guest bytes that could not be written to the host socket yet.
//
// The datapath writes guest data straight from guest memory to the socket (writev on the
// chain's iovecs); only what the socket does not take goes here, and is flushed when the
// socket is writable again. The capacity is the connection's buf_alloc: a guest that honours
// its credit can never overflow it (spec 5.10.6.3), so the buffer needs no growth policy.
// A ring over one allocation, made on first use: idle connections cost nothing.
#include <sys/uio.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

namespace vsock {

class TxBuffer {
 public:
  explicit TxBuffer(std::size_t capacity) : capacity_(capacity) {}

  [[nodiscard]] std::size_t size() const { return size_; }
  [[nodiscard]] bool empty() const { return size_ == 0; }
  [[nodiscard]] std::size_t free() const { return capacity_ - size_; }

  /// Appends `bytes`; the caller checked free() first.
  void append(std::span<const std::byte> bytes);

  /// The buffered bytes as at most two iovecs, oldest first, for writev.
  [[nodiscard]] std::size_t iovecs(std::array<iovec, 2>& out) const;

  /// Drops the first `n` bytes (they reached the socket).
  void consume(std::size_t n);

 private:
  std::size_t capacity_;
  std::unique_ptr<std::byte[]> data_;
  std::size_t head_ = 0;  // index of the oldest byte
  std::size_t size_ = 0;
};

}  // namespace vsock
