// VMs sharing the daemon's worker pool: one io_context, two worker threads, each VM's device
// and server on a strand of their own, one sibling router (vsock_pool_fixture.hpp, as
// app/vsockd/main.cpp runs them). A VM that cannot make progress (its guest posts no rx
// buffers, its host application does not read, its sibling does not take what it sends, or
// its QEMU went away in the middle of a transfer) must hold no worker thread and no lock
// that another VM needs: the other VMs' transfers, host <-> guest and guest <-> guest,
// complete with every byte in place.
//
// There are more stalled VMs than worker threads, so a stalled VM that kept a thread busy
// or blocked would leave the healthy ones without any. Deadlines only bound a failure;
// nothing waits for time to pass.
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <span>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "assert_ok.hpp"
#include "vsock/device.hpp"
#include "vsock/router.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"
#include "vsock_pool_fixture.hpp"

namespace vusim::vsock_test {
namespace {

using namespace vsock_guest;

constexpr unsigned pool_threads = 2;

/// A VM with CID `cid` on `pool` and `router`, booted, with `rx_buffers` rx buffers.
Result<std::unique_ptr<PooledVm>> start_vm(WorkerPool& pool, vsock::Router& router, std::uint64_t cid,
                                           std::size_t rx_buffers = 64) {
  auto vm = std::make_unique<PooledVm>(
      pool, VmOptions{.cid = cid, .rx_buffers = rx_buffers, .region_mib = 8, .router = &router});
  if (auto ok = vm->boot(); !ok) return Failure{ok.error().fault, fmt::format("CID {} boot: {}", cid, ok.error().message)};
  return vm;
}

/// Opened once by the test thread, waited for (with a deadline) by transfer threads: "the
/// transfer is half done; now the other VMs die".
class Gate {
 public:
  void open() {
    if (!opened_.exchange(true)) promise_.set_value();
  }
  Result<void> wait(std::chrono::milliseconds timeout = 60s) const {
    if (future_.wait_for(timeout) != std::future_status::ready) {
      return Failure{Fault::timeout, fmt::format("the test thread did not open the gate in {} ms", timeout.count())};
    }
    return {};
  }

