#include "vhostuser/errors.hpp"

#include <string>

namespace vhostuser {
namespace {

class Category final : public boost::system::error_category {
 public:
  const char* name() const noexcept override { return "vhost-user"; }
  std::string message(int ev) const override {
    switch (static_cast<Errc>(ev)) {
      case Errc::unknown_request: return "unknown request";
      case Errc::bad_version: return "header version is not 1";
      case Errc::unexpected_reply_flag: return "request carries the REPLY flag";
      case Errc::oversized_message: return "payload larger than the protocol limit";
      case Errc::wrong_size: return "payload size does not match the request";
      case Errc::wrong_fd_count: return "wrong number of file descriptors";
      case Errc::bad_payload: return "payload field out of range";
      case Errc::truncated_fds: return "too many file descriptors (control data truncated)";
      case Errc::bad_reply: return "reply does not answer the request";
      case Errc::feature_not_negotiated: return "request needs a feature that was not negotiated";
      case Errc::feature_not_offered: return "feature bits that were never offered";
      case Errc::bad_vring_index: return "vring index out of range";
      case Errc::bad_queue_size: return "queue size not a power of two within the device maximum";
      case Errc::no_memory_table: return "no memory table yet";
      case Errc::unmapped_ring: return "ring address outside guest memory";
      case Errc::bad_memory_region: return "invalid memory region";
      case Errc::already_owned: return "session already has an owner";
      case Errc::ring_busy: return "not allowed while the ring is started";
      case Errc::not_supported: return "not supported by this back-end";
      case Errc::config_out_of_range: return "config access beyond the config space";
      case Errc::peer_closed: return "peer closed the connection";
    }
    return "unknown vhost-user error";
  }
};

}  // namespace

const boost::system::error_category& error_category() noexcept {
  static const Category category;
  return category;
}

}  // namespace vhostuser
