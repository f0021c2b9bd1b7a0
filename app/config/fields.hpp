#pragma once
// The one mechanism behind the flags, --vm and YAML: a key names a described member
// (Boost.Describe), and a value's text becomes that member through the parse_value()
// overload of the member's type. No source of configuration maps keys by hand, so a member
// added to VmConfig is accepted everywhere at once with the same rules and messages.
#include <concepts>
#include <cstdint>
#include <limits>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/describe/members.hpp>
#include <boost/mp11/algorithm.hpp>
#include <fmt/format.h>

#include "config/daemon_config.hpp"

namespace vsockd::config::detail {

/// `guest-cid` -> `guest_cid`: the member name a key means.
std::string snake_case(std::string_view key);
/// `guest_cid` -> `guest-cid`: the flag of a member.
std::string dash_case(std::string_view name);

// --- text <-> value, one overload per member type ---------------------------------------------
// Errors say what is wrong with the text; the caller says where and which key.

/// Decimal digits only, at most `max`: no sign, no blanks, no suffix, no base prefix
/// (vhost-device-vsock takes Rust's decimal `parse::<u64>()`).
Result<std::uint64_t> parse_decimal(std::string_view text, std::uint64_t max);

template <std::unsigned_integral T>
Result<void> parse_value(std::string_view text, T& out) {
  auto value = parse_decimal(text, std::numeric_limits<T>::max());
  if (!value) return value.error();
  out = static_cast<T>(*value);
  return {};
}
/// A count of milliseconds; the range is validate()'s, the bound here only keeps the
/// count representable.
Result<void> parse_value(std::string_view text, std::chrono::milliseconds& out);
/// Any non-empty text.
Result<void> parse_value(std::string_view text, std::filesystem::path& out);
Result<void> parse_value(std::string_view text, std::optional<std::filesystem::path>& out);
/// `g1+g2`: no empty name, duplicates merged.
Result<void> parse_value(std::string_view text, Groups& out);
/// A list of names (YAML): none empty, none with '+' (which would mean two names in the
/// string form), duplicates merged, not an empty list.
Result<void> parse_list(const std::vector<std::string>& items, Groups& out);

template <std::unsigned_integral T>
std::string format_value(T value) {
  return std::to_string(value);
}
std::string format_value(std::chrono::milliseconds value);
std::string format_value(const std::filesystem::path& value);
std::string format_value(const Groups& value);

// --- keys -------------------------------------------------------------------------------------

/// The keys of a described struct, comma-separated, for "unknown key" messages.
template <class S>
std::string key_list() {
  std::string list;
  boost::mp11::mp_for_each<boost::describe::describe_members<S, boost::describe::mod_public>>([&](auto d) {
    if (!list.empty()) list += ", ";
    list += d.name;
  });
  return list;
}

/// Calls `f(name, member)` for every described member of `s`, in declaration order.
template <class S, class F>
void for_each_member(S& s, F&& f) {
  boost::mp11::mp_for_each<boost::describe::describe_members<std::remove_const_t<S>, boost::describe::mod_public>>(
      [&](auto d) { f(std::string_view{d.name}, s.*d.pointer); });
}

/// Sets members of one struct by key, remembering which were set: a key given twice (in
/// either case) is an error, and the caller asks afterwards what is missing.
template <class S>
class KeySetter {
 public:
  explicit KeySetter(S& target) : target_(target) {}

  /// Sets the member `key` (snake or dash case) names with `assign(member)`, which returns
  /// Result<void>. Messages name the key as written.
  template <class F>
  Result<void> set(std::string_view key, F&& assign) {
    const std::string name = snake_case(key);
    std::optional<Result<void>> outcome;
    for_each_member(target_, [&](std::string_view member_name, auto& member) {
      if (member_name != name) return;
      if (!seen_.insert(name).second) {
        outcome = Error{fmt::format("{}: given twice", key)};
      } else if (auto assigned = assign(member); !assigned) {
        outcome = Error{fmt::format("{}: {}", key, assigned.error().message)};
      } else {
        outcome = Result<void>{};
      }
    });
    if (!outcome) return Error{fmt::format("unknown key '{}' (keys: {})", key, key_list<S>())};
    return *outcome;
  }

  /// Whether the member `name` (snake case) was set.
  [[nodiscard]] bool has(std::string_view name) const { return seen_.contains(std::string{name}); }

 private:
  S& target_;
  std::set<std::string> seen_;
};

}  // namespace vsockd::config::detail