 private:
  std::promise<void> promise_;
  std::shared_future<void> future_ = promise_.get_future().share();
  std::atomic<bool> opened_{false};
};

/// Opens the gate on the way out of the test, failed or not, so no transfer thread waits for it.
struct OpenOnExit {
  Gate& gate;
  ~OpenOnExit() { gate.open(); }
};

/// The guest of `vm` connects to a host application, and `bytes` go each way; if `halfway`
/// is given, the transfer stops half way until it opens. Both streams must arrive whole.
Result<void> host_guest_transfer(PooledVm& vm, std::uint32_t host_port, std::uint32_t guest_port, std::size_t bytes,
                                 std::uint64_t seed, const Gate* halfway = nullptr) {
  auto e = establish(vm, host_port, guest_port);
  if (!e) return e.error();
  StreamPump pump{.guest = vm.guest(), .conn = e->conn, .host_fd = e->host.get()};
  pump.g2h = pattern(bytes, seed);
  pump.h2g = pattern(bytes, seed + 1);
  pump.shape = rotating_shape;
  if (halfway != nullptr) {
    if (auto ok = pump.run_until(
            [&] { return pump.host_received.size() >= bytes / 2 && pump.guest_received.size() >= bytes / 2; });
        !ok) {
      return ok;
    }
    if (auto ok = halfway->wait(); !ok) return ok;
  }
  if (auto ok = pump.run(); !ok) return ok;
  if (checksum(pump.host_received) != checksum(pump.g2h)) {
    return Failure{Fault::guest, fmt::format("CID {}: guest -> host bytes changed on the way", vm.options_.cid)};
  }
  if (checksum(pump.guest_received) != checksum(pump.h2g)) {
    return Failure{Fault::guest, fmt::format("CID {}: host -> guest bytes changed on the way", vm.options_.cid)};
  }
  return {};
}

/// Both ends of one sibling connection.
struct SiblingPair {
  Conn client;  ///< on the connecting VM
  Conn server;  ///< on the accepting VM
};

/// `from` connects to `to`:`port`; `to`'s guest accepts, advertising `buf_alloc`.
Result<SiblingPair> connect_siblings(PooledVm& from, PooledVm& to, std::uint32_t port, std::uint32_t src_port,
                                     std::uint32_t buf_alloc = 256 * 1024) {
  SiblingPair p{
      .client = Conn{.cid = from.options_.cid, .port = src_port, .peer_port = port, .peer_cid = to.options_.cid},
      .server = Conn{.cid = to.options_.cid,
                     .port = port,
                     .peer_port = src_port,
                     .peer_cid = from.options_.cid,
                     .buf_alloc = buf_alloc}};
  if (auto ok = from.guest().send(p.client.make(op_request)); !ok) return ok.error();
  auto request = to.guest().next();
  if (!request) return request.error();
  if (request->op != op_request || !p.server.matches(*request)) {
    return Failure{Fault::guest, "CID " + std::to_string(to.options_.cid) + " got " + describe(*request)};
  }
  if (auto ok = p.server.on_packet(*request); !ok) return ok.error();
  if (auto ok = to.guest().send(p.server.make(op_response)); !ok) return ok.error();
  auto response = guest_expect(from.guest(), p.client);
  if (!response) return response.error();
  if (response->op != op_response) {
    return Failure{Fault::guest, "CID " + std::to_string(from.options_.cid) + " got " + describe(*response)};
  }
  return p;
}

/// Guests `a` and `b` exchange `rounds` rounds of 192 KiB each way over one connection
/// (within the receiver's 256 KiB window; later rounds need the CREDIT_UPDATEs of earlier
/// ones, which cross the router too); if `halfway` is given, the rounds stop half way until
/// it opens. Every round must arrive whole.
Result<void> sibling_transfer(PooledVm& a, PooledVm& b, std::uint32_t port, std::uint32_t src_port, int rounds,
                              std::uint64_t seed, const Gate* halfway = nullptr) {
  auto pair = connect_siblings(a, b, port, src_port);
  if (!pair) return pair.error();
  for (int round = 0; round < rounds; ++round) {
    if (halfway != nullptr && round == rounds / 2) {
      if (auto ok = halfway->wait(); !ok) return ok;
    }
    for (bool forth : {true, false}) {
      PooledVm& from = forth ? a : b;
      PooledVm& to = forth ? b : a;
      Conn& sending = forth ? pair->client : pair->server;
      Conn& receiving = forth ? pair->server : pair->client;
      const auto data = pattern(192 * 1024, seed + 2 * static_cast<std::uint64_t>(round) + (forth ? 0 : 1));
      if (auto ok = guest_send(from.guest(), sending, data); !ok) return ok;
      auto got = guest_receive(to.guest(), receiving, data.size());
      if (!got) return got.error();
      if (checksum(*got) != checksum(data)) {
        return Failure{Fault::guest, fmt::format("round {}: bytes changed on the way from CID {} to CID {}", round,
                                                 from.options_.cid, to.options_.cid)};
      }
    }
  }
  return {};
}

/// What one guest socket received: RW payloads in order, and whether an RST ended it.
struct Received {
  std::vector<std::byte> bytes;
  bool reset = false;
};

/// Takes `conn`'s packets, whole, until `enough(received)`: RW payloads are consumed and
/// advertised as Linux does, credit packets handled, an RST ends the socket. Anything else,
/// or a packet of another socket, is an error.
Result<void> receive_until(Guest& guest, Conn& conn, Received& received,
                           const std::function<bool(const Received&)>& enough, std::chrono::milliseconds timeout = 10s) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (auto got = guest.collect(); !got) return got.error();
    auto& inbox = guest.inbox();
    while (!enough(received) && !inbox.empty()) {
      Packet p = std::move(inbox.front());
      inbox.pop_front();
      if (!conn.matches(p)) return Failure{Fault::guest, "packet for another socket: " + describe(p)};
      if (auto ok = conn.on_packet(p); !ok) return ok.error();
      switch (p.op) {
        case op_rw:
          received.bytes.insert(received.bytes.end(), p.payload.begin(), p.payload.end());
          conn.consume(p.len);
          break;
        case op_credit_update: break;
        case op_credit_request:
          if (auto ok = guest.send(conn.make(op_credit_update)); !ok) return ok;
          break;
        case op_rst: received.reset = true; break;
        default:
          return Failure{Fault::guest, fmt::format("{} after {} bytes", describe(p), received.bytes.size())};
      }
    }
    if (!received.reset && conn.update_due()) {
      if (auto ok = guest.send(conn.make(op_credit_update)); !ok) return ok;
    }
    if (enough(received)) return {};
    if (Clock::now() >= deadline) {
      return Failure{Fault::timeout, fmt::format("{} bytes{} in {} ms, and no more", received.bytes.size(),
                                                 received.reset ? " and RST" : "", timeout.count())};
    }
    if (auto ok = guest.wait({}, deadline); !ok) return ok;
  }
}

