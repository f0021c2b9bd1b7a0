#include "vsock/connect_parser.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>

namespace vsock {

std::pair<std::size_t, ConnectParser::Outcome> ConnectParser::feed(std::span<const std::byte> bytes) {
  std::size_t used = 0;
  for (std::byte b : bytes) {
    if (line_.size() == max_line) return {used, Invalid{"command line longer than 32 bytes"}};
    ++used;
    const char c = static_cast<char>(b);
    if (c == '\n') return {used, parse()};
    line_.push_back(c);
  }
  if (line_.size() == max_line) return {used, Invalid{"command line longer than 32 bytes"}};
  return {used, NeedMore{}};
}

ConnectParser::Outcome ConnectParser::parse() const {
  // "CONNECT" SP+ port, optional trailing spaces or a CR (clients on other systems send CRLF).
  std::string_view line = line_;
  while (!line.empty() && (line.back() == ' ' || line.back() == '\r' || line.back() == '\t')) {
    line.remove_suffix(1);
  }
  constexpr std::string_view keyword = "connect";
  if (line.size() <= keyword.size() ||
      !std::equal(keyword.begin(), keyword.end(), line.begin(),
                  [](char k, char c) { return k == std::tolower(static_cast<unsigned char>(c)); })) {
    return Invalid{"expected \"CONNECT <port>\""};
  }
  line.remove_prefix(keyword.size());
  if (line.front() != ' ' && line.front() != '\t') return Invalid{"expected \"CONNECT <port>\""};
  while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
  std::uint32_t port = 0;
  const auto [end, ec] = std::from_chars(line.data(), line.data() + line.size(), port);
  if (ec != std::errc{} || end != line.data() + line.size()) {
    return Invalid{"port is not a decimal 32-bit number"};
  }
  return Done{port};
}

}  // namespace vsock
