#pragma once
// The hybrid-vsock handshake a host application sends on the daemon's AF_UNIX socket:
// "CONNECT <port>\n" (Firecracker docs/vsock.md; the same text protocol as Cloud Hypervisor
// and vhost-device-vsock).
//
// Parsed incrementally, byte by byte as they arrive: a command may be split over several
// writes, and the parser never consumes a byte after the newline, which is already payload
// (vhost-device-vsock reads ahead and loses it; see peers.md §4.3). The keyword is
// case-insensitive, the port a decimal u32, the line at most max_line bytes.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <variant>

namespace vsock {

class ConnectParser {
 public:
  /// Longest accepted line including "\n": "CONNECT 4294967295\n" is 19 bytes; 32 leaves
  /// room for extra spaces, like Cloud Hypervisor's 32-byte buffer.
  static constexpr std::size_t max_line = 32;

  struct NeedMore {};
  struct Done {
    std::uint32_t port;
  };
  struct Invalid {
    std::string why;
  };
  using Outcome = std::variant<NeedMore, Done, Invalid>;

  /// Bytes that may still belong to the line. The caller peeks at most this many bytes
  /// (MSG_PEEK), feeds them, and then consumes exactly what feed() reports as used, so
  /// payload sent in the same write as the command stays in the socket.
  [[nodiscard]] std::size_t budget() const { return max_line - line_.size(); }

  /// Consumes bytes up to and including the first '\n' in `bytes`; returns how many were
  /// consumed and the outcome. Bytes after the newline are not consumed.
  std::pair<std::size_t, Outcome> feed(std::span<const std::byte> bytes);

 private:
  Outcome parse() const;
  std::string line_;
};

}  // namespace vsock
