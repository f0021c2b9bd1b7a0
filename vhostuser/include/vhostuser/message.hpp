#pragma once
// A decoded front-end request: the header fields, a typed payload, and the fds that came with
// it. Decoding (codec.hpp) has already checked the payload's size and fd count against the
// request table, so handlers read typed fields and never see raw bytes.
#include <cstddef>
#include <cstdint>
#include <variant>
#include <vector>

#include "vhostuser/unique_fd.hpp"
#include "vhostuser/wire.hpp"

namespace vhostuser {

struct NoPayload {};

/// A u64 payload (features, status, MTU, ...).
struct U64Payload {
  std::uint64_t value;
};

/// SET_VRING_KICK/CALL/ERR, decoded from their u64.
struct VringFd {
  std::uint8_t index;
  bool no_fd;  ///< bit 8: no fd attached (kick: poll the ring; call: do not signal)
};

struct MemTable {
  std::vector<MemRegion> regions;  ///< 1..8, one fd each, in the same order
};

struct ConfigPayload {
  ConfigHeader header;
  std::vector<std::byte> data;  ///< exactly header.size bytes
};

/// A payload this backend never interprets (crypto sessions), kept as bytes.
struct OpaquePayload {
  std::vector<std::byte> bytes;
};

using Payload = std::variant<NoPayload, U64Payload, VringState, VringAddr, VringFd, MemTable,
                             SingleMemRegion, LogInfo, ConfigPayload, VringArea, InflightInfo,
                             IotlbMsg, DeviceStateParams, Uuid, OpaquePayload>;

struct Message {
  Request request{};
  std::uint32_t flags = header_flags::version;
  Payload payload;
  std::vector<UniqueFd> fds;

  [[nodiscard]] bool need_reply() const { return (flags & header_flags::need_reply) != 0; }

  template <class T>
  [[nodiscard]] const T& as() const {
    return std::get<T>(payload);
  }
};

}  // namespace vhostuser
