#pragma once
// One-line descriptions of vhost-user messages for the simulator's trace (--verbose), in
// the format of the QEMU 7.2 reference trace: "-> 13 SET_VRING_CALL flags=0x1 size=8 fds=1
// index=0". Payloads are decoded when their size matches the request's layout, else dumped.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "vhostuser/transport.hpp"

namespace vusim {

std::string describe_request(const vhostuser::Header& header, std::span<const std::byte> payload,
                             std::size_t fds);
std::string describe_reply(const vhostuser::RawMessage& reply);

}  // namespace vusim
