// The CONNECT line parser: incremental, bounded, never past the newline.
#include <gtest/gtest.h>

#include <string>

#include "vsock/connect_parser.hpp"

namespace vsock {
namespace {

std::span<const std::byte> bytes(const std::string& s) { return std::as_bytes(std::span(s)); }

TEST(ConnectParser, WholeLine) {
  ConnectParser p;
  auto [used, outcome] = p.feed(bytes("CONNECT 1234\n"));
  EXPECT_EQ(used, 13u);
  ASSERT_TRUE(std::holds_alternative<ConnectParser::Done>(outcome));
  EXPECT_EQ(std::get<ConnectParser::Done>(outcome).port, 1234u);
}

TEST(ConnectParser, SplitAnywhereAndCaseInsensitive) {
  const std::string line = "cOnNeCt 4294967295\n";
  for (std::size_t cut = 0; cut <= line.size(); ++cut) {
    ConnectParser p;
    auto first = p.feed(bytes(line.substr(0, cut)));
    EXPECT_EQ(first.first, cut);
    if (cut < line.size()) {
      ASSERT_TRUE(std::holds_alternative<ConnectParser::NeedMore>(first.second)) << cut;
      auto second = p.feed(bytes(line.substr(cut)));
      ASSERT_TRUE(std::holds_alternative<ConnectParser::Done>(second.second)) << cut;
      EXPECT_EQ(std::get<ConnectParser::Done>(second.second).port, 4294967295u);
    }
  }
}

TEST(ConnectParser, NeverConsumesPastTheNewline) {
  ConnectParser p;
  auto [used, outcome] = p.feed(bytes("CONNECT 5\npayload"));
  EXPECT_EQ(used, 10u);
  EXPECT_TRUE(std::holds_alternative<ConnectParser::Done>(outcome));
}

TEST(ConnectParser, ToleratesSpacesAndCrlf) {
  ConnectParser p;
  auto [used, outcome] = p.feed(bytes("CONNECT   80 \r\n"));
  ASSERT_TRUE(std::holds_alternative<ConnectParser::Done>(outcome));
  EXPECT_EQ(std::get<ConnectParser::Done>(outcome).port, 80u);
}

TEST(ConnectParser, RefusesMalformedLines) {
  for (const std::string line : {"CONNECT\n", "CONNECTX 1\n", "HELLO 1\n", "CONNECT -1\n", "CONNECT 4294967296\n",
                                 "CONNECT 12ab\n", "CONNECT 1 2\n", "\n"}) {
    ConnectParser p;
    auto [used, outcome] = p.feed(bytes(line));
    EXPECT_TRUE(std::holds_alternative<ConnectParser::Invalid>(outcome)) << line;
  }
}

TEST(ConnectParser, BoundsTheLineLength) {
  ConnectParser p;
  const std::string long_line(ConnectParser::max_line, ' ');
  auto [used, outcome] = p.feed(bytes(long_line));
  EXPECT_TRUE(std::holds_alternative<ConnectParser::Invalid>(outcome));
  EXPECT_LE(used, ConnectParser::max_line);
  EXPECT_EQ(p.budget(), 0u);
}

}  // namespace
}  // namespace vsock
