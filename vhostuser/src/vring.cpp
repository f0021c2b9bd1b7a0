#include "vhostuser/vring.hpp"

#include <sys/eventfd.h>

#include <spdlog/spdlog.h>

namespace vhostuser {
namespace {

void signal(const UniqueFd& fd) {
  // An eventfd write only fails if the counter would overflow, i.e. the reader is gone
  // for 2^64 - 1 signals; the notification is already pending then.
  if (fd) (void)::eventfd_write(fd.get(), 1);
}

}  // namespace

void Vring::notify() {
  if (queue_ && queue_->needs_notification()) signal(call_);
}

void Vring::fail(std::string_view reason) {
  if (state_ == State::broken) return;
  spdlog::error("vring {}: broken: {}", index_, reason);
  state_ = State::broken;
  signal(err_);
}

}  // namespace vhostuser
