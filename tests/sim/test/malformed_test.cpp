// Hostile front-ends: every malformed or out-of-place request must be answered with an
// error (REPLY_ACK nack, or GET_CONFIG's empty form) or end the connection, and the server
// must then serve the next front-end normally, without leaking an fd.
#include <dirent.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <functional>
#include <ostream>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "assert_ok.hpp"
#include "backend_fixture.hpp"
#include "rng_device.hpp"
#include "vhostuser/codec.hpp"
#include "virtio/ring.hpp"
#include "vusim/rng.hpp"
#include "vusim/sequences.hpp"

namespace vusim {
namespace {

using namespace std::chrono_literals;
using vhostuser::bit;
using vhostuser::bytes_of;
using vhostuser::Request;
using PF = vhostuser::ProtocolFeature;

constexpr std::uint32_t need_reply = vhostuser::header_flags::need_reply;
constexpr std::uint64_t mib = 1 << 20;

/// How far the session is brought before the bad request.
enum class Setup {
  connected,  ///< nothing sent yet
  realized,   ///< qemu72_realize: protocol features (MQ, REPLY_ACK, mem slots, STATUS) acked
  features,   ///< and SET_FEATURES(VERSION_1 | bit 30)
  memory,     ///< and SET_MEM_TABLE of the VM's RAM
};

/// How the reaction is observed.
enum class Observe {
  reply,    ///< the request has a reply (always, or NEED_REPLY): read it, or see the close
  barrier,  ///< no reply is due: a GET_FEATURES shows whether the connection survived
  eof,      ///< only the close may come (nothing else can safely be sent)
};

struct Vm {
  GuestRam ram;
  VhostDev dev;
};

struct Case {
  std::string name;
  Setup setup;
  Observe observe;
  std::uint32_t request;  ///< the request id an error reply must echo
  std::function<Result<void>(Frontend&, Vm&)> send;
};

// gtest prints the parameter of a failing test: the case's name, not its bytes.
[[maybe_unused]] void PrintTo(const Case& c, std::ostream* out) { *out << c.name; }

std::vector<std::byte> concat(std::initializer_list<std::span<const std::byte>> parts) {
  std::vector<std::byte> out;
  for (auto p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

Result<void> raw(Frontend& fe, Request r, std::uint32_t flags, std::span<const std::byte> payload,
                 std::span<const int> fds = {}) {
  return fe.send(static_cast<std::uint32_t>(r), flags, payload, fds);
}

/// A payload of `n` zero bytes.
std::vector<std::byte> zeros(std::size_t n) { return std::vector<std::byte>(n); }

Case simple(std::string name, Setup setup, Request r, std::uint32_t flags, std::vector<std::byte> payload) {
  const Observe observe = (flags & need_reply) != 0 ? Observe::reply : Observe::barrier;
  return {std::move(name), setup, observe, static_cast<std::uint32_t>(r),
          [=](Frontend& fe, Vm&) { return raw(fe, r, flags, payload); }};
}

/// A request carrying one fresh eventfd.
Case with_eventfd(std::string name, Setup setup, Observe observe, Request r, std::uint32_t flags,
                  std::vector<std::byte> payload, int count = 1) {
  return {std::move(name), setup, observe, static_cast<std::uint32_t>(r),
          [=](Frontend& fe, Vm&) -> Result<void> {
            std::vector<vhostuser::UniqueFd> owned;
            std::vector<int> fds;
            for (int i = 0; i < count; ++i) {
              owned.emplace_back(::eventfd(0, EFD_CLOEXEC));
              fds.push_back(owned.back().get());
            }
            return raw(fe, r, flags, payload, fds);
          }};
}

Case header_only(std::string name, vhostuser::Header header) {
  return {std::move(name), Setup::connected, Observe::barrier, header.request,
          [=](Frontend& fe, Vm&) { return fe.send_raw(header, {}); }};
}

/// SET_VRING_NUM, SET_VRING_BASE and SET_VRING_ADDR for ring 0 with `addr`, then
/// SET_VRING_KICK with NEED_REPLY: rings start on their kick, where the areas are checked.
Case bad_ring(std::string name, std::function<vhostuser::VringAddr(const Vm&)> make_addr,
              bool reply_on_addr) {
  return {std::move(name), Setup::memory, Observe::reply,
          static_cast<std::uint32_t>(reply_on_addr ? Request::set_vring_addr : Request::set_vring_kick),
          [=](Frontend& fe, Vm& vm) -> Result<void> {
            if (auto ok = fe.set_vring_num(0, 256); !ok) return ok;
            if (auto ok = fe.set_vring_base(0, 0); !ok) return ok;
            const auto addr = make_addr(vm);
            if (reply_on_addr) return raw(fe, Request::set_vring_addr, need_reply, bytes_of(addr));
            if (auto ok = fe.set_vring_addr(addr); !ok) return ok;
            vhostuser::UniqueFd kick{::eventfd(0, EFD_CLOEXEC)};
            const int fds[] = {kick.get()};
            return raw(fe, Request::set_vring_kick, need_reply, bytes_of(std::uint64_t{0}), fds);
          }};
}

/// A region description claiming `claimed` bytes of a memfd that only has `actual`.
Case short_memfd(std::string name, Request r) {
  return {std::move(name), Setup::realized, Observe::reply, static_cast<std::uint32_t>(r),
          [=](Frontend& fe, Vm&) -> Result<void> {
            vhostuser::UniqueFd fd{::memfd_create("vusim-short", MFD_CLOEXEC)};
            if (::ftruncate(fd.get(), 64 * 1024) != 0) return Failure{Fault::io, "ftruncate"};
            const vhostuser::MemRegion region{0, 4 * mib, 0x7f0000000000, 0};
            const int fds[] = {fd.get()};
            if (r == Request::set_mem_table) {
              const vhostuser::MemTableHeader h{1, 0};
              return raw(fe, r, need_reply, concat({bytes_of(h), bytes_of(region)}), fds);
            }
            return raw(fe, r, need_reply, bytes_of(vhostuser::SingleMemRegion{0, region}), fds);
          }};
}

/// Negotiates only REPLY_ACK, then sends a request behind another protocol feature.
Case ungated(std::string name, Request r, std::vector<std::byte> payload, bool ask_reply) {
  return {std::move(name), Setup::connected, Observe::reply, static_cast<std::uint32_t>(r),
          [=](Frontend& fe, Vm&) -> Result<void> {
            if (auto ok = fe.get_features(); !ok) return ok.error();
            if (auto ok = fe.set_protocol_features(bit(PF::reply_ack)); !ok) return ok;
            return raw(fe, r, ask_reply ? need_reply : 0, payload);
          }};
}

std::vector<Case> cases() {
  const auto state = [](std::uint32_t index, std::uint32_t num) {
    const vhostuser::VringState s{index, num};
    const auto b = bytes_of(s);
    return std::vector<std::byte>(b.begin(), b.end());
  };
  const auto u64 = [](std::uint64_t v) {
    const auto b = bytes_of(v);
    return std::vector<std::byte>(b.begin(), b.end());
  };
  const auto vring_fd = [&](std::uint64_t v) { return u64(v); };
  const std::uint32_t v1 = vhostuser::header_flags::version;
  const std::uint64_t packed = bit(virtio::feature::ring_packed);

  std::vector<Case> c;
  // Header: the stream can no longer be trusted, the connection must go.
  c.push_back(header_only("BadVersion", {1, 0x2, 0}));
  c.push_back(header_only("VersionZero", {1, 0x0, 0}));
  c.push_back(header_only("ReplyFlagOnRequest", {1, v1 | vhostuser::header_flags::reply, 0}));
  for (std::uint32_t size : {4097U, 0xffffffffU}) {
    // Only the header is sent: a backend waiting for the body would never close.
    Case oversized =
        header_only(size == 4097 ? "OversizedClosedBeforeBody" : "HugeSizeClosedBeforeBody", {2, v1, size});
    oversized.observe = Observe::eof;
    c.push_back(std::move(oversized));
  }
  // Payload sizes that do not fit the request's layout.
  c.push_back(simple("SetFeaturesShortPayload", Setup::connected, Request::set_features, 0, zeros(4)));
  c.push_back(simple("SetFeaturesShortPayloadNeedReply", Setup::realized, Request::set_features, need_reply,
                     zeros(4)));
  c.push_back(simple("GetFeaturesWithPayload", Setup::connected, Request::get_features, 0, zeros(8)));
  c.push_back(
      simple("SetVringNumLongPayload", Setup::realized, Request::set_vring_num, need_reply, zeros(12)));
  c.push_back(
      simple("SetVringAddrShortPayload", Setup::realized, Request::set_vring_addr, need_reply, zeros(32)));
  c.push_back(simple("GetVringBaseShortPayload", Setup::realized, Request::get_vring_base, 0, zeros(4)));
  c.back().observe = Observe::reply;
  c.push_back(simple("MemTableTruncatedRegionList", Setup::realized, Request::set_mem_table, need_reply,
                     concat({bytes_of(vhostuser::MemTableHeader{2, 0}), zeros(32)})));
  c.push_back(simple("MemTableNoRegions", Setup::realized, Request::set_mem_table, need_reply,
                     concat({bytes_of(vhostuser::MemTableHeader{0, 0})})));
  c.push_back(simple("ConfigDataShorterThanHeaderSays", Setup::realized, Request::set_config, need_reply,
                     concat({bytes_of(vhostuser::ConfigHeader{0, 8, 0}), zeros(4)})));
  // fds that do not match the request.
  c.push_back(
      with_eventfd("FdOnGetFeatures", Setup::connected, Observe::reply, Request::get_features, 0, {}));
  c.push_back(
      with_eventfd("FdOnSetOwner", Setup::realized, Observe::reply, Request::set_owner, need_reply, {}));
  c.push_back(with_eventfd("MemTableFewerFdsThanRegions", Setup::realized, Observe::reply,
                           Request::set_mem_table, need_reply,
                           concat({bytes_of(vhostuser::MemTableHeader{2, 0}),
                                   bytes_of(vhostuser::MemRegion{0, mib, 0x7f0000000000, 0}),
                                   bytes_of(vhostuser::MemRegion{mib, mib, 0x7f0000100000, 0})})));
  c.push_back(with_eventfd("VringCallTwoFds", Setup::realized, Observe::reply, Request::set_vring_call,
                           need_reply, vring_fd(0), 2));
  c.push_back(with_eventfd("VringCallFdWithNoFdFlag", Setup::realized, Observe::reply,
                           Request::set_vring_call, need_reply, vring_fd(vhostuser::vring_fd_no_fd)));
  c.push_back(
      simple("VringKickWithoutFdOrFlag", Setup::realized, Request::set_vring_kick, need_reply, vring_fd(0)));
  // Vring index beyond the device's one queue.
  c.push_back(
      simple("VringNumIndexOutOfRange", Setup::realized, Request::set_vring_num, need_reply, state(1, 256)));
  c.push_back(simple("VringBaseIndexOutOfRange", Setup::realized, Request::set_vring_base, 0, state(7, 0)));
  c.push_back(with_eventfd("VringCallIndexOutOfRange", Setup::realized, Observe::reply,
                           Request::set_vring_call, need_reply, vring_fd(200)));
  c.push_back(
      simple("GetVringBaseIndexOutOfRange", Setup::realized, Request::get_vring_base, 0, state(5, 0)));
  c.back().observe = Observe::reply;
  c.push_back(simple("VringEnableIndexOutOfRange", Setup::features, Request::set_vring_enable, need_reply,
                     state(1, 1)));
  c.push_back(simple("VringFdReservedBits", Setup::realized, Request::set_vring_err, need_reply,
                     vring_fd(0x10000 | vhostuser::vring_fd_no_fd)));
  // Queue sizes (virtio 2.7: a power of two, at most 32768; and the device's maximum).
  c.push_back(
      simple("QueueSizeNotPowerOfTwo", Setup::realized, Request::set_vring_num, need_reply, state(0, 3)));
  c.push_back(simple("QueueSizeZero", Setup::realized, Request::set_vring_num, need_reply, state(0, 0)));
  c.push_back(simple("QueueSizeAbove32768", Setup::realized, Request::set_vring_num, 0, state(0, 65536)));
  c.push_back(
      simple("QueueSizeAboveDeviceMax", Setup::realized, Request::set_vring_num, need_reply, state(0, 2048)));
  c.push_back(simple("VringBaseReservedBits", Setup::realized, Request::set_vring_base, need_reply,
                     state(0, 0x10000)));
  // Negotiation.
  c.push_back(simple("SetFeaturesUnofferedBit", Setup::realized, Request::set_features, need_reply,
                     u64(bit(virtio::feature::version_1) | packed)));
  c.push_back(
      simple("SetFeaturesUnofferedBitNoReply", Setup::connected, Request::set_features, 0, u64(packed)));
  c.push_back(simple("SetProtocolFeaturesUnoffered", Setup::connected, Request::set_protocol_features, 0,
                     u64(bit(PF::backend_req))));
  c.push_back(simple("VringEnableBeforeFeatures", Setup::realized, Request::set_vring_enable, need_reply,
                     state(0, 1)));
  c.push_back({"VringEnableWithoutBit30", Setup::realized, Observe::reply,
               static_cast<std::uint32_t>(Request::set_vring_enable), [=](Frontend& fe, Vm&) -> Result<void> {
                 if (auto ok = fe.set_features(bit(virtio::feature::version_1), Wait::reply_ack); !ok)
                   return ok;
                 return raw(fe, Request::set_vring_enable, need_reply, state(0, 1));
               }});
  c.push_back(simple("SecondSetOwner", Setup::realized, Request::set_owner, need_reply, {}));
  // Ring addresses: front-end virtual addresses that are not in any region, or whose area
  // runs past the end of the region, or guest-physical addresses passed where QVAs belong.
  c.push_back(bad_ring(
      "RingAddressOutsideMemory", [](const Vm&) { return vhostuser::VringAddr{0, 0, 0x10, 0x20, 0x30, 0}; },
      true));
  c.push_back(bad_ring(
      "RingAddressIsAGuestPhysicalAddress",
      [](const Vm& vm) {
        const auto r = vm.ram.regions()[0];
        return vhostuser::VringAddr{0, 0, r.base.raw() + 0x1000, r.base.raw() + 0x4000, r.base.raw() + 0x3000,
                                    0};
      },
      true));
  c.push_back(bad_ring(
      "RingAreaRunsPastRegionEnd",
      [](const Vm& vm) {
        const auto r = vm.ram.regions()[0];
        const auto end = reinterpret_cast<std::uint64_t>(r.host) + r.size;
        return vhostuser::VringAddr{0, 0, end - 16, end - 0x2000, end - 0x3000, 0};
      },
      false));
  c.push_back(bad_ring(
      "RingAreaMisaligned",
      [](const Vm& vm) {
        const auto host = reinterpret_cast<std::uint64_t>(vm.ram.regions()[0].host);
        return vhostuser::VringAddr{0, 0, host + 0x1008, host + 0x4002, host + 0x3001, 0};
      },
      false));
  c.push_back(bad_ring(
      "RingAddrUnknownFlags",
      [](const Vm& vm) {
        const auto host = reinterpret_cast<std::uint64_t>(vm.ram.regions()[0].host);
        return vhostuser::VringAddr{0, 0x2, host + 0x1000, host + 0x4000, host + 0x3000, 0};
      },
      true));
  // Memory.
  c.push_back(short_memfd("MemTableMemfdSmallerThanRegion", Request::set_mem_table));
  c.push_back(short_memfd("AddMemRegMemfdSmallerThanRegion", Request::add_mem_reg));
  c.push_back(simple("RemMemRegUnknownRegion", Setup::memory, Request::rem_mem_reg, need_reply,
                     concat({bytes_of(vhostuser::SingleMemRegion{0, {0x40000000, mib, 0x1000, 0}})})));
  // Requests behind protocol features that were not negotiated.
  c.push_back(ungated("GetQueueNumWithoutMq", Request::get_queue_num, {}, false));
  c.push_back(ungated("GetStatusWithoutStatus", Request::get_status, {}, false));
  c.push_back(ungated("SetStatusWithoutStatus", Request::set_status, u64(1), true));
  c.push_back(ungated("GetMaxMemSlotsWithoutMemSlots", Request::get_max_mem_slots, {}, false));
  c.push_back(ungated("RemMemRegWithoutMemSlots", Request::rem_mem_reg, zeros(40), true));
  c.push_back(ungated("GetConfigWithoutConfig", Request::get_config,
                      concat({bytes_of(vhostuser::ConfigHeader{0, 8, 0}), zeros(8)}), false));
  c.push_back(ungated("ResetDeviceWithoutResetDevice", Request::reset_device, {}, true));
  c.push_back(ungated("IotlbWithoutBackendReq", Request::iotlb_msg, zeros(32), false));
  // Request ids outside the protocol.
  for (std::uint32_t id : {0U, 44U, 99U, 0xffffffffU}) {
    for (bool ask : {false, true}) {
      c.push_back({fmt::format("UnknownRequest{}{}", id, ask ? "NeedReply" : ""), Setup::connected,
                   ask ? Observe::reply : Observe::barrier, id,
                   [=](Frontend& fe, Vm&) { return fe.send(id, ask ? need_reply : 0, {}); }});
    }
  }
  return c;
}

/// Open fds of this process (the backend runs in it).
std::size_t open_fds() {
  std::size_t n = 0;
  DIR* d = ::opendir("/proc/self/fd");
  while (d != nullptr && ::readdir(d) != nullptr) ++n;
  if (d != nullptr) ::closedir(d);
  return n;
}

enum class Outcome { closed, error_reply, accepted };

/// Requests whose reply carries a value rather than an ack: a u64 coming back for them is
/// an answer, never an error report, so only a close refuses them (GET_CONFIG has its own
/// error form).
bool has_value_reply(std::uint32_t id) {
  switch (static_cast<Request>(id)) {
    case Request::get_features:
    case Request::get_protocol_features:
    case Request::get_vring_base:
    case Request::get_queue_num:
    case Request::get_config:
    case Request::get_max_mem_slots:
    case Request::get_status:
    case Request::iotlb_msg: return true;
    default: return false;
  }
}

/// What the backend did; `what` describes an acceptance.
Result<Outcome> observe(Frontend& fe, const Case& c, std::string& what) {
  if (c.observe == Observe::barrier) {
    auto alive = fe.get_features();
    if (alive) {
      what = "the connection survived and the request got no error";
      return Outcome::accepted;
    }
    if (alive.error().fault == Fault::closed) return Outcome::closed;
    return alive.error();
  }
  auto msg = fe.receive();
  if (!msg) {
    if (msg.error().fault == Fault::closed) return Outcome::closed;
    return msg.error();
  }
  const auto& h = msg->header;
  const bool is_reply = h.request == c.request &&
                        h.flags == (vhostuser::header_flags::version | vhostuser::header_flags::reply);
  if (c.observe == Observe::reply && is_reply) {
    if (!has_value_reply(c.request) && h.size == 8 && vhostuser::load<std::uint64_t>(msg->body) != 0) {
      return Outcome::error_reply;  // REPLY_ACK: a non-zero u64 reports the failure
    }
    // GET_CONFIG's error form: the config header with size 0 and no data (vhost-user.rst).
    if (c.request == static_cast<std::uint32_t>(Request::get_config) &&
        h.size == sizeof(vhostuser::ConfigHeader)) {
      return Outcome::error_reply;
    }
  }
  what =
      fmt::format("a message that is no error: request {} flags {:#x} size {}", h.request, h.flags, h.size);
  return Outcome::accepted;
}

Result<void> bring_to(Frontend& fe, Vm& vm, Setup setup) {
  if (setup == Setup::connected) return {};
  if (auto ok = qemu72_realize(fe, vm.dev); !ok) return ok;
  if (setup == Setup::realized) return {};
  if (auto ok = fe.set_features(bit(virtio::feature::version_1) | bit(vhostuser::protocol_features_bit),
                                Wait::reply_ack);
      !ok) {
    return ok;
  }
  if (setup == Setup::features) return {};
  const auto r = vm.ram.regions()[0];
  const int fds[] = {r.fd};
  const auto region = r.wire();
  return fe.set_mem_table(std::span(&region, 1), fds, Wait::reply_ack);
}

class Malformed : public ::testing::TestWithParam<Case> {};

TEST_P(Malformed, IsRefusedAndTheServerGoesOn) {
  const Case& c = GetParam();
  std::vector<std::string> log;
  rng::RngDevice device;
  test::Backend backend(device);
  const std::size_t fds_before = open_fds();
  {
    auto ram = GuestRam::contiguous(mib);
    ASSERT_OK(ram);
    Vm vm{*ram, VhostDev(DeviceModel::rng(), *ram)};
    auto fe = Frontend::connect(backend.socket(), test::traced_options(log));
    ASSERT_OK(fe);
    ASSERT_OK(bring_to(*fe, vm, c.setup));
    // The bad request may already find the connection closed (an earlier step of it was
    // refused by closing): that is a closed connection too.
    if (auto sent = c.send(*fe, vm); !sent) {
      ASSERT_EQ(sent.error().fault, Fault::closed) << sent.error();
    }
    std::string what;
    auto outcome = observe(*fe, c, what);
    ASSERT_OK(outcome);
    EXPECT_NE(*outcome, Outcome::accepted) << what;
    if (*outcome == Outcome::error_reply) {
      SCOPED_TRACE("an error reply must leave the session usable");
      EXPECT_OK(fe->get_features());
    }
    EXPECT_OK(fe->disconnect());
  }
  {
    // The next front-end gets full service.
    auto ram = GuestRam::contiguous(mib);
    ASSERT_OK(ram);
    VhostDev dev(DeviceModel::rng(), *ram);
    auto fe = Frontend::connect(backend.socket(), test::traced_options(log));
    ASSERT_OK(fe);
    ASSERT_OK(qemu82_realize(*fe, dev));
    ASSERT_OK(qemu82_start(*fe, dev));
    ASSERT_OK(read_entropy(dev.drivers[0], dev.ram, 1024, 256, 5s));
    ASSERT_OK(qemu82_stop(*fe, dev));
    ASSERT_OK(fe->disconnect());
  }
  EXPECT_EQ(open_fds(), fds_before) << "fds leaked by the backend";
  test::dump_on_failure(log);
}

INSTANTIATE_TEST_SUITE_P(Requests, Malformed, ::testing::ValuesIn(cases()),
                         [](const auto& param_info) { return param_info.param.name; });

}  // namespace
}  // namespace vusim
