#include "vsock_guest.hpp"

#include <algorithm>
#include <cstring>

#include <boost/endian/conversion.hpp>
#include <fmt/format.h>

#include "virtio/ring.hpp"

namespace vusim::vsock_guest {
namespace {

template <class T>
void put_le(std::byte* at, T value) {
  value = boost::endian::native_to_little(value);
  std::memcpy(at, &value, sizeof value);
}

template <class T>
T get_le(const std::byte* at) {
  T value;
  std::memcpy(&value, at, sizeof value);
  return boost::endian::little_to_native(value);
}

Failure guest_fault(std::string message) { return Failure{Fault::guest, std::move(message)}; }

}  // namespace

// struct virtio_vsock_hdr (5.10.6): le64 src_cid, le64 dst_cid, le32 src_port, le32 dst_port,
// le32 len, le16 type, le16 op, le32 flags, le32 buf_alloc, le32 fwd_cnt; packed, 44 bytes.
std::array<std::byte, header_size> encode_header(const Packet& p) {
  std::array<std::byte, header_size> h{};
  put_le(h.data() + 0, p.src_cid);
  put_le(h.data() + 8, p.dst_cid);
  put_le(h.data() + 16, p.src_port);
  put_le(h.data() + 20, p.dst_port);
  put_le(h.data() + 24, p.len);
  put_le(h.data() + 28, p.type);
  put_le(h.data() + 30, p.op);
  put_le(h.data() + 32, p.flags);
  put_le(h.data() + 36, p.buf_alloc);
  put_le(h.data() + 40, p.fwd_cnt);
  return h;
}

Packet decode_header(std::span<const std::byte> b) {
  Packet p;
  p.src_cid = get_le<std::uint64_t>(b.data() + 0);
  p.dst_cid = get_le<std::uint64_t>(b.data() + 8);
  p.src_port = get_le<std::uint32_t>(b.data() + 16);
  p.dst_port = get_le<std::uint32_t>(b.data() + 20);
  p.len = get_le<std::uint32_t>(b.data() + 24);
  p.type = get_le<std::uint16_t>(b.data() + 28);
  p.op = get_le<std::uint16_t>(b.data() + 30);
  p.flags = get_le<std::uint32_t>(b.data() + 32);
  p.buf_alloc = get_le<std::uint32_t>(b.data() + 36);
  p.fwd_cnt = get_le<std::uint32_t>(b.data() + 40);
  return p;
}

std::string op_name(std::uint16_t op) {
  static constexpr const char* names[] = {"INVALID", "REQUEST", "RESPONSE",      "RST",
                                          "SHUTDOWN", "RW",     "CREDIT_UPDATE", "CREDIT_REQUEST"};
  return op < std::size(names) ? names[op] : fmt::format("OP{}", op);
}

std::string describe(const Packet& p) {
  return fmt::format("{} {}:{} -> {}:{} type {} len {} flags {:#x} buf_alloc {} fwd_cnt {}", op_name(p.op),
                     p.src_cid, p.src_port, p.dst_cid, p.dst_port, p.type, p.len, p.flags, p.buf_alloc,
                     p.fwd_cnt);
}

// --- tx shapes -----------------------------------------------------------------------------

TxShape one_buffer(std::size_t payload) {
  return {.segments = {static_cast<std::uint32_t>(header_size + payload)}};
}

TxShape header_apart(std::size_t payload) {
  TxShape s{.segments = {header_size}};
  if (payload > 0) s.segments.push_back(static_cast<std::uint32_t>(payload));
  return s;
}

TxShape linux_paged(std::size_t payload) {
  TxShape s{.segments = {header_size}};
  constexpr std::size_t linear = 32 * 1024;
  constexpr std::size_t page = 4096;
  std::size_t left = payload;
  if (left > 0) {
    const std::size_t n = std::min(left, linear);
    s.segments.push_back(static_cast<std::uint32_t>(n));
    left -= n;
  }
  while (left > 0) {
    const std::size_t n = std::min(left, page);
    s.segments.push_back(static_cast<std::uint32_t>(n));
    left -= n;
  }
  if (s.segments.size() > 1) s.indirect_from = 0;
  return s;
}

TxShape split_header(std::size_t payload) {
  TxShape s{.segments = {20, 24}};
  const auto first = static_cast<std::uint32_t>(payload / 3);
  s.segments.push_back(first);
  s.segments.push_back(0);
  s.segments.push_back(static_cast<std::uint32_t>(payload - first));
  return s;
}

// --- connection --------------------------------------------------------------------------

std::uint32_t Conn::peer_free() const {
  const std::uint32_t in_flight = tx_cnt - peer_fwd_cnt;
  return in_flight >= peer_buf_alloc ? 0 : peer_buf_alloc - in_flight;
}

bool Conn::matches(const Packet& p) const {
  return p.src_cid == peer_cid && p.dst_cid == cid && p.src_port == peer_port && p.dst_port == port;
}

Packet Conn::make(std::uint16_t op, std::span<const std::byte> payload, std::uint32_t flags) {
  Packet p;
  p.src_cid = cid;
  p.dst_cid = peer_cid;
  p.src_port = port;
  p.dst_port = peer_port;
  p.len = static_cast<std::uint32_t>(payload.size());
  p.type = type;
  p.op = op;
  p.flags = flags;
  p.buf_alloc = buf_alloc;
  p.fwd_cnt = fwd_cnt;
  p.payload.assign(payload.begin(), payload.end());
  advertised_fwd_cnt = fwd_cnt;
  if (op == op_rw) tx_cnt += p.len;
  return p;
}

Result<void> Conn::on_packet(const Packet& p) {
  if (p.type != type) return guest_fault(fmt::format("type {} on a connection of type {}: {}", p.type, type, describe(p)));
  if (p.op == op_rst) {
    reset = true;
    return {};
  }
  // Every packet of the flow carries the sender's credit (5.10.6.3).
  peer_buf_alloc = p.buf_alloc;
  peer_fwd_cnt = p.fwd_cnt;
  if (p.op == op_shutdown) {
    if ((p.flags & ~(shutdown_rcv | shutdown_send)) != 0) {
      return guest_fault("SHUTDOWN with unknown flags: " + describe(p));
    }
    peer_shutdown |= p.flags;
  }
  if (p.op == op_rw) {
    if ((peer_shutdown & shutdown_send) != 0) return guest_fault("RW after the device's SHUTDOWN(SEND): " + describe(p));
    // 5.10.6.3: the sender MUST NOT send more than the receiver's free space. The device can
    // at best know the fwd_cnt the guest advertised last, so received - that <= buf_alloc.
    const std::uint32_t in_flight = rx_cnt + p.len - advertised_fwd_cnt;
    if (in_flight > buf_alloc) {
      return guest_fault(fmt::format("device sent {} bytes with only {} of credit (buf_alloc {}, received {}, "
                                     "last advertised fwd_cnt {}): {}",
                                     p.len, buf_alloc - (rx_cnt - advertised_fwd_cnt), buf_alloc, rx_cnt,
                                     advertised_fwd_cnt, describe(p)));
    }
    if (p.len == 0) return guest_fault("zero-length RW: " + describe(p));
    rx_cnt += p.len;
  }
  return {};
}

bool Conn::update_due() const {
  if (fwd_cnt == advertised_fwd_cnt) return false;
  const std::uint32_t known_in_flight = rx_cnt - advertised_fwd_cnt;
  const std::uint32_t known_free = known_in_flight >= buf_alloc ? 0 : buf_alloc - known_in_flight;
  return known_free < max_payload;
}

// --- the queues ----------------------------------------------------------------------------

Guest::Guest(VhostDev& dev, Options options) : dev_(dev), ram_(dev.ram), options_(std::move(options)) {}

Result<void> Guest::post_rx(std::size_t count, const ChainLayout& layout) {
  for (std::size_t i = 0; i < count; ++i) {
    if (auto head = rx().add(layout); !head) return head.error();
  }
  if (auto kicked = rx().kick(); !kicked) return kicked.error();
  return {};
}

Result<void> Guest::fill_chain(std::uint16_t head, std::span<const std::byte> bytes) {
  // The guest reads its own descriptor table: the simulator's address of the table is the
  // QVA it hands the back-end, so it is directly addressable here.
  const auto* table = reinterpret_cast<const std::byte*>(tx().vring_addr().desc_user_addr);
  const std::uint16_t size = tx().options().size;
  std::size_t done = 0;
  const auto put = [&](std::uint64_t addr, std::uint32_t len) -> Result<void> {
    const std::size_t n = std::min<std::size_t>(len, bytes.size() - done);
    if (n > 0) {
      if (auto ok = ram_.write(Gpa{addr}, bytes.subspan(done, n)); !ok) return ok.error();
    }
    done += n;
    return {};
  };
  std::uint16_t index = head;
  for (std::uint16_t hops = 0; hops < size; ++hops) {
    virtio::Descriptor d;
    std::memcpy(&d, table + std::size_t{index} * sizeof d, sizeof d);
    const std::uint16_t flags = d.flags.value();
    if ((flags & virtio::VIRTQ_DESC_F_INDIRECT) != 0) {
      auto t = ram_.host(Gpa{d.addr.value()}, d.len.value());
      if (!t) return t.error();
      const std::size_t entries = d.len.value() / sizeof(virtio::Descriptor);
      std::size_t i = 0;
      for (std::size_t n = 0; n < entries; ++n) {
        virtio::Descriptor e;
        std::memcpy(&e, t->data() + i * sizeof e, sizeof e);
        if (auto ok = put(e.addr.value(), e.len.value()); !ok) return ok;
        if ((e.flags.value() & virtio::VIRTQ_DESC_F_NEXT) == 0) break;
        i = e.next.value();
      }
    } else {
      if (auto ok = put(d.addr.value(), d.len.value()); !ok) return ok;
    }
    if ((flags & virtio::VIRTQ_DESC_F_NEXT) == 0) break;
    index = d.next.value();
  }
  if (done != bytes.size()) {
    return Failure{Fault::usage, fmt::format("tx chain holds {} of the packet's {} bytes", done, bytes.size())};
  }
  return {};
}

Result<bool> Guest::add_tx(const Packet& p, const TxShape& shape) {
  std::vector<std::byte> bytes(header_size + p.payload.size());
  const auto h = encode_header(p);
  std::copy(h.begin(), h.end(), bytes.begin());
  std::copy(p.payload.begin(), p.payload.end(), bytes.begin() + header_size);

  ChainLayout layout;
  std::uint64_t total = 0;
  if (shape.segments.empty()) {
    layout.segments.push_back({.len = static_cast<std::uint32_t>(bytes.size()), .writable = false});
    total = bytes.size();
  } else {
    for (std::size_t i = 0; i < shape.segments.size(); ++i) {
      layout.segments.push_back({.len = shape.segments[i], .writable = false, .straddle = shape.straddle == i});
      total += shape.segments[i];
    }
  }
  if (total != bytes.size()) {
    return Failure{Fault::usage, fmt::format("tx shape holds {} bytes, the packet is {}", total, bytes.size())};
  }
  layout.indirect_from = shape.indirect_from;
  const std::size_t needed = shape.indirect_from ? *shape.indirect_from + 1 : layout.segments.size();
  if (tx().free_descriptors() < needed) return false;
  auto head = tx().add(layout);
  if (!head) return head.error();
  // Not yet published: the device cannot see the chain before its bytes are in place.
  if (auto ok = fill_chain(*head, bytes); !ok) return ok.error();
  if (auto kicked = tx().kick(); !kicked) return kicked.error();
  return true;
}

Result<bool> Guest::try_send(const Packet& p, const TxShape& shape) {
  if (auto got = collect(); !got) return got.error();
  return add_tx(p, shape);
}

Result<void> Guest::send(const Packet& p, const TxShape& shape, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    auto sent = try_send(p, shape);
    if (!sent) return sent.error();
    if (*sent) return {};
    if (Clock::now() >= deadline) {
      return Failure{Fault::timeout,
                     fmt::format("tx ring full for {} ms ({} chains outstanding, {} free descriptors): {}",
                                 timeout.count(), tx().outstanding(), tx().free_descriptors(), describe(p))};
    }
    if (auto ok = wait({}, deadline); !ok) return ok;
  }
}

