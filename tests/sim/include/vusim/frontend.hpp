#pragma once
// The front-end end of a vhost-user socket, behaving as QEMU's hw/virtio/vhost-user.c does.
//
// One method per request QEMU sends. Each builds the payload from the wire structs of
// vhostuser/wire.hpp, sends it (fds as SCM_RIGHTS on the header's sendmsg), and for requests
// with a reply waits for it and checks it as QEMU does (vhost_user_read_header,
// vhost_user_get_u64, process_message_reply): the request id echoed, flags exactly
// version|REPLY, and the exact payload size. Anything else is a Fault::bad_reply, which is
// where QEMU fails the device with -EPROTO.
//
// Requests without a reply of their own take a Wait, the choice QEMU makes per call site:
//  - Wait::none: sent and forgotten;
//  - Wait::reply_ack: NEED_REPLY is set, and the ack awaited, only when REPLY_ACK was
//    negotiated (SET_MEM_TABLE, ADD/REM_MEM_REG, SET_CONFIG: process_message_reply);
//  - Wait::enforce: as reply_ack, but without REPLY_ACK a GET_FEATURES round trip follows as
//    a barrier (QEMU 8.2 enforce_reply(), used for SET_VRING_ENABLE).
// QEMU never sets NEED_REPLY unless REPLY_ACK was negotiated, and neither does this class
// (except through send(), which sends whatever it is given).
//
// Every wait has a deadline (Options::timeout): replies are awaited with poll(2), writes time
// out through SO_SNDTIMEO. A backend that does not answer in time is a Fault::timeout naming
// the request, never a hang; a closed connection is a Fault::closed.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "vhostuser/transport.hpp"
#include "vhostuser/unique_fd.hpp"
#include "vhostuser/wire.hpp"
#include "vusim/failure.hpp"

namespace vusim {

enum class Wait { none, reply_ack, enforce };

class Frontend {
 public:
  struct Options {
    /// Deadline for each reply, each socket write and the disconnect handshake.
    std::chrono::milliseconds timeout{5000};
    /// Receives one line per message sent ("->") or received ("<-"); empty: no trace.
    std::function<void(std::string_view)> trace{};
  };

  /// Connects to a listening backend (QEMU's `-chardev socket,path=`, client mode).
  static Result<Frontend> connect(const std::filesystem::path& socket, Options options);
  /// Uses an already connected stream socket (a socketpair in tests).
  static Result<Frontend> adopt(vhostuser::UniqueFd socket, Options options);

  // --- negotiation ---------------------------------------------------------------------
  Result<std::uint64_t> get_features();
  Result<void> set_features(std::uint64_t features, Wait wait = Wait::none);
  Result<std::uint64_t> get_protocol_features();
  /// Also records the value: it decides NEED_REPLY for every later request.
  Result<void> set_protocol_features(std::uint64_t features);
  Result<void> set_owner();
  Result<void> reset_owner();
  Result<void> reset_device();
  Result<std::uint64_t> get_queue_num();
  Result<std::uint64_t> get_max_mem_slots();
  Result<std::uint64_t> get_status();
  Result<void> set_status(std::uint64_t status);

  // --- memory --------------------------------------------------------------------------
  /// One fd per region, in the same order. QEMU sends only the regions in use (8 + 32 * n).
  Result<void> set_mem_table(std::span<const vhostuser::MemRegion> regions, std::span<const int> fds,
                             Wait wait = Wait::reply_ack);
  Result<void> add_mem_reg(const vhostuser::MemRegion& region, int fd, Wait wait = Wait::reply_ack);
  Result<void> rem_mem_reg(const vhostuser::MemRegion& region, Wait wait = Wait::reply_ack);

  // --- vrings --------------------------------------------------------------------------
  Result<void> set_vring_num(std::uint32_t index, std::uint32_t num);
  Result<void> set_vring_base(std::uint32_t index, std::uint32_t base);
  /// Ring addresses are the front-end's own virtual addresses (GuestRam::qva).
  Result<void> set_vring_addr(const vhostuser::VringAddr& addr);
  /// Stops the ring; returns the reply (index, next avail index).
  Result<vhostuser::VringState> get_vring_base(std::uint32_t index);
  /// fd < 0 sends the "no fd" flag (bit 8) instead of an fd.
  Result<void> set_vring_kick(std::uint32_t index, int fd);
  Result<void> set_vring_call(std::uint32_t index, int fd);
  Result<void> set_vring_err(std::uint32_t index, int fd);
  Result<void> set_vring_enable(std::uint32_t index, bool enable, Wait wait = Wait::none);

  // --- config space --------------------------------------------------------------------
  /// The reply must be exactly 12 + size bytes (QEMU: "Received bad msg size").
  Result<std::vector<std::byte>> get_config(std::uint32_t offset, std::uint32_t size);
  Result<void> set_config(std::uint32_t offset, std::span<const std::byte> data, std::uint32_t flags = 0,
                          Wait wait = Wait::reply_ack);

  // --- raw access, for malformed-input tests ------------------------------------------
  /// Sends a header built from the arguments (version 1 | flags, size = payload size).
  Result<void> send(std::uint32_t request, std::uint32_t flags, std::span<const std::byte> payload,
                    std::span<const int> fds = {});
  /// Sends `header` as given followed by `body`, whatever the header claims.
  Result<void> send_raw(const vhostuser::Header& header, std::span<const std::byte> body,
                        std::span<const int> fds = {});
  /// The next message from the backend, unchecked; Fault::closed on EOF or reset.
  Result<vhostuser::RawMessage> receive();
  /// Waits for the reply to `request` and checks it as QEMU does; `size` is the exact
  /// payload size expected (nullopt: any size up to the protocol limit).
  Result<vhostuser::RawMessage> receive_reply(vhostuser::Request request, std::optional<std::uint32_t> size);

  /// Orderly close: shuts down our write side and waits for the backend to close its end,
  /// so that, once this returns, the backend has let go of the connection (also fine if it
  /// closed first). A message arriving meanwhile is a Fault::bad_reply (nobody asked).
  Result<void> disconnect();

  /// Protocol features acknowledged with set_protocol_features().
  [[nodiscard]] std::uint64_t protocol_features() const { return protocol_features_; }
  [[nodiscard]] bool reply_ack() const;
  [[nodiscard]] int native_handle() const { return socket_.get(); }

 private:
  Frontend(vhostuser::UniqueFd socket, Options options);

  /// Sends a request that has no reply of its own and honours `wait`.
  Result<void> command(vhostuser::Request request, std::span<const std::byte> payload,
                       std::span<const int> fds, Wait wait);
  /// Sends a request with a reply and returns the checked reply.
  Result<vhostuser::RawMessage> query(vhostuser::Request request, std::span<const std::byte> payload,
                                      std::optional<std::uint32_t> reply_size);
  Result<std::uint64_t> query_u64(vhostuser::Request request);
  Result<void> await_ack(vhostuser::Request request);
  Result<void> set_vring_fd(vhostuser::Request request, std::uint32_t index, int fd);
  void trace(std::string_view line) const;

  vhostuser::UniqueFd socket_;
  Options options_;
  vhostuser::MessageReader reader_{vhostuser::Direction::replies};
  std::uint64_t protocol_features_ = 0;
};

}  // namespace vusim
