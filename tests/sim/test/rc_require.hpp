#pragma once
// require(): inside a rapidcheck property, a vusim::Result holds a value or the property
// fails with the Failure's kind and message (RC_FAIL), naming what was being done.
#include <string_view>
#include <utility>

#include <fmt/format.h>
#include <rapidcheck.h>

#include "vusim/failure.hpp"

namespace vusim::test {

template <class T>
T require(Result<T> r, std::string_view what) {
  if (!r) RC_FAIL(fmt::format("{}: {}: {}", what, to_string(r.error().fault), r.error().message));
  return std::move(*r);
}

inline void require(Result<void> r, std::string_view what) {
  if (!r) RC_FAIL(fmt::format("{}: {}: {}", what, to_string(r.error().fault), r.error().message));
}

}  // namespace vusim::test
