#pragma once
// Encoding and decoding of vhost-user messages, for both ends of the socket.
//
// Back-end side: check_request_header() runs on the 12 header bytes alone, so an oversized
// or mis-versioned message is refused before its body is read; decode_request() then checks
// the body and the fds against the request table and yields a typed Message. Front-end side
// (used by the test simulator): encode_request() and check_reply_header(), which applies the
// same rules QEMU applies to replies (vhost_user_read_header/process_message_reply).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>
#include <vector>

#include "vhostuser/errors.hpp"
#include "vhostuser/message.hpp"
#include "vhostuser/wire.hpp"

namespace vhostuser {

/// The bytes of a wire struct, for encoding.
template <class T>
  requires std::is_trivially_copyable_v<T>
std::span<const std::byte> bytes_of(const T& value) {
  return std::as_bytes(std::span<const T, 1>(&value, 1));
}

/// A wire struct decoded from exactly sizeof(T) bytes (memcpy: no aliasing, no alignment).
template <class T>
  requires std::is_trivially_copyable_v<T>
T load(std::span<const std::byte> bytes) {
  T value;
  std::memcpy(&value, bytes.data(), sizeof(T));
  return value;
}

// --- back-end side ---------------------------------------------------------------------

/// Version 1, REPLY bit clear, size within max_payload_size. Failing here means the byte
/// stream cannot be trusted any further: the connection must be dropped.
Result<void> check_request_header(const Header& header);

/// Checks `body` (header.size bytes) and `fds` against the request's row and decodes it.
/// On error the fds are closed (they are owned by the argument).
Result<Message> decode_request(const Header& header, std::span<const std::byte> body,
                               std::vector<UniqueFd> fds);

/// A reply: flags exactly version|REPLY (QEMU refuses anything else), the request id echoed.
std::vector<std::byte> encode_reply(Request request, std::span<const std::byte> payload);

template <class T>
std::vector<std::byte> encode_reply(Request request, const T& payload) {
  return encode_reply(request, bytes_of(payload));
}

// --- front-end side --------------------------------------------------------------------

/// A request with version 1 and the given extra flags (e.g. NEED_REPLY).
std::vector<std::byte> encode_request(Request request, std::uint32_t extra_flags,
                                      std::span<const std::byte> payload);

/// The wire bytes of a typed payload: the inverse of decoding (a VringFd becomes its u64, a
/// MemTable its header and regions).
std::vector<std::byte> encode_payload(const Payload& payload);

/// QEMU's reply checks: the request id echoed, flags == version|REPLY, and, when
/// `expected_size` is given, exactly that payload size.
Result<void> check_reply_header(Request request, const Header& header,
                                std::optional<std::uint32_t> expected_size);

}  // namespace vhostuser
