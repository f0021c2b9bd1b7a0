#include "rng_device.hpp"

#include <sys/random.h>

#include <cerrno>

#include <boost/container/small_vector.hpp>

#include "virtio/chain_io.hpp"

namespace rng {
namespace {

/// Fills `n` bytes of the chain's writable buffers straight from getrandom(2); returns
/// the number of bytes written.
virtio::Result<std::size_t> fill(virtio::ChainWriter& writer, std::size_t n) {
  boost::container::small_vector<iovec, 8> iovecs;
  auto mapped = writer.peek_iovecs(n, iovecs);
  if (!mapped) return mapped.error();
  std::size_t written = 0;
  for (const iovec& iov : iovecs) {
    std::size_t done = 0;
    while (done < iov.iov_len) {
      const ssize_t got = ::getrandom(static_cast<std::byte*>(iov.iov_base) + done, iov.iov_len - done, 0);
      if (got < 0) {
        if (errno == EINTR) continue;
        return boost::system::error_code(errno, boost::system::system_category());
      }
      done += static_cast<std::size_t>(got);
    }
    written += done;
  }
  if (auto ok = writer.commit(written); !ok) return ok.error();
  return written;
}

}  // namespace

void RngDevice::on_queue_kicked(vhostuser::Vring& vring) {
  auto& queue = vring.queue();
  // Drain with kicks suppressed, then re-arm and look once more: a buffer published between
  // the last pop and the re-arm would otherwise get no kick (virtio spec 2.7.10, and with
  // EVENT_IDX re-arming is what moves avail_event on, without which the driver stops kicking).
  do {
    queue.disable_notifications();
    if (!serve_available(vring)) return;
  } while (queue.enable_notifications());
  vring.notify();
}

bool RngDevice::serve_available(vhostuser::Vring& vring) {
  auto& queue = vring.queue();
  for (;;) {
    auto chain = queue.pop();
    if (!chain) {
      vring.fail("request queue: " + chain.error().message());
      return false;
    }
    if (!*chain) return true;
    virtio::ChainWriter writer(**chain);
    auto written = fill(writer, std::min<std::size_t>(writer.remaining(), max_bytes_per_buffer));
    if (!written) {
      vring.fail("request buffer: " + written.error().message());
      return false;
    }
    bytes_served_ += *written;
    if (auto pushed = queue.push((*chain)->head(), static_cast<std::uint32_t>(*written)); !pushed) {
      vring.fail("used ring: " + pushed.error().message());
      return false;
    }
  }
}

}  // namespace rng
