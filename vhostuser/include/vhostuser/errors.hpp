#pragma once
// Errors of the vhost-user layer, in a boost::system error category so that they travel in
// boost::system::result<T> next to system errors (errno) and compare against the enum in tests.
#include <boost/system/error_code.hpp>
#include <boost/system/result.hpp>

namespace vhostuser {

enum class Errc {
  // Codec: the message itself is malformed.
  unknown_request = 1,     ///< request id not in the protocol (1..43)
  bad_version,             ///< flags version bits are not 1
  unexpected_reply_flag,   ///< a request with the REPLY bit set
  oversized_message,       ///< header size above the limit: refused before reading the body
  wrong_size,              ///< payload size does not fit the request's layout
  wrong_fd_count,          ///< fds attached do not match what the request carries
  bad_payload,             ///< a field of the payload is out of its legal range
  truncated_fds,           ///< more fds than the receive buffer holds (MSG_CTRUNC)
  bad_reply,               ///< (frontend side) a reply that does not answer the request
  // Session: the message is well formed but not acceptable now.
  feature_not_negotiated,  ///< the request needs a (protocol) feature that was not negotiated
  feature_not_offered,     ///< SET_(PROTOCOL_)FEATURES with bits we never offered
  bad_vring_index,         ///< vring index beyond the device's queues
  bad_queue_size,          ///< not a power of two, or above the device maximum
  no_memory_table,         ///< ring addresses given before any memory table
  unmapped_ring,           ///< a ring address outside every region
  bad_memory_region,       ///< overlapping / duplicate / unknown region, or too many
  already_owned,           ///< a second SET_OWNER
  ring_busy,               ///< the request is not allowed while the ring is started
  not_supported,           ///< a request or mode this backend does not implement
  config_out_of_range,     ///< GET/SET_CONFIG beyond the device's config space
  // Transport.
  peer_closed,             ///< orderly EOF from the peer
};

const boost::system::error_category& error_category() noexcept;

inline boost::system::error_code make_error_code(Errc e) noexcept {
  return {static_cast<int>(e), error_category()};
}

template <class T>
using Result = boost::system::result<T>;

}  // namespace vhostuser

template <>
struct boost::system::is_error_code_enum<vhostuser::Errc> : std::true_type {};
