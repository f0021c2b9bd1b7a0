#include "virtio/descriptor_chain.hpp"

#include <algorithm>
#include <cstring>

#include "virtio/ring.hpp"

namespace virtio {
namespace {

/// A descriptor table in guest memory: the queue's own, or an indirect one.
struct Table {
  GuestPhysAddr base;
  std::uint32_t size;  ///< entries
};

/// Copies entry `index` of `table` out of guest memory. Only the copy is validated and used:
/// a hostile guest can rewrite the entry between two reads of guest memory, so a field read
/// twice could pass the check and then differ. An indirect table may straddle two regions,
/// so the entry is gathered piecewise.
Result<Descriptor> read_descriptor(const GuestMemory& memory, Table table, std::uint32_t index) {
  const auto addr = table.base.checked_add(std::uint64_t{index} * sizeof(Descriptor));
  if (!addr) return Errc::address_overflow;
  Descriptor desc;
  std::span<std::byte> out = std::as_writable_bytes(std::span{&desc, 1});
  auto copied = memory.for_each_span(*addr, sizeof desc, [&out](std::span<std::byte> piece) {
    std::memcpy(out.data(), piece.data(), piece.size());
    out = out.subspan(piece.size());
  });
  if (!copied) return copied.error();
  return desc;
}

/// Loop guard for a table: a chain visits each entry at most once, and `next` (a le16) can
/// reach at most 2^16 of them however long an indirect table claims to be.
std::uint32_t time_to_live(Table table) { return std::min<std::uint32_t>(table.size, 1U << 16); }

}  // namespace

Result<DescriptorChain> DescriptorChain::walk(std::shared_ptr<const GuestMemory> memory,
                                              GuestPhysAddr desc_table, std::uint16_t head,
                                              const ChainRules& rules) {
  if (head >= rules.queue_size) return Errc::head_out_of_range;
  DescriptorChain chain(head, std::move(memory));
  Table table{desc_table, rules.queue_size};
  std::uint32_t ttl = time_to_live(table);
  std::uint32_t index = head;
  bool in_indirect = false;
  for (;;) {
    if (ttl == 0) return Errc::chain_too_long;
    --ttl;
    const auto desc = read_descriptor(*chain.memory_, table, index);
    if (!desc) return desc.error();
    const std::uint16_t flags = desc->flags.value();

    if ((flags & VIRTQ_DESC_F_INDIRECT) != 0) {
      // 2.7.5.3.1 / 2.7.5.3.2. The WRITE flag of this descriptor is deliberately not looked
      // at: the table's own entries say which buffers are writable.
      if (!rules.indirect) return Errc::indirect_not_negotiated;
      if (in_indirect) return Errc::nested_indirect;
      if ((flags & VIRTQ_DESC_F_NEXT) != 0) return Errc::indirect_with_next;
      const std::uint32_t len = desc->len.value();
      if (len == 0 || len % sizeof(Descriptor) != 0) return Errc::bad_indirect_length;
      // "The first indirect descriptor is located at start of the indirect descriptor table
      // (index 0)" (2.7.5.3). The direct part of the chain ends here: no NEXT.
      table = {GuestPhysAddr{desc->addr.value()}, len / std::uint32_t{sizeof(Descriptor)}};
      ttl = time_to_live(table);
      index = 0;
      in_indirect = true;
      continue;
    }

    const ChainBuffer buffer{GuestPhysAddr{desc->addr.value()}, desc->len.value(),
                             (flags & VIRTQ_DESC_F_WRITE) != 0};
    if (auto appended = chain.append(buffer, rules.max_descriptors); !appended) {
      return appended.error();
    }
    if ((flags & VIRTQ_DESC_F_NEXT) == 0) return chain;
    index = desc->next.value();
    if (index >= table.size) return Errc::next_out_of_range;
  }
}

Result<void> DescriptorChain::append(ChainBuffer buffer, unsigned max_descriptors) {
  const bool follows_writable = readable_count_ != buffers_.size();
  if (!buffer.device_writable && follows_writable) return Errc::readable_after_writable;  // 2.7.4.2
  if (buffers_.size() >= max_descriptors) return Errc::descriptor_limit;
  if (std::uint64_t{readable_bytes_} + writable_bytes_ + buffer.len > UINT32_MAX) {
    return Errc::chain_length_overflow;  // 2.7.5.2
  }
  if (auto mapped = memory_->check_range(buffer.addr, buffer.len); !mapped) return mapped;

  buffers_.push_back(buffer);
  if (buffer.device_writable) {
    writable_bytes_ += buffer.len;
  } else {
    ++readable_count_;
    readable_bytes_ += buffer.len;
  }
  return {};
}

}  // namespace virtio
