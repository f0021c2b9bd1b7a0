#include "vhostuser/transport.hpp"

#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "vhostuser/codec.hpp"

namespace vhostuser {
namespace {

boost::system::error_code errno_code(int e) { return {e, boost::system::system_category()}; }

}  // namespace

Result<std::size_t> MessageReader::receive(int fd, std::span<std::byte> into) {
  iovec iov{into.data(), into.size()};
  alignas(cmsghdr) std::byte control[CMSG_SPACE(sizeof(int) * max_fds_per_message)];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof control;

  ssize_t n;
  do {
    n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  } while (n < 0 && errno == EINTR);
  if (n < 0) return errno_code(errno);

  // Take ownership of every fd before looking at anything else, so an error below closes them.
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int received;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
      current_.fds.emplace_back(received);
    }
  }
  if ((msg.msg_flags & MSG_CTRUNC) != 0) return Errc::truncated_fds;
  if (n == 0) return Errc::peer_closed;
  return static_cast<std::size_t>(n);
}

Result<std::optional<RawMessage>> MessageReader::read(int fd) {
  for (;;) {
    std::span<std::byte> want = phase_ == Phase::header
                                    ? std::span<std::byte>(header_bytes_).subspan(have_)
                                    : std::span<std::byte>(current_.body).subspan(have_);
    if (!want.empty()) {
      auto got = receive(fd, want);
      if (!got) {
        if (got.error() == boost::system::errc::resource_unavailable_try_again) {
          return std::optional<RawMessage>{};
        }
        return got.error();
      }
      have_ += *got;
      if (*got < want.size()) continue;  // short read: ask again until EAGAIN
    }
    if (phase_ == Phase::header) {
      current_.header = load<Header>(header_bytes_);
      const Result<void> ok = direction_ == Direction::requests
                                  ? check_request_header(current_.header)
                                  : (current_.header.size > max_payload_size
                                         ? Result<void>(Errc::oversized_message)
                                         : Result<void>());
      if (!ok) return ok.error();
      current_.body.resize(current_.header.size);
      phase_ = Phase::body;
      have_ = 0;
      continue;
    }
    RawMessage done = std::move(current_);
    current_ = RawMessage{};
    phase_ = Phase::header;
    have_ = 0;
    return std::optional<RawMessage>{std::move(done)};
  }
}

Result<void> send_message(int fd, std::span<const std::byte> bytes, std::span<const int> fds) {
  if (fds.size() > max_fds_per_message) return Errc::wrong_fd_count;
  alignas(cmsghdr) std::byte control[CMSG_SPACE(sizeof(int) * max_fds_per_message)]{};
  std::size_t sent = 0;
  while (sent < bytes.size()) {
    iovec iov{const_cast<std::byte*>(bytes.data() + sent), bytes.size() - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (sent == 0 && !fds.empty()) {  // fds travel with the first byte of the message
      msg.msg_control = control;
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
      std::memcpy(CMSG_DATA(c), fds.data(), sizeof(int) * fds.size());
    }
    const ssize_t n = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno_code(errno);
    }
    sent += static_cast<std::size_t>(n);
  }
  return {};
}

}  // namespace vhostuser
