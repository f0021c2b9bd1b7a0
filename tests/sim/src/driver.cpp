#include "vusim/driver.hpp"

#include <poll.h>
#include <sys/eventfd.h>

#include <atomic>
#include <bit>
#include <cstring>
#include <thread>

#include <fmt/format.h>
#include <boost/endian/conversion.hpp>

#include "posix.hpp"
#include "virtio/ring.hpp"

namespace vusim {
namespace {

using Clock = std::chrono::steady_clock;

/// Readable descriptors carry this byte, so a device reading them sees driver data.
constexpr std::byte readable_fill{0xa5};

// The u16 ring fields the device updates concurrently are accessed atomically; their values
// are little-endian (virtio 2.4).
std::uint16_t load_le16(std::span<std::byte> area, std::size_t offset, std::memory_order order) {
  auto* p = reinterpret_cast<std::uint16_t*>(area.data() + offset);
  return boost::endian::little_to_native(std::atomic_ref<std::uint16_t>(*p).load(order));
}

void store_le16(std::span<std::byte> area, std::size_t offset, std::uint16_t value, std::memory_order order) {
  auto* p = reinterpret_cast<std::uint16_t*>(area.data() + offset);
  std::atomic_ref<std::uint16_t>(*p).store(boost::endian::native_to_little(value), order);
}

Result<Allocation> ring_area(GuestRam& ram, virtio::RingArea area) {
  auto a = ram.allocate(area.size, area.align);
  if (!a) return a.error();
  if (auto ok = ram.fill(a->addr(), area.size, std::byte{0}); !ok) return ok.error();
  return a;
}

}  // namespace

Result<std::vector<std::byte>> Completion::written(const GuestRam& ram) const {
  std::vector<std::byte> out(len);
  std::size_t done = 0;
  for (const Buffer& b : buffers) {
    if (!b.writable || done == len) continue;
    const std::size_t n = std::min<std::size_t>(b.len, len - done);
    if (auto ok = ram.read(b.addr, std::span(out).subspan(done, n)); !ok) return ok.error();
    done += n;
  }
  return out;
}

Driver::Driver(GuestRam ram, Options options) : ram_(std::move(ram)), options_(options) {}

Result<Driver> Driver::create(GuestRam ram, Options options) {
  if (!std::has_single_bit(options.size) || options.size > virtio::max_queue_size) {
    return Failure{Fault::usage,
                   fmt::format("queue size {} is not a power of two up to 32768", options.size)};
  }
  Driver d(std::move(ram), options);
  auto desc = ring_area(d.ram_, virtio::descriptor_table_area(options.size));
  auto avail = ring_area(d.ram_, virtio::avail_ring_area(options.size, options.event_idx));
  auto used = ring_area(d.ram_, virtio::used_ring_area(options.size, options.event_idx));
  if (!desc) return desc.error();
  if (!avail) return avail.error();
  if (!used) return used.error();
  d.desc_ = *d.ram_.host(desc->addr(), desc->size());
  d.avail_ = *d.ram_.host(avail->addr(), avail->size());
  d.used_ = *d.ram_.host(used->addr(), used->size());
  d.desc_area_ = std::move(*desc);
  d.avail_area_ = std::move(*avail);
  d.used_area_ = std::move(*used);

  d.kick_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  d.call_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!d.kick_ || !d.call_) return io_failure("eventfd");

  for (std::uint32_t i = options.size; i > 0; --i) d.free_.push_back(static_cast<std::uint16_t>(i - 1));
  d.in_flight_.resize(options.size);
  return d;
}

vhostuser::VringAddr Driver::vring_addr() const {
  // The areas were allocated inside one region each, so qva() cannot fail here.
  const auto qva = [&](const Allocation& a) { return *ram_.qva(a.addr(), a.size()); };
  return {options_.index, 0, qva(desc_area_), qva(used_area_), qva(avail_area_), used_area_.addr().raw()};
}

