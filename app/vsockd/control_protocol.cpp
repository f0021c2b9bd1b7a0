#include "control_protocol.hpp"

#include <charconv>

#include <fmt/format.h>

namespace vsockd::control {

config::Result<Request> parse_request(std::string_view line) {
  if (line.size() > max_request) return config::Error{fmt::format("request longer than {} bytes", max_request)};
  if (line.find_first_of(std::string_view("\n\r\0", 3)) != std::string_view::npos) {
    return config::Error{"request holds a line break or a NUL byte"};
  }
  const std::string_view name = line.substr(0, line.find(' '));
  const CommandSpec* spec = nullptr;
  for (const CommandSpec& c : commands) {
    if (c.name == name) spec = &c;
  }
  if (spec == nullptr) {
    std::vector<std::string_view> names;
    for (const CommandSpec& c : commands) names.push_back(c.name);
    return config::Error{fmt::format("unknown command '{}' (commands: {})", name, fmt::join(names, ", "))};
  }
  Request request{spec->command, {}};
  std::string_view rest = name.size() < line.size() ? line.substr(name.size() + 1) : std::string_view{};
  for (std::size_t i = 0; i < spec->args; ++i) {
    const std::size_t end = i + 1 == spec->args && spec->rest_of_line ? std::string_view::npos : rest.find(' ');
    const std::string_view arg = rest.substr(0, end);
    if (arg.empty()) return config::Error{fmt::format("usage: {}", spec->usage)};
    request.args.emplace_back(arg);
    rest = end == std::string_view::npos ? std::string_view{} : rest.substr(end + 1);
  }
  if (!rest.empty() || (spec->args == 0 && name.size() < line.size())) {
    return config::Error{fmt::format("usage: {}", spec->usage)};
  }
  return request;
}

config::Result<std::string> format_request(std::span<const std::string> words) {
  std::string line = fmt::format("{}", fmt::join(words, " "));
  if (auto ok = parse_request(line); !ok) return ok.error();
  return config::Result<std::string>(boost::system::in_place_value, std::move(line));
}

config::Result<std::uint64_t> parse_cid(std::string_view text) {
  std::uint64_t cid = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), cid);
  if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || cid > 0xffffffffu) {
    return config::Error{fmt::format("'{}' is not a CID", text)};
  }
  return cid;
}

std::string ok_reply(std::string_view body) { return fmt::format("ok\n{}", body); }

std::string error_reply(std::string_view message) { return fmt::format("error {}\n", message); }

config::Result<Reply> parse_reply(std::string_view data) {
  if (data.starts_with("ok\n")) return Reply{true, std::string(data.substr(3))};
  if (data.starts_with("error ") && data.ends_with('\n')) {
    return Reply{false, std::string(data.substr(6, data.size() - 7))};
  }
  return config::Error{data.empty() ? "the daemon closed the connection without a reply"
                                    : "the daemon's reply is not in the control protocol"};
}

}  // namespace vsockd::control
