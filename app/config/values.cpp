// Text <-> value for every member type of the configuration.
#include <algorithm>
#include <charconv>

#include "config/fields.hpp"

namespace vsockd::config::detail {

std::string snake_case(std::string_view key) {
  std::string name{key};
  std::replace(name.begin(), name.end(), '-', '_');
  return name;
}

std::string dash_case(std::string_view name) {
  std::string key{name};
  std::replace(key.begin(), key.end(), '_', '-');
  return key;
}

Result<std::uint64_t> parse_decimal(std::string_view text, std::uint64_t max) {
  if (text.empty()) return Error{"no value"};
  if (text.front() == '-') return Error{fmt::format("'{}' is negative", text)};
  // from_chars stops at the first non-digit and succeeds on the prefix ("12x" -> 12), so
  // the whole text must be digits first; that also rules out '+', blanks and "0x".
  if (!std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; })) {
    return Error{fmt::format("'{}' is not a decimal number", text)};
  }
  std::uint64_t value = 0;
  const auto parsed = std::from_chars(text.data(), text.data() + text.size(), value);
  if (parsed.ec == std::errc::result_out_of_range || value > max) {
    return Error{fmt::format("'{}' is out of range (at most {})", text, max)};
  }
  return value;
}

Result<void> parse_value(std::string_view text, std::chrono::milliseconds& out) {
  auto count = parse_decimal(text, std::numeric_limits<std::int64_t>::max());
  if (!count) return count.error();
  out = std::chrono::milliseconds{static_cast<std::int64_t>(*count)};
  return {};
}

Result<void> parse_value(std::string_view text, std::filesystem::path& out) {
  if (text.empty()) return Error{"empty path"};
  out = std::filesystem::path{std::string{text}};
  return {};
}

Result<void> parse_value(std::string_view text, std::optional<std::filesystem::path>& out) {
  std::filesystem::path path;
  if (auto parsed = parse_value(text, path); !parsed) return parsed;
  out = std::move(path);
  return {};
}

Result<void> parse_value(std::string_view text, Groups& out) {
  if (text.empty()) return Error{"no group name"};
  std::vector<std::string> names;
  for (std::size_t start = 0;;) {
    const std::size_t plus = text.find('+', start);
    const std::string_view name = text.substr(start, plus == std::string_view::npos ? plus : plus - start);
    if (name.empty()) return Error{fmt::format("'{}' has an empty group name", text)};
    names.emplace_back(name);
    if (plus == std::string_view::npos) break;
    start = plus + 1;
  }
  out = Groups(names.begin(), names.end());
  return {};
}

Result<void> parse_list(const std::vector<std::string>& items, Groups& out) {
  if (items.empty()) return Error{"empty list (leave the key out for the group 'default')"};
  for (const std::string& item : items) {
    if (item.empty()) return Error{"empty group name in the list"};
    // "a+b" in a list would be one name here but two in every other form of the key.
    if (item.find('+') != std::string::npos) {
      return Error{fmt::format("'{}': '+' separates names in the string form; in a list give one name per item", item)};
    }
  }
  out = Groups(items.begin(), items.end());
  return {};
}

std::string format_value(std::chrono::milliseconds value) { return std::to_string(value.count()); }

std::string format_value(const std::filesystem::path& value) { return value.native(); }

std::string format_value(const Groups& value) {
  std::string text;
  for (const std::string& name : value) {
    if (!text.empty()) text += '+';
    text += name;
  }
  return text;
}

}  // namespace vsockd::config::detail

namespace vsockd::config {

Result<Groups> parse_groups(std::string_view text) {
  Groups groups;
  if (auto parsed = detail::parse_value(text, groups); !parsed) return Error{"groups: " + parsed.error().message};
  return groups;
}

}  // namespace vsockd::config
