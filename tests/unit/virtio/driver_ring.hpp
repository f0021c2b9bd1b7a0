#pragma once
// Test utilities: guest RAM backed by host buffers, and the DRIVER side of a split virtqueue.
//
// GuestRam places regions at chosen guest-physical addresses (gaps between them are unmapped
// guest memory) and hands out GuestMemory snapshots of them, like a backend's memory table.
// DriverRing writes descriptors and avail entries and reads the used ring exactly as a
// virtio driver does (virtio 1.2, 2.7.13 and 2.7.14), so device-side code can be tested
// against well-formed and deliberately broken rings. Test code misusing the helpers (an
// access outside every region, a chain that does not fit) throws std::logic_error.
//
// The helpers are single-threaded and do not model the driver's barriers; tests drive both
// sides from one thread.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <vector>

#include "virtio/address.hpp"
#include "virtio/guest_memory.hpp"
#include "virtio/ring.hpp"
#include "virtio/split_queue.hpp"

namespace virtio::test {

class GuestRam {
 public:
  struct Layout {
    std::uint64_t base;
    std::size_t size;
  };

  explicit GuestRam(const std::vector<Layout>& layout) {
    for (const Layout& l : layout) {
      regions_.push_back({l.base, std::make_shared<std::vector<std::byte>>(l.size)});
    }
  }

  /// A snapshot of every region.
  [[nodiscard]] std::shared_ptr<const GuestMemory> memory() const {
    std::vector<std::size_t> all(regions_.size());
    for (std::size_t i = 0; i < all.size(); ++i) all[i] = i;
    return memory_of(all);
  }

  /// A snapshot of some regions only, as after the frontend removed the others.
  [[nodiscard]] std::shared_ptr<const GuestMemory> memory_of(const std::vector<std::size_t>& indices) const {
    std::vector<MemoryRegion> table;
    for (std::size_t i : indices) {
      const Backing& r = regions_.at(i);
      table.push_back({GuestPhysAddr{r.base}, std::span<std::byte>(*r.bytes), r.bytes});
    }
    auto memory = GuestMemory::create(std::move(table));
    if (!memory) throw std::logic_error("GuestRam: invalid region layout");
    return *memory;
  }

  void write(GuestPhysAddr addr, std::span<const std::byte> bytes) {
    for (std::size_t i = 0; i < bytes.size(); ++i) *byte_at(addr.raw() + i) = bytes[i];
  }

  void read(GuestPhysAddr addr, std::span<std::byte> out) const {
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = *byte_at(addr.raw() + i);
  }

  [[nodiscard]] std::vector<std::byte> read(GuestPhysAddr addr, std::size_t len) const {
    std::vector<std::byte> out(len);
    read(addr, out);
    return out;
  }

  template <class T>
  void write_obj(GuestPhysAddr addr, const T& value) {
    write(addr, std::as_bytes(std::span{&value, 1}));
  }

  template <class T>
  [[nodiscard]] T read_obj(GuestPhysAddr addr) const {
    T value;
    read(addr, std::as_writable_bytes(std::span{&value, 1}));
    return value;
  }

 private:
  struct Backing {
    std::uint64_t base;
    std::shared_ptr<std::vector<std::byte>> bytes;
  };

  // Byte-wise on purpose: the helper is the test oracle and must not share the region
  // arithmetic of the code under test. Address arithmetic wraps mod 2^64 like the guest's.
  std::byte* byte_at(std::uint64_t addr) const {
    for (const Backing& r : regions_) {
      if (addr - r.base < r.bytes->size()) return r.bytes->data() + (addr - r.base);
    }
    throw std::logic_error("GuestRam: access to unmapped guest memory");
  }

  std::vector<Backing> regions_;
};

/// Where the three areas of one ring live.
struct RingLayout {
  std::uint16_t size = 0;
  GuestPhysAddr desc;
  GuestPhysAddr avail;
  GuestPhysAddr used;
  bool event_idx = false;