void Driver::write_descriptor(std::span<std::byte> table, std::uint16_t slot, Gpa addr, std::uint32_t len,
                              std::uint16_t flags, std::uint16_t next) {
  virtio::Descriptor d;
  d.addr = addr.raw();
  d.len = len;
  d.flags = flags;
  d.next = next;
  std::memcpy(table.data() + std::size_t{slot} * sizeof d, &d, sizeof d);
}

Result<Buffer> Driver::place(const Segment& segment, std::vector<Allocation>& storage) {
  auto a = segment.straddle ? ram_.allocate_straddling(segment.len) : ram_.allocate(segment.len);
  if (!a) return a.error();
  const std::byte fill = segment.writable ? std::byte{0} : readable_fill;
  if (auto ok = ram_.fill(a->addr(), segment.len, fill); !ok) return ok.error();
  const Buffer b{a->addr(), segment.len, segment.writable};
  storage.push_back(std::move(*a));
  return b;
}

Result<std::uint16_t> Driver::add(const ChainLayout& layout) {
  const auto& segs = layout.segments;
  if (segs.empty()) return Failure{Fault::usage, "a chain needs at least one segment"};
  for (std::size_t i = 1; i < segs.size(); ++i) {
    if (segs[i - 1].writable && !segs[i].writable) {
      return Failure{Fault::usage, "device-readable segments must come before writable ones (2.7.4.2)"};
    }
  }
  if (layout.indirect_from) {
    if (!options_.indirect) return Failure{Fault::usage, "indirect chain without VIRTIO_F_INDIRECT_DESC"};
    if (*layout.indirect_from >= segs.size())
      return Failure{Fault::usage, "an indirect table cannot be empty"};
  }
  const std::size_t direct = layout.indirect_from.value_or(segs.size());
  const std::size_t ring_entries = direct + (layout.indirect_from ? 1 : 0);
  if (ring_entries > free_.size()) {
    return Failure{Fault::usage, fmt::format("vring {}: chain needs {} descriptors, {} free", options_.index,
                                             ring_entries, free_.size())};
  }

  InFlight chain;
  for (const Segment& s : segs) {
    auto b = place(s, chain.storage);
    if (!b) return b.error();
    chain.buffers.push_back(*b);
    if (s.writable) chain.writable += s.len;
  }
  for (std::size_t i = 0; i < ring_entries; ++i) {
    chain.descriptors.push_back(free_.back());
    free_.pop_back();
  }

  // The indirect table: its own chain starting at entry 0 (2.7.5.3.1).
  const auto flags_of = [](const Buffer& b, bool more) {
    return static_cast<std::uint16_t>((b.writable ? virtio::VIRTQ_DESC_F_WRITE : 0) |
                                      (more ? virtio::VIRTQ_DESC_F_NEXT : 0));
  };
  std::optional<Gpa> table;
  std::uint32_t table_len = 0;
  if (layout.indirect_from) {
    const std::size_t entries = segs.size() - direct;
    table_len = static_cast<std::uint32_t>(entries * sizeof(virtio::Descriptor));
    auto t = ram_.allocate(table_len, 16);
    if (!t) return t.error();
    auto bytes = *ram_.host(t->addr(), table_len);
    for (std::size_t i = 0; i < entries; ++i) {
      const Buffer& b = chain.buffers[direct + i];
      const bool more = i + 1 < entries;
      write_descriptor(bytes, static_cast<std::uint16_t>(i), b.addr, b.len, flags_of(b, more),
                       more ? static_cast<std::uint16_t>(i + 1) : 0);
    }
    table = t->addr();
    chain.storage.push_back(std::move(*t));
  }
  for (std::size_t i = 0; i < ring_entries; ++i) {
    const bool more = i + 1 < ring_entries;
    const std::uint16_t next = more ? chain.descriptors[i + 1] : 0;
    if (i < direct) {
      const Buffer& b = chain.buffers[i];
      write_descriptor(desc_, chain.descriptors[i], b.addr, b.len, flags_of(b, more), next);
    } else {
      // INDIRECT and NEXT together are forbidden for drivers (2.7.5.3.1): the table is last.
      write_descriptor(desc_, chain.descriptors[i], *table, table_len, virtio::VIRTQ_DESC_F_INDIRECT, 0);
    }
  }

  const std::uint16_t head = chain.descriptors.front();
  const std::uint16_t slot = static_cast<std::uint16_t>(next_avail_ & (options_.size - 1));
  store_le16(avail_, virtio::avail_ring_entry_offset(slot), head, std::memory_order_relaxed);
  ++next_avail_;
  ++outstanding_;
  in_flight_[head] = std::move(chain);
  return head;
}

