#include "vusim/frontend.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "describe.hpp"
#include "posix.hpp"
#include "vhostuser/codec.hpp"

namespace vusim {
namespace {

using vhostuser::Request;
using Clock = std::chrono::steady_clock;
namespace header_flags = vhostuser::header_flags;

std::string_view name(Request r) { return vhostuser::to_string(r); }

Failure in_context(Failure failure, std::string_view context) {
  failure.message = fmt::format("{}: {}", context, failure.message);
  return failure;
}

Result<void> set_send_timeout(int fd, std::chrono::milliseconds timeout) {
  const auto usec = std::chrono::duration_cast<std::chrono::microseconds>(timeout).count();
  const timeval tv{static_cast<time_t>(usec / 1000000), static_cast<suseconds_t>(usec % 1000000)};
  if (::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0) return io_failure("SO_SNDTIMEO");
  return {};
}

/// Waits until `fd` is readable or `deadline` passes (false), with poll(2).
Result<bool> wait_readable(int fd, Clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    pollfd p{fd, POLLIN, 0};
    const int n = ::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0)));
    if (n < 0) {
      if (errno == EINTR) continue;
      return io_failure("poll");
    }
    if (n > 0) return true;
    if (Clock::now() >= deadline) return false;
  }
}

bool is_disconnect(const boost::system::error_code& ec) {
  return ec == vhostuser::Errc::peer_closed || ec == boost::system::errc::connection_reset ||
         ec == boost::system::errc::broken_pipe;
}

}  // namespace

Frontend::Frontend(vhostuser::UniqueFd socket, Options options)
    : socket_(std::move(socket)), options_(std::move(options)) {}

Result<Frontend> Frontend::connect(const std::filesystem::path& path, Options options) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const std::string& s = path.native();
  if (s.empty() || s.size() >= sizeof addr.sun_path) {
    return Failure{Fault::usage, fmt::format("socket path '{}' does not fit sockaddr_un", s)};
  }
  std::memcpy(addr.sun_path, s.c_str(), s.size() + 1);
  vhostuser::UniqueFd fd{::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)};
  if (!fd) return io_failure("socket(AF_UNIX)");
  // SO_SNDTIMEO also bounds an AF_UNIX connect() waiting for room in a full backlog.
  if (auto ok = set_send_timeout(fd.get(), options.timeout); !ok) return ok.error();
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    return io_failure(fmt::format("cannot connect to {}", s));
  }
  return Frontend(std::move(fd), std::move(options));
}

Result<Frontend> Frontend::adopt(vhostuser::UniqueFd socket, Options options) {
  if (auto ok = set_send_timeout(socket.get(), options.timeout); !ok) return ok.error();
  return Frontend(std::move(socket), std::move(options));
}

bool Frontend::reply_ack() const {
  return (protocol_features_ & vhostuser::bit(vhostuser::ProtocolFeature::reply_ack)) != 0;
}

void Frontend::trace(std::string_view line) const {
  if (options_.trace) options_.trace(line);
}

// --- framing --------------------------------------------------------------------------

Result<void> Frontend::send(std::uint32_t request, std::uint32_t flags, std::span<const std::byte> payload,
                            std::span<const int> fds) {
  const auto bytes = vhostuser::encode_request(static_cast<Request>(request), flags, payload);
  const auto header = vhostuser::load<vhostuser::Header>(bytes);
  return send_raw(header, payload, fds);
}

Result<void> Frontend::send_raw(const vhostuser::Header& header, std::span<const std::byte> body,
                                std::span<const int> fds) {
  trace(describe_request(header, body, fds.size()));
  std::vector<std::byte> bytes(sizeof header + body.size());
  std::memcpy(bytes.data(), &header, sizeof header);
  if (!body.empty()) std::memcpy(bytes.data() + sizeof header, body.data(), body.size());
  const std::string_view what = name(static_cast<Request>(header.request));
  if (auto sent = vhostuser::send_message(socket_.get(), bytes, fds); !sent) {
    const auto& ec = sent.error();
    if (is_disconnect(ec))
      return Failure{Fault::closed, fmt::format("sending {}: backend closed the connection", what)};
    if (ec == boost::system::errc::resource_unavailable_try_again) {
      return Failure{Fault::timeout, fmt::format("sending {}: backend did not read for {} ms", what,
                                                 options_.timeout.count())};
    }
    return Failure{Fault::io, fmt::format("sending {}: {}", what, ec.message())};
  }
  return {};
}

Result<vhostuser::RawMessage> Frontend::receive() {
  const auto deadline = Clock::now() + options_.timeout;
  for (;;) {
    auto got = reader_.read(socket_.get());
    if (!got) {
      const auto& ec = got.error();
      if (is_disconnect(ec)) return Failure{Fault::closed, "backend closed the connection"};
      if (ec == vhostuser::Errc::oversized_message || ec == vhostuser::Errc::truncated_fds) {
        return Failure{Fault::bad_reply, ec.message()};
      }
      return Failure{Fault::io, fmt::format("receiving: {}", ec.message())};
    }
    if (*got) {
      trace(describe_reply(**got));
      return std::move(**got);
    }
    auto readable = wait_readable(socket_.get(), deadline);
    if (!readable) return readable.error();
    if (!*readable) {
      return Failure{Fault::timeout, fmt::format("nothing received within {} ms", options_.timeout.count())};
    }
  }
}