Result<void> Guest::drain_tx(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (auto got = collect(); !got) return got.error();
    if (tx().outstanding() == 0) return {};
    if (Clock::now() >= deadline) {
      return Failure{Fault::timeout, fmt::format("{} tx chains still outstanding after {} ms", tx().outstanding(),
                                                 timeout.count())};
    }
    if (auto ok = wait({}, deadline); !ok) return ok;
  }
}

Result<bool> Guest::collect() {
  bool any = false;
  auto rx_done = rx().take_used();
  if (!rx_done) return rx_done.error();
  std::size_t refill = 0;
  for (const Completion& c : *rx_done) {
    any = true;
    ++refill;
    if (c.writable_capacity < header_size) {
      // A buffer that cannot hold a header can carry nothing; Linux drops what comes back in it.
      if (c.len != 0) {
        return guest_fault(fmt::format("rx buffer of {} bytes returned with used len {}", c.writable_capacity, c.len));
      }
      ++rx_small_;
      continue;
    }
    if (c.len < header_size) {
      return guest_fault(fmt::format("rx buffer of {} bytes returned with used len {}: no room for a header is "
                                     "no reason to use a buffer that has it (Linux drops len < 44)",
                                     c.writable_capacity, c.len));
    }
    auto bytes = c.written(ram_);
    if (!bytes) return bytes.error();
    Packet p = decode_header(*bytes);
    if (c.len != header_size + std::uint64_t{p.len}) {
      return guest_fault(fmt::format("used len {} but header len {} (must be 44 + len): {}", c.len, p.len, describe(p)));
    }
    if (p.dst_cid != options_.cid) {
      return guest_fault(fmt::format("packet for CID {} in the rx ring of CID {}: {}", p.dst_cid, options_.cid, describe(p)));
    }
    p.payload.assign(bytes->begin() + header_size, bytes->end());
    ++rx_received_;
    inbox_.push_back(std::move(p));
  }
  if (refill > 0 && options_.refill) {
    for (std::size_t i = 0; i < refill; ++i) {
      // As Linux's virtio_vsock_rx_fill, stop when the ring has no room for the next buffer.
      ChainLayout layout = options_.refill();
      const std::size_t needed = layout.indirect_from ? *layout.indirect_from + 1 : layout.segments.size();
      if (rx().free_descriptors() < needed) break;
      if (auto head = rx().add(layout); !head) return head.error();
    }
    if (auto kicked = rx().kick(); !kicked) return kicked.error();
  }
  auto tx_done = tx().take_used();
  if (!tx_done) return tx_done.error();
  for (const Completion& c : *tx_done) {
    any = true;
    ++tx_completed_;
    if (c.len != 0) return guest_fault(fmt::format("tx chain {} returned with used len {}", c.head, c.len));
  }
  return any;
}