/// Once every tx chain of `vm` is back: what its guest still gets for `conn` are RSTs, the
/// router's for the connection and the device's for each packet that found no route any
/// more; anything else is an error. A round trip on the VM's strand first: the handler that
/// returned the last chain queued its RST and wrote it to rx before it finished.
Result<void> take_resets(PooledVm& vm, const Conn& conn) {
  vm.backend.on_strand([] { return 0; });
  if (auto got = vm.guest().collect(); !got) return got.error();
  auto& inbox = vm.guest().inbox();
  while (!inbox.empty()) {
    const Packet p = std::move(inbox.front());
    inbox.pop_front();
    if (!conn.matches(p) || p.op != op_rst) return Failure{Fault::guest, "expected only RSTs, got " + describe(p)};
  }
  return {};
}

/// Whether `got` is the start of `sent`.
bool is_prefix(std::span<const std::byte> got, std::span<const std::byte> sent) {
  return got.size() <= sent.size() && std::equal(got.begin(), got.end(), sent.begin());
}

TEST(VsockThreadPool, StalledVmsHoldUpNoOtherVm) {
  WorkerPool pool(pool_threads);
  vsock::Router router;  // outlives the VMs, which leave it when they close
  auto deaf = start_vm(pool, router, 3, /*rx_buffers=*/0);
  ASSERT_OK(deaf);
  auto held = start_vm(pool, router, 4);
  ASSERT_OK(held);
  auto unread = start_vm(pool, router, 5);
  ASSERT_OK(unread);
  auto host_vm = start_vm(pool, router, 6);
  ASSERT_OK(host_vm);
  auto sibling_a = start_vm(pool, router, 7);
  ASSERT_OK(sibling_a);
  auto sibling_b = start_vm(pool, router, 8);
  ASSERT_OK(sibling_b);

  // VM 3's guest never posts an rx buffer. Its host applications connect, write their
  // CONNECT line and as much as their socket takes, and never read: their REQUESTs wait for
  // an rx buffer.
  std::vector<UniqueFd> clients;
  for (std::uint32_t i = 0; i < 4; ++i) {
    auto client = connect_to((*deaf)->backend.uds());
    ASSERT_OK(client);
    ASSERT_OK(write_all(client->get(), fmt::format("CONNECT {}\n", 1000 + i)));
    const auto block = pattern(64 * 1024, i);
    for (int n = 0; n < 64; ++n) {  // until the socket is full (4 MiB at most)
      if (::send(client->get(), block.data(), block.size(), MSG_NOSIGNAL | MSG_DONTWAIT) < 0) break;
    }
    clients.push_back(std::move(*client));
  }
  // VM 3's guest connects to a host port nobody listens on, over and over. Each RST that
  // answers it waits for an rx buffer; once max_pending_replies wait, the device takes no
  // more tx chains, and 64 of these stay in the tx ring for good.
  Guest& deaf_guest = (*deaf)->guest();
  for (std::uint32_t i = 0; i < vsock::VsockDevice::max_pending_replies + 64; ++i) {
    Conn c{.cid = 3, .port = 30000 + i, .peer_port = 9};
    ASSERT_OK(deaf_guest.send(c.make(op_request)));
  }
  // VM 4 sends to VM 3: its REQUEST waits for an rx buffer there, and VM 4's tx queue waits
  // with it (one packet in flight per sender).
  Conn to_deaf{.cid = 4, .port = 40000, .peer_port = 5000, .peer_cid = 3};
  ASSERT_OK((*held)->guest().send(to_deaf.make(op_request)));
  for (std::uint64_t i = 0; i < 32; ++i) ASSERT_OK((*held)->guest().send(to_deaf.make(op_rw, pattern(1024, i))));
  // VM 5's guest sends to a host application that accepted and never reads, until the
  // socket, the device's buffer and so the guest's credit are full.
  auto unread_conn = establish(**unread, 7000, 41000);
  ASSERT_OK(unread_conn);
  StreamPump blocked{.guest = (*unread)->guest(), .conn = unread_conn->conn, .host_fd = unread_conn->host.get()};
  blocked.g2h = pattern(16 << 20, 9);
  blocked.host_reads = false;
  ASSERT_OK(blocked.run_until([&] { return blocked.out_of_credit; }, 30s));

  // Meanwhile, on the same two worker threads: a host application and VM 6 stream 2 MiB
  // each way, and VMs 7 and 8 exchange 6 x 192 KiB each way, all at once.
  auto host_traffic =
      std::async(std::launch::async, [&] { return host_guest_transfer(**host_vm, 7001, 42000, 2 << 20, 100); });
  auto sibling_traffic =
      std::async(std::launch::async, [&] { return sibling_transfer(**sibling_a, **sibling_b, 6000, 43000, 6, 200); });
  EXPECT_OK(host_traffic.get());
  EXPECT_OK(sibling_traffic.get());

  // The stalls lasted throughout: VM 3 still holds tx chains back, VM 4 got none back (its
  // first packet is still on its way), VM 5's host application still has nothing.
  ASSERT_OK(deaf_guest.collect());
  EXPECT_GT(deaf_guest.tx().outstanding(), 0U);
  ASSERT_OK((*held)->guest().collect());
  EXPECT_EQ((*held)->guest().tx().outstanding(), 33U);
  EXPECT_TRUE(blocked.host_received.empty());
}