void Driver::publish() {
  // Descriptors and ring entries before the index that makes them visible (2.7.13.3.1).
  store_le16(avail_, offsetof(virtio::AvailHeader, idx), next_avail_, std::memory_order_release);
  published_ = next_avail_;
}

Result<bool> Driver::kick() {
  publish();
  // The device's suppression state must be read after our avail->idx store is visible,
  // or the device may decide to sleep on the old index while we decide not to kick.
  std::atomic_thread_fence(std::memory_order_seq_cst);
  const std::uint16_t old = std::exchange(kicked_at_, published_);
  bool needed;
  if (options_.event_idx) {
    const std::uint16_t avail_event =
        load_le16(used_, virtio::avail_event_offset(options_.size), std::memory_order_relaxed);
    needed = virtio::vring_need_event(avail_event, published_, old);
  } else {
    needed = (load_le16(used_, offsetof(virtio::UsedHeader, flags), std::memory_order_relaxed) &
              virtio::VIRTQ_USED_F_NO_NOTIFY) == 0;
  }
  if (needed) {
    if (auto ok = notify(); !ok) return ok.error();
  }
  return needed;
}

Result<void> Driver::notify() {
  if (::eventfd_write(kick_.get(), 1) != 0) return io_failure("eventfd_write(kick)");
  return {};
}

std::uint16_t Driver::device_used_idx() const {
  return load_le16(used_, offsetof(virtio::UsedHeader, idx), std::memory_order_acquire);
}

Result<std::vector<Completion>> Driver::take_used() {
  // Acquire: the used elements and the bytes written into the buffers are visible once the
  // index that publishes them is (2.7.8.2).
  const std::uint16_t used_idx = device_used_idx();
  const std::uint16_t fresh = used_idx - last_used_;
  if (fresh > outstanding_) {
    return Failure{Fault::guest,
                   fmt::format("vring {}: used->idx moved from {} to {} but only {} chains are outstanding",
                               options_.index, last_used_, used_idx, outstanding_)};
  }
  std::vector<Completion> out;
  for (std::uint16_t k = 0; k < fresh; ++k) {
    const std::uint16_t slot = static_cast<std::uint16_t>(last_used_ & (options_.size - 1));
    virtio::UsedElem elem;
    std::memcpy(&elem, used_.data() + virtio::used_elem_offset(slot), sizeof elem);
    const std::uint32_t id = elem.id.value();
    const std::uint32_t len = elem.len.value();
    if (id >= options_.size || !in_flight_[id]) {
      return Failure{
          Fault::guest,
          fmt::format("vring {}: used entry {} returns id {}, not the head of an outstanding chain",
                      options_.index, last_used_, id)};
    }
    InFlight chain = std::move(*in_flight_[id]);
    in_flight_[id].reset();
    free_.insert(free_.end(), chain.descriptors.rbegin(), chain.descriptors.rend());
    --outstanding_;
    ++last_used_;
    if (len > chain.writable) {
      return Failure{Fault::guest,
                     fmt::format("vring {}: used len {} for head {} exceeds its {} writable bytes",
                                 options_.index, len, id, chain.writable)};
    }
    Completion c;
    c.head = static_cast<std::uint16_t>(id);
    c.len = len;
    c.buffers = std::move(chain.buffers);
    c.writable_capacity = chain.writable;
    c.storage_ = std::move(chain.storage);
    out.push_back(std::move(c));
  }
  return out;
}