Result<vhostuser::RawMessage> Frontend::receive_reply(Request request, std::optional<std::uint32_t> size) {
  auto reply = receive();
  if (!reply) return in_context(reply.error(), fmt::format("waiting for the reply to {}", name(request)));
  // vhost_user_read_header: flags must be exactly version|REPLY; vhost_user_get_u64 and
  // friends: the request echoed and the payload exactly the expected size.
  if (auto ok = vhostuser::check_reply_header(request, reply->header, size); !ok) {
    return Failure{
        Fault::bad_reply,
        fmt::format("reply to {} refused as QEMU would ({}): request {} flags {:#x} size {}{}", name(request),
                    ok.error().message(), reply->header.request, reply->header.flags, reply->header.size,
                    size ? fmt::format(", expected size {}", *size) : std::string{})};
  }
  return reply;
}

Result<void> Frontend::disconnect() {
  // ENOTCONN: the backend is gone already, which is what we wait for below anyway.
  if (::shutdown(socket_.get(), SHUT_WR) != 0 && errno != ENOTCONN) return io_failure("shutdown(SHUT_WR)");
  auto msg = receive();
  if (msg) {
    return Failure{Fault::bad_reply, fmt::format("unexpected {} while disconnecting",
                                                 name(static_cast<Request>(msg->header.request)))};
  }
  if (msg.error().fault != Fault::closed) return in_context(msg.error(), "waiting for the backend to close");
  socket_.reset();
  return {};
}

// --- request patterns -----------------------------------------------------------------

Result<void> Frontend::command(Request request, std::span<const std::byte> payload, std::span<const int> fds,
                               Wait wait) {
  const bool need_reply = wait != Wait::none && reply_ack();
  if (auto sent =
          send(static_cast<std::uint32_t>(request), need_reply ? header_flags::need_reply : 0, payload, fds);
      !sent) {
    return sent.error();
  }
  if (need_reply) return await_ack(request);
  if (wait == Wait::enforce) {
    // enforce_reply() without REPLY_ACK: any request with a reply proves that everything
    // sent before it was processed; QEMU uses GET_FEATURES.
    if (auto barrier = get_features(); !barrier) {
      return in_context(barrier.error(), fmt::format("GET_FEATURES barrier after {}", name(request)));
    }
  }
  return {};
}

Result<vhostuser::RawMessage> Frontend::query(Request request, std::span<const std::byte> payload,
                                              std::optional<std::uint32_t> reply_size) {
  if (auto sent = send(static_cast<std::uint32_t>(request), 0, payload); !sent) return sent.error();
  return receive_reply(request, reply_size);
}

Result<std::uint64_t> Frontend::query_u64(Request request) {
  auto reply = query(request, {}, sizeof(std::uint64_t));
  if (!reply) return reply.error();
  return vhostuser::load<std::uint64_t>(reply->body);
}

Result<void> Frontend::await_ack(Request request) {
  auto reply = receive_reply(request, sizeof(std::uint64_t));
  if (!reply) return reply.error();
  // process_message_reply: a non-zero u64 is the backend's failure report.
  if (const auto value = vhostuser::load<std::uint64_t>(reply->body); value != 0) {
    return Failure{Fault::nack, fmt::format("{} refused by the backend (ack {:#x})", name(request), value)};
  }
  return {};
}

// --- negotiation ----------------------------------------------------------------------

Result<std::uint64_t> Frontend::get_features() { return query_u64(Request::get_features); }

Result<void> Frontend::set_features(std::uint64_t features, Wait wait) {
  return command(Request::set_features, vhostuser::bytes_of(features), {}, wait);
}

Result<std::uint64_t> Frontend::get_protocol_features() { return query_u64(Request::get_protocol_features); }

Result<void> Frontend::set_protocol_features(std::uint64_t features) {
  // Never acknowledged by QEMU (vhost_user_set_protocol_features passes wait_for_reply false).
  if (auto ok = command(Request::set_protocol_features, vhostuser::bytes_of(features), {}, Wait::none); !ok) {
    return ok;
  }
  protocol_features_ = features;
  return {};
}

Result<void> Frontend::set_owner() { return command(Request::set_owner, {}, {}, Wait::none); }
Result<void> Frontend::reset_owner() { return command(Request::reset_owner, {}, {}, Wait::none); }
Result<void> Frontend::reset_device() { return command(Request::reset_device, {}, {}, Wait::none); }
Result<std::uint64_t> Frontend::get_queue_num() { return query_u64(Request::get_queue_num); }
Result<std::uint64_t> Frontend::get_max_mem_slots() { return query_u64(Request::get_max_mem_slots); }
Result<std::uint64_t> Frontend::get_status() { return query_u64(Request::get_status); }

