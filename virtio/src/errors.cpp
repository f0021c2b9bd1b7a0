#include "virtio/errors.hpp"

#include <string>

namespace virtio {
namespace {

class Category final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "virtio"; }
  std::string message(int ev) const override {
    switch (static_cast<Errc>(ev)) {
      case Errc::unmapped_address: return "guest address range not mapped";
      case Errc::address_overflow: return "guest address range wraps around";
      case Errc::overlapping_regions: return "guest memory regions overlap";
      case Errc::not_contiguous: return "ring area spans two memory regions";
      case Errc::misaligned: return "ring area misaligned";
      case Errc::bad_queue_size: return "queue size not a power of two in 1..32768";
      case Errc::avail_index_ahead: return "avail index more than a queue size ahead";
      case Errc::head_out_of_range: return "descriptor head index out of range";
      case Errc::next_out_of_range: return "descriptor next index out of range";
      case Errc::chain_too_long: return "descriptor chain longer than its table (loop)";
      case Errc::nested_indirect: return "indirect descriptor inside an indirect table";
      case Errc::bad_indirect_length: return "indirect table length not a non-zero multiple of 16";
      case Errc::indirect_with_next: return "descriptor has both INDIRECT and NEXT";
      case Errc::indirect_not_negotiated: return "indirect descriptor without VIRTIO_F_INDIRECT_DESC";
      case Errc::readable_after_writable: return "device-readable descriptor after a writable one";
      case Errc::chain_length_overflow: return "descriptor chain longer than 4 GiB";
      case Errc::descriptor_limit: return "descriptor chain has more buffers than the device accepts";
      case Errc::too_many_in_flight: return "more chains in flight than the queue size";
      case Errc::nothing_in_flight: return "used buffer pushed with no chain in flight";
      case Errc::short_chain: return "descriptor chain shorter than required";
    }
    return "unknown virtio error";
  }
};

}  // namespace

const boost::system::error_category& error_category() noexcept {
  static const Category category;
  return category;
}

}  // namespace virtio
