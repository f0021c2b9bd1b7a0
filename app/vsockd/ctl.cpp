#include "ctl.hpp"

#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>

#include "control_protocol.hpp"

namespace vsockd {
namespace asio = boost::asio;

namespace {

/// The whole exchange; the reply as the daemon sent it, up to its closing the connection.
config::Result<std::string> send_request(const std::string& path, const std::string& line) {
  asio::io_context io;
  asio::local::stream_protocol::socket socket(io);
  boost::system::error_code ec;
  socket.connect(asio::local::stream_protocol::endpoint(path), ec);
  if (ec) return config::Error{fmt::format("cannot connect to the control socket {}: {}", path, ec.message())};
  // A daemon that never answers must not hang the client: blocking reads time out.
  const timeval timeout{30, 0};
  ::setsockopt(socket.native_handle(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  asio::write(socket, asio::buffer(line + "\n"), ec);
  if (ec) return config::Error{fmt::format("sending to {}: {}", path, ec.message())};
  std::string reply;
  asio::read(socket, asio::dynamic_buffer(reply, std::size_t{1} << 26), ec);
  if (ec && ec != asio::error::eof) return config::Error{fmt::format("reading from {}: {}", path, ec.message())};
  return config::Result<std::string>(boost::system::in_place_value, std::move(reply));
}

}  // namespace

int run_ctl(std::span<const char* const> args) {
  std::string usage_lines;
  for (const auto& c : control::commands) usage_lines += fmt::format("  {:<22} {}\n", c.usage, c.help);
  CLI::App cli{"vhost-vsockd ctl: control a running vhost-vsockd through its control socket", "vhost-vsockd ctl"};
  cli.footer("Commands:\n" + usage_lines + "\nThe protocol is documented in docs/usage.md (\"Runtime control\").");
  std::string path;
  std::vector<std::string> words;
  cli.add_option("-s,--control-socket", path, "the daemon's control socket (its --control-socket)")
      ->type_name("PATH")
      ->required();
  cli.add_option("command", words, "COMMAND [ARG...]")->required()->expected(1, 3);
  try {
    cli.parse(static_cast<int>(args.size()), args.data());
  } catch (const CLI::Success&) {
    std::fputs(cli.help().c_str(), stdout);
    return 0;
  } catch (const CLI::Error& e) {
    std::fprintf(stderr, "vhost-vsockd ctl: %s\nRun with --help for more information.\n", e.what());
    return config::usage_exit_code;
  }
  auto line = control::format_request(words);
  if (!line) {
    std::fprintf(stderr, "vhost-vsockd ctl: %s\n", line.error().message.c_str());
    return config::usage_exit_code;
  }
  auto data = send_request(path, *line);
  if (!data) {
    std::fprintf(stderr, "vhost-vsockd ctl: %s\n", data.error().message.c_str());
    return 1;
  }
  auto reply = control::parse_reply(*data);
  if (!reply) {
    std::fprintf(stderr, "vhost-vsockd ctl: %s\n", reply.error().message.c_str());
    return 1;
  }
  if (!reply->ok) {
    std::fprintf(stderr, "vhost-vsockd ctl: %s\n", reply->text.c_str());
    return 1;
  }
  std::fputs(reply->text.c_str(), stdout);
  return 0;
}

}  // namespace vsockd
