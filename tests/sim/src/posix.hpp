#pragma once
// Small helpers for reporting system call failures as Failure values.
#include <cerrno>
#include <cstring>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "vusim/failure.hpp"

namespace vusim {

/// Fault::io with "<what>: <strerror(err)>".
inline Failure io_failure(std::string_view what, int err = errno) {
  return Failure{Fault::io, fmt::format("{}: {}", what, std::strerror(err))};
}

}  // namespace vusim