Result<void> Frontend::set_status(std::uint64_t status) {
  return command(Request::set_status, vhostuser::bytes_of(status), {}, Wait::none);
}

// --- memory ---------------------------------------------------------------------------

Result<void> Frontend::set_mem_table(std::span<const vhostuser::MemRegion> regions, std::span<const int> fds,
                                     Wait wait) {
  if (regions.size() != fds.size()) {
    return Failure{Fault::usage, "SET_MEM_TABLE needs one fd per region (use send() for malformed tables)"};
  }
  const vhostuser::MemTableHeader header{static_cast<std::uint32_t>(regions.size()), 0};
  std::vector<std::byte> payload(sizeof header + regions.size_bytes());
  std::memcpy(payload.data(), &header, sizeof header);
  if (!regions.empty()) std::memcpy(payload.data() + sizeof header, regions.data(), regions.size_bytes());
  return command(Request::set_mem_table, payload, fds, wait);
}

Result<void> Frontend::add_mem_reg(const vhostuser::MemRegion& region, int fd, Wait wait) {
  const vhostuser::SingleMemRegion payload{0, region};
  const int fds[] = {fd};
  return command(Request::add_mem_reg, vhostuser::bytes_of(payload), fds, wait);
}

Result<void> Frontend::rem_mem_reg(const vhostuser::MemRegion& region, Wait wait) {
  const vhostuser::SingleMemRegion payload{0, region};
  return command(Request::rem_mem_reg, vhostuser::bytes_of(payload), {}, wait);
}

// --- vrings ---------------------------------------------------------------------------

Result<void> Frontend::set_vring_num(std::uint32_t index, std::uint32_t num) {
  return command(Request::set_vring_num, vhostuser::bytes_of(vhostuser::VringState{index, num}), {},
                 Wait::none);
}

Result<void> Frontend::set_vring_base(std::uint32_t index, std::uint32_t base) {
  return command(Request::set_vring_base, vhostuser::bytes_of(vhostuser::VringState{index, base}), {},
                 Wait::none);
}

Result<void> Frontend::set_vring_addr(const vhostuser::VringAddr& addr) {
  return command(Request::set_vring_addr, vhostuser::bytes_of(addr), {}, Wait::none);
}

Result<vhostuser::VringState> Frontend::get_vring_base(std::uint32_t index) {
  auto reply = query(Request::get_vring_base, vhostuser::bytes_of(vhostuser::VringState{index, 0}),
                     sizeof(vhostuser::VringState));
  if (!reply) return reply.error();
  return vhostuser::load<vhostuser::VringState>(reply->body);
}

Result<void> Frontend::set_vring_fd(Request request, std::uint32_t index, int fd) {
  const std::uint64_t value = index | (fd < 0 ? vhostuser::vring_fd_no_fd : 0);
  const int fds[] = {fd};
  return command(request, vhostuser::bytes_of(value), fd < 0 ? std::span<const int>{} : fds, Wait::none);
}

Result<void> Frontend::set_vring_kick(std::uint32_t index, int fd) {
  return set_vring_fd(Request::set_vring_kick, index, fd);
}
Result<void> Frontend::set_vring_call(std::uint32_t index, int fd) {
  return set_vring_fd(Request::set_vring_call, index, fd);
}
Result<void> Frontend::set_vring_err(std::uint32_t index, int fd) {
  return set_vring_fd(Request::set_vring_err, index, fd);
}

Result<void> Frontend::set_vring_enable(std::uint32_t index, bool enable, Wait wait) {
  const vhostuser::VringState state{index, enable ? 1U : 0U};
  return command(Request::set_vring_enable, vhostuser::bytes_of(state), {}, wait);
}

// --- config space ---------------------------------------------------------------------

Result<std::vector<std::byte>> Frontend::get_config(std::uint32_t offset, std::uint32_t size) {
  const vhostuser::ConfigHeader header{offset, size, 0};
  std::vector<std::byte> payload(sizeof header + size);
  std::memcpy(payload.data(), &header, sizeof header);
  // vhost_user_get_config: "Received bad msg size" unless exactly header + size bytes.
  auto reply = query(Request::get_config, payload, static_cast<std::uint32_t>(sizeof header + size));
  if (!reply) return reply.error();
  return std::vector<std::byte>(reply->body.begin() + sizeof header, reply->body.end());
}

Result<void> Frontend::set_config(std::uint32_t offset, std::span<const std::byte> data, std::uint32_t flags,
                                  Wait wait) {
  const vhostuser::ConfigHeader header{offset, static_cast<std::uint32_t>(data.size()), flags};
  std::vector<std::byte> payload(sizeof header + data.size());
  std::memcpy(payload.data(), &header, sizeof header);
  if (!data.empty()) std::memcpy(payload.data() + sizeof header, data.data(), data.size());
  return command(Request::set_config, payload, {}, wait);
}

}  // namespace vusim