Failure Driver::timeout_failure(std::size_t want, std::size_t got, std::chrono::milliseconds timeout) const {
  return Failure{
      Fault::timeout,
      fmt::format("vring {}: {} of {} chains used after {} ms (avail->idx {}, used->idx {} in guest "
                  "memory, {} outstanding)",
                  options_.index, got, want, timeout.count(), published_, device_used_idx(), outstanding_)};
}

Result<std::vector<Completion>> Driver::wait_used(std::size_t count, std::chrono::milliseconds timeout) {
  if (count > outstanding_) {
    return Failure{Fault::usage,
                   fmt::format("waiting for {} chains with {} outstanding", count, outstanding_)};
  }
  const auto deadline = Clock::now() + timeout;
  std::vector<Completion> out;
  for (;;) {
    auto got = take_used();
    if (!got) return got.error();
    for (auto& c : *got) out.push_back(std::move(c));
    if (out.size() >= count) return out;
    // Linux virtqueue_enable_cb(): re-arm, then look again, since entries published before
    // the device saw the new arming will not be signalled.
    if (enable_interrupts()) continue;
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return timeout_failure(count, out.size(), timeout);
    if (auto calls = wait_call(left); !calls) {
      if (calls.error().fault == Fault::timeout) return timeout_failure(count, out.size(), timeout);
      return calls.error();
    }
  }
}

Result<std::vector<Completion>> Driver::poll_used(std::size_t count, std::chrono::milliseconds timeout) {
  if (count > outstanding_) {
    return Failure{Fault::usage,
                   fmt::format("polling for {} chains with {} outstanding", count, outstanding_)};
  }
  const auto deadline = Clock::now() + timeout;
  std::vector<Completion> out;
  for (;;) {
    auto got = take_used();
    if (!got) return got.error();
    for (auto& c : *got) out.push_back(std::move(c));
    if (out.size() >= count) return out;
    if (Clock::now() >= deadline) return timeout_failure(count, out.size(), timeout);
    std::this_thread::yield();  // a polling driver spins; there is no fd to wait on
  }
}

Result<std::uint64_t> Driver::wait_call(std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    pollfd p{call_.get(), POLLIN, 0};
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    const int n = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0)));
    if (n < 0 && errno != EINTR) return io_failure("poll(call eventfd)");
    if (n > 0) return take_calls();
    if (Clock::now() >= deadline) {
      return Failure{Fault::timeout, fmt::format("vring {}: no used-buffer notification within {} ms",
                                                 options_.index, timeout.count())};
    }
  }
}

Result<std::uint64_t> Driver::take_calls() {
  eventfd_t value = 0;
  if (::eventfd_read(call_.get(), &value) != 0) {
    if (errno == EAGAIN) return 0;
    return io_failure("eventfd_read(call)");
  }
  return value;
}

bool Driver::enable_interrupts() {
  if (options_.event_idx) {
    // "Interrupt me when you write used entry last_used_" (2.7.7.2).
    store_le16(avail_, virtio::used_event_offset(options_.size), last_used_, std::memory_order_relaxed);
  } else {
    store_le16(avail_, offsetof(virtio::AvailHeader, flags), 0, std::memory_order_relaxed);
  }
  std::atomic_thread_fence(std::memory_order_seq_cst);
  return device_used_idx() != last_used_;
}

void Driver::disable_interrupts() {
  if (options_.event_idx) {
    // The entry furthest from the ones the device is about to write: no notification until
    // the device has used 2^16 - 1 more entries. (Linux writes 0, which can still fire
    // when used->idx wraps.)
    store_le16(avail_, virtio::used_event_offset(options_.size), static_cast<std::uint16_t>(last_used_ - 1),
               std::memory_order_relaxed);
  } else {
    store_le16(avail_, offsetof(virtio::AvailHeader, flags), virtio::VIRTQ_AVAIL_F_NO_INTERRUPT,
               std::memory_order_relaxed);
  }
}

}  // namespace vusim
