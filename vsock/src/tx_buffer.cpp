#include "vsock/tx_buffer.hpp"

#include <algorithm>
#include <cstring>

namespace vsock {

void TxBuffer::append(std::span<const std::byte> bytes) {
  if (bytes.empty()) return;
  if (!data_) data_ = std::make_unique<std::byte[]>(capacity_);
  std::size_t tail = (head_ + size_) % capacity_;
  while (!bytes.empty()) {
    const std::size_t n = std::min(bytes.size(), capacity_ - tail);
    std::memcpy(data_.get() + tail, bytes.data(), n);
    bytes = bytes.subspan(n);
    size_ += n;
    tail = (tail + n) % capacity_;
  }
}

std::size_t TxBuffer::iovecs(std::array<iovec, 2>& out) const {
  if (size_ == 0) return 0;
  const std::size_t first = std::min(size_, capacity_ - head_);
  out[0] = {data_.get() + head_, first};
  if (first == size_) return 1;
  out[1] = {data_.get(), size_ - first};
  return 2;
}

void TxBuffer::consume(std::size_t n) {
  n = std::min(n, size_);
  head_ = (head_ + n) % capacity_;
  size_ -= n;
  if (size_ == 0) head_ = 0;
}

}  // namespace vsock
