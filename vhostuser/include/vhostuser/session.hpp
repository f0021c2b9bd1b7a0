#pragma once
// The back-end side of one vhost-user connection: protocol state and the device's rings.
//
// Session is pure protocol logic with no I/O of its own: the connection feeds it framed
// messages and kicks, sends back what handle() returns, and watches kick fds on its behalf
// through KickWatcher. That keeps the whole state machine testable without sockets, and
// lets any event loop drive it.
//
// Error policy (the front-end is untrusted):
//  - a request that fails and was sent with NEED_REPLY is answered with a non-zero ack and
//    the session goes on (REPLY_ACK);
//  - GET_CONFIG that fails is answered with an empty config (spec: "size 0 ... error");
//  - any other failure returns an error from handle(): the caller drops the connection,
//    which is the only signal a front-end without REPLY_ACK can receive.
// Either way the session never acts on a request it refused.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "vhostuser/device.hpp"
#include "vhostuser/errors.hpp"
#include "vhostuser/memory.hpp"
#include "vhostuser/message.hpp"
#include "vhostuser/request_table.hpp"
#include "vhostuser/transport.hpp"
#include "vhostuser/vring.hpp"

namespace vhostuser {

/// Watches kick eventfds for a session and calls Session::kick when one is readable.
class KickWatcher {
 public:
  virtual ~KickWatcher() = default;
  /// Start watching `fd` (owned by the session, valid until unwatch) for ring `index`,
  /// replacing any earlier fd of that ring.
  virtual void watch_kick(std::uint16_t index, int fd) = 0;
  virtual void unwatch_kick(std::uint16_t index) = 0;
};

class Session {
 public:
  /// `name` prefixes log lines (e.g. the socket path). device and watcher outlive the session.
  Session(std::string name, Device& device, KickWatcher& watcher);
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  /// Decodes and handles one message; returns the reply bytes to send (empty when there is
  /// none) or an error after which the connection must be dropped.
  Result<std::vector<std::byte>> handle(RawMessage raw);

  /// The kick fd of ring `index` was readable (and drained).
  void kick(std::uint16_t index);

  /// The front-end went away: stop every ring and return to the initial state, ready for the
  /// next front-end (spec: a new connection starts from scratch). Resetting a session that
  /// handled nothing since its last reset does nothing, not even call the device.
  void reset();

  [[nodiscard]] std::uint64_t offered_features() const;
  [[nodiscard]] std::uint64_t offered_protocol_features() const;
  [[nodiscard]] std::uint64_t acked_features() const { return acked_features_; }
  [[nodiscard]] std::uint64_t acked_protocol_features() const { return acked_protocol_features_; }
  [[nodiscard]] const Vring& vring(std::uint16_t index) const { return vrings_.at(index); }
  [[nodiscard]] bool ring_active(std::uint16_t index) const { return vrings_.at(index).announced_; }
  [[nodiscard]] const MemoryTable& memory() const { return memory_; }

 private:
  using Reply = std::optional<std::vector<std::byte>>;  // payload of an "always" reply

  Result<Reply> dispatch(const RequestRule& rule, Message& msg);
  Result<void> check_gate(const RequestRule& rule) const;
  std::vector<std::byte> failure_reply(const RequestRule& rule, const Message& msg) const;

  Result<Vring*> ring(std::uint32_t index);
  Result<void> set_features(std::uint64_t features);
  Result<void> set_protocol_features(std::uint64_t features);
  Result<void> set_owner();
  void reset_device();
  Result<void> set_mem_table(Message& msg);
  Result<void> add_mem_reg(Message& msg);
  Result<void> rem_mem_reg(const Message& msg);
  Result<void> set_vring_num(const VringState& s);
  Result<void> set_vring_addr(const VringAddr& a);
  Result<void> set_vring_base(const VringState& s);
  Result<VringState> get_vring_base(const VringState& s);
  Result<void> set_vring_fd(Request request, const VringFd& v, std::vector<UniqueFd>& fds);
  Result<void> set_vring_enable(const VringState& s);
  Result<ConfigPayload> get_config(const ConfigPayload& c) const;
  Result<void> set_config(const ConfigPayload& c);
  Result<void> set_status(std::uint64_t status);

  /// Moves every started ring to the current memory snapshot and tells the device.
  void memory_changed();
  /// Builds the SplitQueue of a ring whose configuration is complete: the ring starts.
  Result<void> start(Vring& v);
  /// Stops a started ring: device told, unfinished chains rewound, base saved.
  void stop(Vring& v);
  /// Tells the device about a change of "active" (started and enabled, not broken).
  void update_activity(Vring& v);
  void deliver_kick(Vring& v);

  std::string name_;
  Device& device_;
  KickWatcher& watcher_;

  bool in_use_ = false;  // a message was handled since the last reset
  bool owned_ = false;
  std::uint64_t acked_features_ = 0;
  std::uint64_t acked_protocol_features_ = 0;
  std::uint8_t status_ = 0;
  MemoryTable memory_;
  std::vector<Vring> vrings_;
};

}  // namespace vhostuser