Result<void> Guest::wait(std::span<pollfd> extra, Clock::time_point deadline) {
  // Linux virtqueue_enable_cb: re-arm, then look again; what was used before the device saw
  // the arming is not signalled.
  const bool rx_pending = rx().enable_interrupts();
  const bool tx_pending = tx().enable_interrupts();
  if (rx_pending || tx_pending) return {};
  std::vector<pollfd> fds{{rx().call_fd(), POLLIN, 0}, {tx().call_fd(), POLLIN, 0}};
  fds.insert(fds.end(), extra.begin(), extra.end());
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
  const int n = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<std::int64_t>(left.count(), 0)));
  if (n < 0 && errno != EINTR) return Failure{Fault::io, fmt::format("poll: {}", std::strerror(errno))};
  for (std::size_t i = 0; i < extra.size(); ++i) extra[i].revents = fds[2 + i].revents;
  if (auto r = rx().take_calls(); !r) return r.error();
  if (auto t = tx().take_calls(); !t) return t.error();
  return {};
}

Result<Packet> Guest::next(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (auto got = collect(); !got) return got.error();
    if (!inbox_.empty()) {
      Packet p = std::move(inbox_.front());
      inbox_.pop_front();
      return p;
    }
    if (Clock::now() >= deadline) {
      return Failure{Fault::timeout,
                     fmt::format("no packet from the device within {} ms (rx: {} buffers posted, used->idx {}; "
                                 "tx: {} outstanding)",
                                 timeout.count(), rx().outstanding(), rx().device_used_idx(), tx().outstanding())};
    }
    if (auto ok = wait({}, deadline); !ok) return ok.error();
  }
}

}  // namespace vusim::vsock_guest