  /// The areas back to back from `base` (16-byte aligned), each at its spec alignment.
  static RingLayout packed(GuestPhysAddr base, std::uint16_t size, bool event_idx) {
    const auto align_up = [](std::uint64_t v, std::uint64_t a) { return (v + a - 1) / a * a; };
    RingLayout l{size, base, {}, {}, event_idx};
    l.avail = GuestPhysAddr{base.raw() + descriptor_table_area(size).size};
    l.used = GuestPhysAddr{align_up(l.avail.raw() + avail_ring_area(size, event_idx).size, 4)};
    return l;
  }

  [[nodiscard]] std::uint64_t end() const { return used.raw() + used_ring_area(size, event_idx).size; }
};

/// One buffer a driver offers.
struct BufferSpec {
  GuestPhysAddr addr;
  std::uint32_t len = 0;
  bool writable = false;
};

class DriverRing {
 public:
  struct Used {
    std::uint32_t id;
    std::uint32_t len;
  };

  /// Zeroes the three areas: a freshly initialised ring (2.7.13: all indices start at 0).
  DriverRing(GuestRam& ram, RingLayout layout) : ram_(ram), layout_(layout) {
    zero(layout.desc, descriptor_table_area(layout.size).size);
    zero(layout.avail, avail_ring_area(layout.size, layout.event_idx).size);
    zero(layout.used, used_ring_area(layout.size, layout.event_idx).size);
  }

  [[nodiscard]] const RingLayout& layout() const { return layout_; }

  /// The configuration a backend would get for this ring; `next_avail` is what the
  /// frontend sends with SET_VRING_BASE.
  [[nodiscard]] QueueConfig queue_config(bool indirect = false, bool notify_on_empty = false,
                                         std::uint16_t next_avail = 0) const {
    return {layout_.size,      layout_.desc, layout_.avail,   layout_.used,
            layout_.event_idx, indirect,     notify_on_empty, next_avail};
  }

  static Descriptor descriptor(std::uint64_t addr, std::uint32_t len, std::uint16_t flags,
                               std::uint16_t next = 0) {
    Descriptor d;
    d.addr = addr;
    d.len = len;
    d.flags = flags;
    d.next = next;
    return d;
  }

  // --- Descriptor table (2.7.5, 2.7.13.1) ---

  void set_descriptor(std::uint16_t index, const Descriptor& d) {
    ram_.write_obj(GuestPhysAddr{layout_.desc.raw() + 16ULL * index}, d);
  }

  /// Writes `table` as consecutive descriptors at `addr` (an indirect table, 2.7.5.3).
  void write_table(GuestPhysAddr addr, std::span<const Descriptor> table) {
    ram_.write(addr, std::as_bytes(table));
  }

  /// Writes `buffers` as descriptors first, first + 1, ..., linked with NEXT. Returns `first`,
  /// the head to offer.
  std::uint16_t write_chain(std::uint16_t first, std::span<const BufferSpec> buffers) {
    if (buffers.empty() || first + buffers.size() > layout_.size) {
      throw std::logic_error("DriverRing: chain does not fit the table");
    }
    const auto table = linked(buffers, first);
    for (std::size_t i = 0; i < table.size(); ++i) {
      set_descriptor(static_cast<std::uint16_t>(first + i), table[i]);
    }
    return first;
  }

  /// Writes `buffers` as an indirect table at `table_addr` and points descriptor `index` at
  /// it. Returns `index`, the head to offer.
  std::uint16_t write_indirect_chain(std::uint16_t index, GuestPhysAddr table_addr,
                                     std::span<const BufferSpec> buffers) {
    const auto table = linked(buffers, 0);
    write_table(table_addr, table);
    set_descriptor(index, descriptor(table_addr.raw(), static_cast<std::uint32_t>(16 * table.size()),
                                     VIRTQ_DESC_F_INDIRECT));
    return index;
  }

