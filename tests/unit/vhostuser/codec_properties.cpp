// Properties of the codec and the framing: every valid message round-trips, a stream cut
// anywhere never yields a partial message, and header corruption is caught.
#include <gtest/gtest.h>
#include <rapidcheck.h>
#include <rapidcheck/gtest.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include <vector>

#include "vhostuser/codec.hpp"
#include "vhostuser/request_table.hpp"
#include "vhostuser/transport.hpp"

namespace vhostuser {
namespace {

/// A valid request before fds are attached (rapidcheck values must be copyable).
struct Encoded {
  std::uint32_t id = 0;
  std::uint32_t flags = header_flags::version;
  std::vector<std::byte> body;
  std::size_t fds = 0;
};

std::vector<std::byte> random_bytes(std::size_t n) {
  const auto raw = *rc::gen::container<std::vector<std::uint8_t>>(n, rc::gen::arbitrary<std::uint8_t>());
  std::vector<std::byte> out(n);
  if (n > 0) std::memcpy(out.data(), raw.data(), n);  // memcpy from an empty vector's null data() is UB
  return out;
}

template <class T>
void append(std::vector<std::byte>& out, const T& v) {
  auto b = bytes_of(v);
  out.insert(out.end(), b.begin(), b.end());
}

/// Generates a body that is valid for `rule`, and the number of fds it needs.
Encoded valid_message(const RequestRule& rule) {
  Encoded e;
  e.id = static_cast<std::uint32_t>(rule.request);
  if (*rc::gen::arbitrary<bool>()) e.flags |= header_flags::need_reply;
  switch (rule.layout) {
    case Layout::none: break;
    case Layout::u64:
    case Layout::vring_state:
    case Layout::device_state: e.body = random_bytes(8); break;
    case Layout::vring_addr: e.body = random_bytes(sizeof(VringAddr)); break;
    case Layout::single_region: e.body = random_bytes(sizeof(SingleMemRegion)); break;
    case Layout::log: e.body = random_bytes(sizeof(LogInfo)); break;
    case Layout::vring_area: e.body = random_bytes(sizeof(VringArea)); break;
    case Layout::inflight: e.body = random_bytes(sizeof(InflightInfo)); break;
    case Layout::iotlb: e.body = random_bytes(sizeof(IotlbMsg)); break;
    case Layout::uuid: e.body = random_bytes(sizeof(Uuid)); break;
    case Layout::vring_fd: {
      const auto index = *rc::gen::inRange<std::uint64_t>(0, 256);
      const bool no_fd = *rc::gen::arbitrary<bool>();
      append(e.body, index | (no_fd ? vring_fd_no_fd : 0));
      break;
    }
    case Layout::mem_table: {
      const auto n = *rc::gen::inRange<std::uint32_t>(1, max_mem_table_regions + 1);
      append(e.body, MemTableHeader{n, 0});
      auto regions = random_bytes(n * sizeof(MemRegion));
      e.body.insert(e.body.end(), regions.begin(), regions.end());
      break;
    }
    case Layout::config: {
      const auto size = *rc::gen::inRange<std::uint32_t>(0, max_config_size + 1);
      append(e.body, ConfigHeader{*rc::gen::arbitrary<std::uint32_t>(), size, *rc::gen::arbitrary<std::uint32_t>()});
      auto data = random_bytes(size);
      e.body.insert(e.body.end(), data.begin(), data.end());
      break;
    }
    case Layout::opaque: e.body = random_bytes(*rc::gen::inRange<std::size_t>(0, max_payload_size + 1)); break;
  }
  switch (rule.fds) {
    case FdRule::none: break;
    case FdRule::one: e.fds = 1; break;
    case FdRule::per_region: e.fds = load<MemTableHeader>(e.body).nregions; break;
    case FdRule::vring: e.fds = (load<std::uint64_t>(e.body) & vring_fd_no_fd) != 0 ? 0 : 1; break;
    case FdRule::at_most_one: e.fds = *rc::gen::inRange<std::size_t>(0, 2); break;
  }
  return e;
}

Encoded any_valid_message() {
  const auto id = *rc::gen::inRange<std::uint32_t>(1, max_request_id + 1);
  return valid_message(*find_rule(id));
}

std::vector<UniqueFd> eventfds(std::size_t n) {
  std::vector<UniqueFd> fds;
  for (std::size_t i = 0; i < n; ++i) fds.emplace_back(::eventfd(0, EFD_CLOEXEC));
  return fds;
}

Header header_of(const Encoded& e) { return {e.id, e.flags, static_cast<std::uint32_t>(e.body.size())}; }

RC_GTEST_PROP(CodecProperties, EveryValidMessageRoundTrips, ()) {
  const Encoded e = any_valid_message();
  auto msg = decode_request(header_of(e), e.body, eventfds(e.fds));
  RC_ASSERT(msg.has_value());
  RC_ASSERT(static_cast<std::uint32_t>(msg->request) == e.id);
  RC_ASSERT(msg->fds.size() == e.fds);
  RC_ASSERT(encode_payload(msg->payload) == e.body);
  // And the wire form of the request is header + body, exactly.
  auto wire = encode_request(msg->request, e.flags & ~header_flags::version_mask, e.body);
  RC_ASSERT(load<Header>(wire).size == e.body.size());
}

RC_GTEST_PROP(CodecProperties, AnyChangeOfSizeIsRefused, ()) {
  const Encoded e = any_valid_message();
  Header h = header_of(e);
  h.size = *rc::gen::distinctFrom(h.size);
  RC_ASSERT(!decode_request(h, e.body, eventfds(e.fds)).has_value());
}

RC_GTEST_PROP(CodecProperties, CorruptedVersionOrReplyBitIsRefused, ()) {
  const Encoded e = any_valid_message();
  Header h = header_of(e);
  const auto mask = *rc::gen::element<std::uint32_t>(0x1, 0x2, 0x3, 0x4, 0x5, 0x6, 0x7);
  h.flags ^= mask;
  RC_ASSERT(!check_request_header(h).has_value());
  RC_ASSERT(!decode_request(h, e.body, eventfds(e.fds)).has_value());
}

RC_GTEST_PROP(CodecProperties, ACorruptedRequestIdDecodesOnlyAsAConsistentMessage, ()) {
  const Encoded e = any_valid_message();
  Header h = header_of(e);
  h.request = *rc::gen::arbitrary<std::uint32_t>();
  auto msg = decode_request(h, e.body, eventfds(e.fds));
  if (find_rule(h.request) == nullptr) {
    RC_ASSERT(msg.error() == Errc::unknown_request);
  } else if (msg) {
    // Accepted only if the body fits the new request's layout byte for byte.
    RC_ASSERT(encode_payload(msg->payload) == e.body);
  }
}

RC_GTEST_PROP(CodecProperties, AStreamCutAnywhereYieldsOnlyWholeMessages, ()) {
  const auto count = *rc::gen::inRange<std::size_t>(1, 6);
  std::vector<Encoded> sent;
  std::vector<std::byte> stream;
  for (std::size_t i = 0; i < count; ++i) {
    sent.push_back(any_valid_message());
    auto wire = encode_request(static_cast<Request>(sent.back().id), 0, sent.back().body);
    stream.insert(stream.end(), wire.begin(), wire.end());
  }
  const auto cut = *rc::gen::inRange<std::size_t>(0, stream.size() + 1);

  int sv[2];
  RC_ASSERT(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  UniqueFd reader_end{sv[0]}, writer_end{sv[1]};
  RC_ASSERT(send_message(writer_end.get(), std::span(stream).first(cut)).has_value());
  writer_end.reset();  // EOF after the cut

  MessageReader reader;
  std::size_t whole = 0, consumed = 0;
  for (const auto& e : sent) {
    if (consumed + sizeof(Header) + e.body.size() > cut) break;
    consumed += sizeof(Header) + e.body.size();
    ++whole;
  }
  for (std::size_t i = 0; i < whole; ++i) {
    auto msg = reader.read(reader_end.get());
    RC_ASSERT(msg.has_value() && msg->has_value());
    RC_ASSERT((*msg)->body == sent[i].body);
  }
  auto end = reader.read(reader_end.get());
  RC_ASSERT(!end.has_value());
  RC_ASSERT(end.error() == Errc::peer_closed);
}

}  // namespace
}  // namespace vhostuser
