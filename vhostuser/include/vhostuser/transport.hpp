#pragma once
// Framing of vhost-user messages on an AF_UNIX stream socket, with fd passing.
//
// The spec attaches fds as SCM_RIGHTS ancillary data to the message they belong to (QEMU puts
// them on the sendmsg that carries the header). MessageReader therefore reads the header, then
// exactly `size` body bytes, and never reads into the next message: fds stay with their
// message. Every received fd is owned by a UniqueFd the moment it leaves the kernel.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <vector>

#include "vhostuser/errors.hpp"
#include "vhostuser/unique_fd.hpp"
#include "vhostuser/wire.hpp"

namespace vhostuser {

/// Most fds accepted with one message; more is a protocol error (MSG_CTRUNC). SET_MEM_TABLE
/// carries the most, VHOST_MEMORY_BASELINE_NREGIONS = 8.
inline constexpr std::size_t max_fds_per_message = max_mem_table_regions;

/// A framed message whose header passed check_request_header() (or, on the front-end side,
/// a reply), not yet decoded.
struct RawMessage {
  Header header{};
  std::vector<std::byte> body;
  std::vector<UniqueFd> fds;
};

/// Which header check applies to incoming messages.
enum class Direction {
  requests,  ///< back-end reading front-end requests: check_request_header()
  replies,   ///< front-end reading back-end replies: only the size limit
};

class MessageReader {
 public:
  explicit MessageReader(Direction direction = Direction::requests) : direction_(direction) {}

  /// Reads from `fd` until one message is complete or the socket has nothing more to give.
  /// Returns the message, std::nullopt when a non-blocking socket would block, or an error:
  /// Errc::peer_closed on EOF, a header error (framing can no longer be trusted), or errno.
  Result<std::optional<RawMessage>> read(int fd);

 private:
  enum class Phase { header, body };
  Result<std::size_t> receive(int fd, std::span<std::byte> into);

  Direction direction_;
  Phase phase_ = Phase::header;
  std::size_t have_ = 0;  // bytes of the current phase received so far
  std::array<std::byte, sizeof(Header)> header_bytes_{};
  RawMessage current_;
};

/// Sends one whole message. Blocking sockets: loops over partial writes. Non-blocking
/// sockets: a reply that does not fit the socket buffer means the peer stopped reading, and
/// is reported as EAGAIN rather than buffered without bound.
Result<void> send_message(int fd, std::span<const std::byte> bytes, std::span<const int> fds = {});

}  // namespace vhostuser