  /// `buffers` as descriptors linked from index `first` on, in one table.
  static std::vector<Descriptor> linked(std::span<const BufferSpec> buffers, std::uint16_t first) {
    std::vector<Descriptor> table;
    for (std::size_t i = 0; i < buffers.size(); ++i) {
      const bool last = i + 1 == buffers.size();
      const auto flags = static_cast<std::uint16_t>((buffers[i].writable ? VIRTQ_DESC_F_WRITE : 0) |
                                                    (last ? 0 : VIRTQ_DESC_F_NEXT));
      table.push_back(descriptor(buffers[i].addr.raw(), buffers[i].len, flags,
                                 last ? 0 : static_cast<std::uint16_t>(first + i + 1)));
    }
    return table;
  }

  // --- Available ring (2.7.6, 2.7.13.2-3) ---

  /// Puts `head` in the next avail slot, then publishes it by incrementing avail->idx.
  /// Returns whether the driver would now kick the device (2.7.10, Linux
  /// virtqueue_kick_prepare): with EVENT_IDX iff it published the entry at avail_event,
  /// otherwise unless the device set VIRTQ_USED_F_NO_NOTIFY.
  bool offer(std::uint16_t head) {
    const std::uint16_t idx = avail_idx();
    set_avail_entry(static_cast<std::uint16_t>(idx % layout_.size), head);
    set_avail_idx(static_cast<std::uint16_t>(idx + 1));
    if (layout_.event_idx) return vring_need_event(avail_event(), static_cast<std::uint16_t>(idx + 1), idx);
    return (used_flags() & VIRTQ_USED_F_NO_NOTIFY) == 0;
  }

  void set_avail_entry(std::uint16_t slot, std::uint16_t head) {
    put16(layout_.avail.raw() + avail_ring_entry_offset(slot), head);
  }
  [[nodiscard]] std::uint16_t avail_idx() const { return get16(layout_.avail.raw() + 2); }
  void set_avail_idx(std::uint16_t idx) { put16(layout_.avail.raw() + 2, idx); }
  void set_avail_flags(std::uint16_t flags) { put16(layout_.avail.raw(), flags); }
  void set_used_event(std::uint16_t idx) {
    put16(layout_.avail.raw() + used_event_offset(layout_.size), idx);
  }

  // --- Used ring (2.7.8, 2.7.14) ---

  [[nodiscard]] std::uint16_t used_idx() const { return get16(layout_.used.raw() + 2); }
  [[nodiscard]] std::uint16_t used_flags() const { return get16(layout_.used.raw()); }
  [[nodiscard]] std::uint16_t avail_event() const {
    return get16(layout_.used.raw() + avail_event_offset(layout_.size));
  }

  /// Sets used->idx as a previous backend left it, and makes the driver's own cursor agree.
  void set_used_idx(std::uint16_t idx) {
    put16(layout_.used.raw() + 2, idx);
    last_used_ = idx;
  }

  [[nodiscard]] Used used_elem(std::uint16_t slot) const {
    const auto e = ram_.read_obj<UsedElem>(GuestPhysAddr{layout_.used.raw() + used_elem_offset(slot)});
    return {e.id.value(), e.len.value()};
  }

  /// The next used element the driver has not seen yet, if the device published one.
  std::optional<Used> take_used() {
    if (used_idx() == last_used_) return std::nullopt;
    const Used u = used_elem(static_cast<std::uint16_t>(last_used_ % layout_.size));
    ++last_used_;
    return u;
  }

 private:
  void zero(GuestPhysAddr addr, std::uint64_t len) { ram_.write(addr, std::vector<std::byte>(len)); }
  void put16(std::uint64_t addr, std::uint16_t v) {
    Le16 le;
    le = v;
    ram_.write_obj(GuestPhysAddr{addr}, le);
  }
  [[nodiscard]] std::uint16_t get16(std::uint64_t addr) const {
    return ram_.read_obj<Le16>(GuestPhysAddr{addr}).value();
  }

  GuestRam& ram_;
  RingLayout layout_;
  std::uint16_t last_used_ = 0;
};

}  // namespace virtio::test
