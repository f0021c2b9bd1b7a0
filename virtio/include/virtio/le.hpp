#pragma once
// Little-endian field types for structures that live in guest memory.
//
// Virtio 1.x: "the device's ring and header fields are little-endian" (virtio spec 2.4, and
// 1.4 "Structure Specifications"). Boost.Endian's buffer types store the bytes in wire order
// and only yield a native value through .value(), so a field read without conversion does not
// compile. The "_at" (aligned) flavour keeps the natural alignment, which the static_asserts
// on every ring and packet structure rely on.
#include <boost/endian/buffers.hpp>

namespace virtio {

using Le16 = boost::endian::little_uint16_buf_at;
using Le32 = boost::endian::little_uint32_buf_at;
using Le64 = boost::endian::little_uint64_buf_at;

/// Byte-aligned variants for packed wire headers whose fields are not naturally aligned
/// (the 44-byte virtio-vsock header, virtio spec 5.10.6).
namespace unaligned {
using Le16 = boost::endian::little_uint16_buf_t;
using Le32 = boost::endian::little_uint32_buf_t;
using Le64 = boost::endian::little_uint64_buf_t;
static_assert(alignof(Le16) == 1 && alignof(Le32) == 1 && alignof(Le64) == 1);
}  // namespace unaligned

static_assert(sizeof(Le16) == 2 && alignof(Le16) == 2);
static_assert(sizeof(Le32) == 4 && alignof(Le32) == 4);
static_assert(sizeof(Le64) == 8 && alignof(Le64) == 8);

}  // namespace virtio
