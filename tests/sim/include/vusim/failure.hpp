#pragma once
// How the simulator reports a failure: a kind and a sentence a test log can show as is.
//
// Every call into the simulator returns Result<T>. The kind lets a test tell "the backend
// closed the connection" from "the backend answered with an error" from "the backend said
// nothing before the deadline", which is exactly what malformed-input tests must
// distinguish; the message says which request, which ring and what was seen.
#include <iosfwd>
#include <string>
#include <string_view>

#include <boost/system/result.hpp>

namespace vusim {

enum class Fault {
  io,           ///< a system call failed (socket, memfd, eventfd, mmap)
  timeout,      ///< the backend did not answer or complete buffers before the deadline
  closed,       ///< the backend closed the connection (EOF or reset)
  bad_reply,    ///< a reply QEMU would refuse: wrong request, flags or size
  nack,         ///< the backend answered a request with an error (REPLY_ACK u64 != 0)
  unsupported,  ///< the backend lacks something QEMU requires (a feature, enough queues)
  guest,        ///< the backend broke a virtqueue rule the guest driver checks
  usage,        ///< the simulator was asked for something impossible (no free descriptor)
};

std::string_view to_string(Fault fault) noexcept;

struct Failure {
  Fault fault;
  std::string message;
};

std::ostream& operator<<(std::ostream& out, const Failure& failure);

template <class T>
using Result = boost::system::result<T, Failure>;

}  // namespace vusim
