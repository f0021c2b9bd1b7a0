#pragma once
// The sibling router: which VMs of one daemon reach each other, and the sibling connections
// between them.
//
// Every VM attached to the router belongs to a set of groups; a guest reaches another VM's
// CID exactly when their sets intersect (vhost-device-vsock's rule, README "Sibling VM
// communication"). Unlike vhost-device-vsock, a packet that cannot be routed is answered
// with RST at once, so the guest's connect() fails fast instead of timing out.
//
// The daemon is no endpoint of a sibling connection: credit runs end to end between the two
// guests and headers are relayed as they are. The router still keeps a table of the sibling
// connections it has seen open (a REQUEST relayed, no RST since), for one reason: when a VM
// goes away (front-end gone, driver reset, removed at run time) or two VMs stop sharing a
// group, the guests on the other side must learn at once that their connections are dead.
// The router then tells each affected VM which RSTs to deliver to its guest.
//
// Thread-safe: each VM runs on one of the daemon's worker threads, and any of them may
// route at any time. The router moves no packet and calls nothing back; it only decides.
// Its answers name a destination by CID; the caller delivers through whatever it attached
// with it (Endpoint), outside the router's lock.
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <boost/system/result.hpp>

#include "vsock/counters.hpp"
#include "vsock/packet.hpp"

namespace vsock {

class Router {
 public:
  using Groups = std::set<std::string, std::less<>>;

  /// What a VM attaches: whatever its device needs to receive relayed packets and resets
  /// (opaque to the router).
  class Endpoint {
   public:
    virtual ~Endpoint() = default;
  };

  /// Why a packet has no route; each is answered with RST to the sender.
  enum class Refusal {
    unknown_cid,        ///< no VM with that CID is attached
    own_cid,            ///< the sender's own CID: a guest's loopback never reaches its device
    not_started,        ///< the VM is configured but its guest driver is not running
    no_shared_group,    ///< the two VMs share no group
    connection_limit,   ///< the sender already has its maximum of sibling connections
  };
  static const char* to_string(Refusal refusal);

  /// An RST the VM `to` must deliver to its guest, for a sibling connection that died.
  struct Reset {
    std::uint64_t to;
    Header rst;
  };

  /// `max_connections`: sibling connections per VM (either side), beyond which a REQUEST is
  /// refused. Each entry of the table is small, but a guest must not grow it without bound.
  explicit Router(std::size_t max_connections = 1024) : max_connections_(max_connections) {}

  /// Adds a VM, not started. Returns false if the CID is taken.
  bool attach(std::uint64_t cid, Groups groups, std::shared_ptr<Endpoint> endpoint);
  /// Removes a VM; its sibling connections die. Returns the RSTs for the other sides.
  std::vector<Reset> detach(std::uint64_t cid);
  /// The VM's guest driver runs (true) or stopped (false: front-end gone, driver reset).
  /// Stopping kills its sibling connections, as detach does.
  std::vector<Reset> set_started(std::uint64_t cid, bool started);
  /// New groups for a VM. Connections to VMs that no longer share a group with it die, on
  /// both sides.
  std::vector<Reset> set_groups(std::uint64_t cid, Groups groups);

  /// Routes a guest packet from VM `packet.src.cid` (the caller checked the source is the
  /// sender's own CID) to VM `packet.dst.cid`, and keeps the connection table up to date
  /// (REQUEST opens an entry, RST closes it). Returns the destination's endpoint.
  boost::system::result<std::shared_ptr<Endpoint>, Refusal> route(const Header& packet);

  /// The endpoint of `cid`, if attached.
  std::shared_ptr<Endpoint> endpoint(std::uint64_t cid) const;
  /// Live sibling connections with `cid` on either side.
  std::size_t connection_count(std::uint64_t cid) const;
  /// A live sibling connection seen from one end, with what the router relayed each way
  /// (routed packets; a packet whose receiver went away meanwhile is counted too).
  struct Connection {
    Address local;
    Address peer;
    std::uint16_t type;
    Traffic sent;      ///< local -> peer
    Traffic received;  ///< peer -> local
  };
  /// The live sibling connections of `cid`, seen from its end.
  std::vector<Connection> connections(std::uint64_t cid) const;
  /// Whether `a` and `b` are attached and share a group.
  bool reachable(std::uint64_t a, std::uint64_t b) const;

 private:
  struct Vm {
    Groups groups;
    std::shared_ptr<Endpoint> endpoint;
    bool started = false;
    std::size_t connections = 0;
  };
  /// A sibling connection, its lower (cid, port) end first so that both directions of the
  /// connection find the same entry.
  struct Key {
    Address low;
    Address high;
    std::uint16_t type;
    friend auto operator<=>(const Key& a, const Key& b) {
      return std::tie(a.low.cid, a.low.port, a.high.cid, a.high.port, a.type) <=>
             std::tie(b.low.cid, b.low.port, b.high.cid, b.high.port, b.type);
    }
    friend bool operator==(const Key&, const Key&) = default;
  };
  static Key key_of(const Header& packet);
  static bool share_a_group(const Groups& a, const Groups& b);

  /// Erases the connections `dies` selects and returns an RST for each end, except for the
  /// ends on VM `departed` (whose guest is gone). Called with the lock held.
  template <class Pred>
  std::vector<Reset> kill_connections(Pred dies, std::uint64_t departed);

  std::size_t max_connections_;
  mutable std::mutex mutex_;
  std::map<std::uint64_t, Vm> vms_;
  /// Traffic of one sibling connection, by direction.
  struct Link {
    Traffic low_to_high;
    Traffic high_to_low;
  };
  std::map<Key, Link> connections_;
};

}  // namespace vsock
