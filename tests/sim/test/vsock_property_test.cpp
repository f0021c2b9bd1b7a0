// Property: whatever the guest's rx buffer layouts, however its tx packets are cut into
// descriptors, and in whatever order host writes, guest writes, guest reads and credit
// updates come, both byte streams of a connection arrive intact, and the device never sends
// beyond the guest's credit (Conn::on_packet checks every RW).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>

#include "rc_require.hpp"
#include "vsock_fixture.hpp"
#include "vsock_guest.hpp"

namespace vusim::vsock_test {
namespace {

using namespace vsock_guest;

using test::require;

/// An rx chain: 1-4 device-writable buffers, some empty, some tiny, maybe in an indirect
/// table. Its total is rarely below a header (the device must return such a buffer unused)
/// and never exactly 44 bytes (RxBufferOfExactlyHeaderSizeDoesNotStallHostData covers that).
ChainLayout draw_rx_layout(bool must_carry_data) {
  ChainLayout layout;
  const auto n = *rc::gen::inRange<std::size_t>(1, 5);
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const auto len = *rc::gen::weightedOneOf<std::uint32_t>({{1, rc::gen::just<std::uint32_t>(0)},
                                                             {2, rc::gen::inRange<std::uint32_t>(1, 64)},
                                                             {6, rc::gen::inRange<std::uint32_t>(64, 4097)},
                                                             {1, rc::gen::inRange<std::uint32_t>(4097, 9000)}});
    layout.segments.push_back({.len = len});
    total += len;
  }
  if (must_carry_data && total < 1024) {
    layout.segments.push_back({.len = static_cast<std::uint32_t>(1024 - total)});
    total = 1024;
  }
  if (total == header_size) layout.segments.back().len += 1;
  if (*rc::gen::inRange(0, 3) == 0) layout.indirect_from = *rc::gen::inRange<std::size_t>(0, layout.segments.size());
  return layout;
}

/// How to cut a tx packet: cut points as fractions (per mille) of its length, sorted, so
/// equal cuts make empty descriptors; maybe an indirect table.
struct TxRecipe {
  std::vector<int> cuts;
  std::optional<std::size_t> indirect_from;
};

TxRecipe draw_recipe() {
  TxRecipe r;
  r.cuts = *rc::gen::container<std::vector<int>>(*rc::gen::inRange<std::size_t>(0, 6), rc::gen::inRange(0, 1001));
  std::sort(r.cuts.begin(), r.cuts.end());
  if (*rc::gen::arbitrary<bool>()) r.indirect_from = *rc::gen::inRange<std::size_t>(0, r.cuts.size() + 1);
  return r;
}

TxShape apply(const TxRecipe& r, std::size_t payload) {
  const std::size_t total = header_size + payload;
  TxShape s;
  std::size_t at = 0;
  for (int c : r.cuts) {
    const std::size_t cut = total * static_cast<std::size_t>(c) / 1000;
    s.segments.push_back(static_cast<std::uint32_t>(cut - at));
    at = cut;
  }
  s.segments.push_back(static_cast<std::uint32_t>(total - at));
  s.indirect_from = r.indirect_from;
  return s;
}

enum class Action { host_write, guest_write, guest_read, credit_update, step };

struct Step {
  Action action;
  std::size_t amount;  ///< bytes to write, or per mille of the unread bytes to read
};

RC_GTEST_PROP(VsockRandom, StreamsArriveIntactWhateverTheLayoutsAndInterleaving, ()) {
  const auto tx_buffer = *rc::gen::element<std::uint32_t>(4096, 16384, 65536, 256 * 1024);
  const auto guest_buf_alloc = *rc::gen::weightedOneOf<std::uint32_t>(
      {{1, rc::gen::inRange<std::uint32_t>(256, 4096)}, {3, rc::gen::inRange<std::uint32_t>(4096, 256 * 1024 + 1)}});
  std::vector<ChainLayout> rx_layouts;
  rx_layouts.push_back(draw_rx_layout(true));
  const auto more_layouts = *rc::gen::inRange<std::size_t>(0, 6);
  for (std::size_t i = 0; i < more_layouts; ++i) rx_layouts.push_back(draw_rx_layout(false));
  const auto rx_posted = *rc::gen::inRange<std::size_t>(1, 65);
  std::vector<TxRecipe> recipes(*rc::gen::inRange<std::size_t>(1, 6));
  for (auto& r : recipes) r = draw_recipe();
  const auto steps = *rc::gen::container<std::vector<Step>>(
      *rc::gen::inRange<std::size_t>(1, 40),
      rc::gen::build<Step>(rc::gen::set(&Step::action, rc::gen::element(Action::host_write, Action::guest_write,
                                                                         Action::guest_read, Action::credit_update,
                                                                         Action::step)),
                           rc::gen::set(&Step::amount, rc::gen::weightedOneOf<std::size_t>(
                                                          {{2, rc::gen::inRange<std::size_t>(1, 4097)},
                                                           {3, rc::gen::inRange<std::size_t>(4097, 262145)}}))));

  VsockVm vm(VmOptions{.tweak = [tx_buffer](vsock::DeviceConfig& c) { c.tx_buffer_size = tx_buffer; },
                       .rx_buffers = 0,
                       .region_mib = 16});
  require(vm.boot(), "boot");
  std::size_t next_layout = 0;
  const auto layout = [&] { return rx_layouts[next_layout++ % rx_layouts.size()]; };
  for (std::size_t i = 0; i < rx_posted; ++i) {
    const ChainLayout l = layout();
    if (vm.guest().rx().free_descriptors() < (l.indirect_from ? *l.indirect_from + 1 : l.segments.size())) break;
    require(vm.guest().rx().add(l), "post rx");
  }
  require(vm.guest().rx().kick(), "kick rx");
  vm.guest().set_refill(layout);

  auto e = require(establish(vm, 9000, 44000, guest_buf_alloc), "connect");
  StreamPump pump{.guest = vm.guest(), .conn = e.conn, .host_fd = e.host.get()};
  pump.guest_consumes = false;
  pump.shape = [&](std::size_t payload, std::size_t n) { return apply(recipes[n % recipes.size()], payload); };
  std::uint64_t seed = 1;
  std::size_t consumed = 0;  // of pump.guest_received

  const auto settle = [&] {
    // Non-blocking progress until nothing moves (bounded: a device that keeps talking
    // cannot hold the property up).
    for (int i = 0; i < 2000; ++i) {
      if (!require(pump.step(), "step")) break;
    }
  };
  const auto read = [&](std::size_t per_mille) {
    const std::size_t unread = pump.guest_received.size() - consumed;
    const std::size_t n = unread * per_mille / 1000;
    pump.conn.consume(static_cast<std::uint32_t>(n));
    consumed += n;
  };
  for (const Step& s : steps) {
    switch (s.action) {
      case Action::host_write: {
        const auto bytes = pattern(s.amount, seed++);
        pump.h2g.insert(pump.h2g.end(), bytes.begin(), bytes.end());
        break;
      }
      case Action::guest_write: {
        const auto bytes = pattern(s.amount, seed++);
        pump.g2h.insert(pump.g2h.end(), bytes.begin(), bytes.end());
        break;
      }
      case Action::guest_read: read(s.amount % 1001); break;
      case Action::credit_update: require(vm.guest().send(pump.conn.make(op_credit_update)), "credit update"); break;
      case Action::step: break;
    }
    settle();
  }
  // The guest application now reads everything as it comes.
  read(1000);
  pump.guest_consumes = true;
  require(pump.run(60s), "drain");
  RC_ASSERT(pump.host_received.size() == pump.g2h.size());
  RC_ASSERT(pump.host_received == pump.g2h);
  RC_ASSERT(pump.guest_received.size() == pump.h2g.size());
  RC_ASSERT(pump.guest_received == pump.h2g);
}

}  // namespace
}  // namespace vusim::vsock_test
