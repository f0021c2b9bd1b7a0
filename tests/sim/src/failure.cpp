#include "vusim/failure.hpp"

#include <ostream>

namespace vusim {

std::string_view to_string(Fault fault) noexcept {
  switch (fault) {
    case Fault::io: return "i/o error";
    case Fault::timeout: return "timeout";
    case Fault::closed: return "connection closed";
    case Fault::bad_reply: return "bad reply";
    case Fault::nack: return "request refused";
    case Fault::unsupported: return "backend unsuitable";
    case Fault::guest: return "virtqueue violation";
    case Fault::usage: return "simulator misuse";
  }
  return "unknown";
}

std::ostream& operator<<(std::ostream& out, const Failure& failure) {
  return out << to_string(failure.fault) << ": " << failure.message;
}

}  // namespace vusim
