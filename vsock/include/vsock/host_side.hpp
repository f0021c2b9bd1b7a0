#pragma once
// The host side of one VM's vsock device: hybrid vsock over AF_UNIX.
//
//  - Host-initiated: applications connect to `uds_path` (SOCK_STREAM) or
//    `<uds_path>_seqpacket` (SOCK_SEQPACKET) and send "CONNECT <port>\n". The daemon picks a
//    host-side port, sends REQUEST to the guest, and on RESPONSE answers "OK <host port>\n"
//    (the host-side port, as Firecracker and Cloud Hypervisor do; vhost-device-vsock sends
//    the guest port instead).
//  - Guest-initiated: a REQUEST to CID 2 port P connects to "<uds_path>_<P>" with the
//    guest socket's type; if that fails the guest gets RST at once.
//
// HostSide owns the connections, watches their sockets on the device's executor (reads
// only while the connection can take data, writes only while it holds data), runs their
// timers, and hands RX work to the device in round-robin order.
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/asio/any_io_executor.hpp>

#include "vhostuser/errors.hpp"
#include "vhostuser/liveness.hpp"
#include "virtio/chain_io.hpp"
#include "virtio/descriptor_chain.hpp"
#include "vsock/config.hpp"
#include "vsock/connection.hpp"
#include "vsock/counters.hpp"
#include "vsock/packet.hpp"

namespace vsock {

class HostSide {
 public:
  /// `rx_wanted` is called (on the executor) when a connection has something for the guest.
  /// Refusals are counted in `counters` (drops; credit_stalls of connections that ended),
  /// which must outlive the host side.
  HostSide(boost::asio::any_io_executor executor, const DeviceConfig& config, DeviceCounters& counters,
           std::function<void()> rx_wanted);
  ~HostSide();
  HostSide(const HostSide&) = delete;
  HostSide& operator=(const HostSide&) = delete;

  /// Binds the host listeners (stale sockets replaced, live ones refused).
  vhostuser::Result<void> listen();
  /// Closes listeners and connections, removes the socket files.
  void close();

  /// Whether SEQPACKET was negotiated (guest REQUESTs of that type are refused otherwise).
  void set_seqpacket(bool on) { seqpacket_ = on; }

  /// A guest packet addressed to CID 2. Returns a connection-less reply to send (an RST for
  /// a packet of no connection), if any.
  std::optional<Header> on_guest_packet(const Header& packet, virtio::ChainReader& payload);

  /// A packet the device refused (bad length, unsupported type...). If it belongs to a
  /// connection, that connection is reset on both ends; otherwise the RST to send, if any.
  std::optional<Header> on_bad_packet(const Header& packet, const std::string& why);

  [[nodiscard]] bool has_rx() const { return !rx_ready_.empty(); }
  /// Lets the next connection in line write one packet into `rx`; see Connection::produce_rx.
  std::optional<std::uint32_t> produce_rx(const virtio::DescriptorChain& rx);

  /// The guest's side of every connection is gone (driver reset, front-end gone): close the
  /// host sockets.
  void guest_reset(const char* why);

  [[nodiscard]] std::size_t connection_count() const { return connections_.size(); }

  /// A connection as operators see it.
  struct ConnectionInfo {
    Connection::Endpoints ends;
    Connection::State state;
    ConnectionCounters counters;
    std::size_t pending_tx_bytes;  ///< guest bytes the host application has not taken yet
  };
  [[nodiscard]] std::vector<ConnectionInfo> connections() const;
  /// Credit stalls of every connection the VM had, the live ones included.
  [[nodiscard]] std::uint64_t credit_stalls() const;

  struct Key {
    std::uint32_t local_port;
    std::uint32_t peer_port;
    friend auto operator<=>(const Key&, const Key&) = default;
  };
  class Listener;
  class Handshake;
  struct Entry;

 private:
  friend class Listener;
  friend class Handshake;

  [[nodiscard]] bool admit(const char* who) const;
  void on_accepted(vhostuser::UniqueFd fd, Type type);
  void on_connect_line(Handshake& handshake, std::uint32_t port);
  std::optional<Header> connect_to_host(const Header& request);
  std::uint32_t allocate_port(std::uint32_t peer_port);
  void add(Key key, Connection conn);
  /// Forgets every connection (sockets close), keeping their counters in the VM's.
  void drop_all_connections();
  /// Re-arms watchers and the timer after any change, queues RX work, drops finished
  /// connections.
  void sync(const Key& key);
  void arm_read(const Key& key, Entry& e);
  void arm_write(const Key& key, Entry& e);
  void arm_timer(const Key& key, Entry& e);

  vhostuser::Liveness live_;
  boost::asio::any_io_executor executor_;
  DeviceConfig config_;
  DeviceCounters& counters_;
  Connection::Limits limits_;
  std::function<void()> rx_wanted_;
  bool seqpacket_ = false;
  std::unique_ptr<Listener> stream_listener_;
  std::unique_ptr<Listener> seqpacket_listener_;
  std::map<Key, std::unique_ptr<Entry>> connections_;
  std::map<Handshake*, std::unique_ptr<Handshake>> handshakes_;
  std::deque<Key> rx_ready_;
  std::uint32_t next_port_ = 1u << 30;
};

}  // namespace vsock