TEST(VsockThreadPool, VmsWhoseFrontEndDiesMidTransferHoldUpNoOtherVm) {
  WorkerPool pool(pool_threads);
  vsock::Router router;
  std::vector<std::unique_ptr<PooledVm>> vms;
  for (std::uint64_t cid = 3; cid <= 11; ++cid) {
    auto vm = start_vm(pool, router, cid);
    ASSERT_OK(vm);
    vms.push_back(std::move(*vm));
  }
  PooledVm& host_vm = *vms[0];         // CID 3: streams with a host application throughout
  PooledVm& sibling_a = *vms[1];       // CIDs 4 and 5: exchange data throughout
  PooledVm& sibling_b = *vms[2];
  PooledVm& dies_with_host = *vms[3];  // CID 6: dies streaming with a host application
  PooledVm& dies_sending = *vms[4];    // CID 7: dies sending to CID 8
  PooledVm& receiver = *vms[5];        // CID 8
  PooledVm& dies_receiving = *vms[6];  // CID 9: dies while CID 10's packets wait for it
  PooledVm& sender = *vms[7];          // CID 10: then talks to CID 11
  PooledVm& other = *vms[8];           // CID 11

  Gate deaths;
  auto host_traffic = std::async(std::launch::async,
                                 [&] { return host_guest_transfer(host_vm, 7000, 42000, 2 << 20, 100, &deaths); });
  auto sibling_traffic = std::async(
      std::launch::async, [&] { return sibling_transfer(sibling_a, sibling_b, 6000, 43000, 6, 200, &deaths); });
  OpenOnExit open_anyway{deaths};

  // CID 6 streams with a host application, both ways, and stops half way through.
  auto with_host = establish(dies_with_host, 7100, 44000);
  ASSERT_OK(with_host);
  StreamPump half{.guest = dies_with_host.guest(), .conn = with_host->conn, .host_fd = with_host->host.get()};
  half.g2h = pattern(1 << 20, 300);
  half.h2g = pattern(1 << 20, 301);
  ASSERT_OK(half.run_until([&] { return half.host_received.size() >= 128 * 1024 && half.guest_received.size() >= 128 * 1024; }));

  // CID 7 sends 96 KiB to CID 8, which has read 32 KiB of it.
  auto seven_eight = connect_siblings(dies_sending, receiver, 5100, 45000);
  ASSERT_OK(seven_eight);
  const auto from_seven = pattern(96 * 1024, 400);
  ASSERT_OK(guest_send(dies_sending.guest(), seven_eight->client, from_seven));
  Received at_eight;
  ASSERT_OK(receive_until(receiver.guest(), seven_eight->server, at_eight,
                          [](const Received& r) { return r.bytes.size() >= 32 * 1024; }));

  // CID 10 sends 320 KiB to CID 9, whose guest reads nothing: its 64 rx buffers hold less
  // than that, so a packet of CID 10 waits for CID 9, and CID 10's tx queue behind it.
  auto ten_nine = connect_siblings(sender, dies_receiving, 5200, 46000, /*buf_alloc=*/1 << 20);
  ASSERT_OK(ten_nine);
  ASSERT_OK(guest_send(sender.guest(), ten_nine->client, pattern(320 * 1024, 500)));

  // QEMU goes away for CIDs 6, 7 and 9 (their vhost-user sockets close), while the other
  // transfers run on.
  dies_with_host.kill_frontend();
  dies_sending.kill_frontend();
  dies_receiving.kill_frontend();
  deaths.open();

  // CID 6's host application: its socket ends, after some more of what the guest had sent.
  auto rest = read_until_closed(with_host->host.get());
  ASSERT_OK(rest);
  half.host_received.insert(half.host_received.end(), rest->begin(), rest->end());
  EXPECT_TRUE(is_prefix(half.host_received, half.g2h)) << half.host_received.size() << " bytes";
  // CID 8: more of what CID 7 had sent, never anything else, then RST.
  ASSERT_OK(receive_until(receiver.guest(), seven_eight->server, at_eight, [](const Received& r) { return r.reset; }));
  EXPECT_TRUE(is_prefix(at_eight.bytes, from_seven)) << at_eight.bytes.size() << " bytes";
  // CID 10: RST for its connection to CID 9, every tx chain back (the packets that had not
  // left yet are answered with RST too), and then a whole transfer with CID 11.
  auto rst = guest_expect(sender.guest(), ten_nine->client);
  ASSERT_OK(rst);
  EXPECT_EQ(rst->op, op_rst) << describe(*rst);
  ASSERT_OK(sender.guest().drain_tx());
  ASSERT_OK(take_resets(sender, ten_nine->client));
  auto ten_eleven = connect_siblings(sender, other, 5300, 47000);
  ASSERT_OK(ten_eleven);
  const auto to_eleven = pattern(192 * 1024, 600);
  ASSERT_OK(guest_send(sender.guest(), ten_eleven->client, to_eleven));
  auto at_eleven = guest_receive(other.guest(), ten_eleven->server, to_eleven.size());
  ASSERT_OK(at_eleven);
  EXPECT_EQ(checksum(*at_eleven), checksum(to_eleven));

  // The transfers that ran across the deaths.
  EXPECT_OK(host_traffic.get());
  EXPECT_OK(sibling_traffic.get());
}

}  // namespace
}  // namespace vusim::vsock_test
