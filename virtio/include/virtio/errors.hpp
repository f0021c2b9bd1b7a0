#pragma once
// Errors of the virtio layer, as a boost::system error category so that they travel inside
// boost::system::result<T> and compare against the enum in tests.
#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>

namespace virtio {

enum class Errc {
  // Guest memory.
  unmapped_address = 1,    ///< some byte of the range lies outside every region
  address_overflow,        ///< addr + len wraps past 2^64
  overlapping_regions,     ///< a memory table whose regions overlap
  not_contiguous,          ///< a ring area that spans two regions
  misaligned,              ///< a ring area that violates the spec's alignment
  // Descriptor chains.
  bad_queue_size,          ///< not a power of two in 1..32768
  avail_index_ahead,       ///< avail->idx runs more than queue size ahead of the device
  head_out_of_range,       ///< head index >= queue size
  next_out_of_range,       ///< next index >= table size
  chain_too_long,          ///< more descriptors than the table holds: a loop
  nested_indirect,         ///< INDIRECT inside an indirect table
  bad_indirect_length,     ///< indirect table length 0 or not a multiple of 16
  indirect_with_next,      ///< INDIRECT and NEXT on one descriptor
  indirect_not_negotiated, ///< INDIRECT used without VIRTIO_F_INDIRECT_DESC
  readable_after_writable, ///< a device-readable buffer after a device-writable one
  chain_length_overflow,   ///< total chain length exceeds 2^32 - 1
  descriptor_limit,        ///< more buffers in one chain than the device accepts
  // Queue state.
  too_many_in_flight,      ///< a chain offered while queue-size chains are already in flight
  nothing_in_flight,       ///< a used buffer pushed with no chain in flight
  // Chain streams.
  short_chain,             ///< fewer bytes in the chain than the caller needs
};

const boost::system::error_category& error_category() noexcept;

inline boost::system::error_code make_error_code(Errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

template <class T>
using Result = boost::system::result<T>;

}  // namespace virtio

template <>
struct boost::system::is_error_code_enum<virtio::Errc> : std::true_type {};
