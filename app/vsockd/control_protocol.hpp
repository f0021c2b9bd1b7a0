#pragma once
// The control socket's protocol (docs/usage.md, "Runtime control"), shared by the daemon
// and `vhost-vsockd ctl`.
//
// One request per connection. The client sends one line of at most max_request bytes,
// ended by '\n':
//     COMMAND [ARG...]
// with words separated by single spaces. The last argument of `add` and `groups` takes the
// rest of the line, so a --vm value or a group name may hold spaces. The daemon answers and closes the connection:
//     ok\n<body>            the command was carried out; the body depends on the command
//     error <message>\n     nothing was changed (or, for reload, see its body)
// Commands (the table `commands` below is the whole grammar):
//     list                  JSON: every VM with its state, groups, connection counts, counters
//     stats CID             JSON: one VM, with each of its connections
//     metrics               Prometheus text exposition of every VM's counters
//     add KEY=VALUE,...     starts a VM, with the keys of --vm
//     remove CID            stops a VM: its front-end is disconnected, its sibling connections
//                           get RST, its sockets are removed
//     groups CID G1+G2      new groups; sibling connections across a group that is gone get RST
//     reload                re-reads --config FILE and applies the difference (as SIGHUP does)
// Access control is the socket file's: the daemon creates it with mode 0600 (owner only).
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "config/daemon_config.hpp"

namespace vsockd::control {

inline constexpr std::size_t max_request = 4096;

enum class Command { list, stats, metrics, add, remove, groups, reload };

struct CommandSpec {
  std::string_view name;
  Command command;
  std::size_t args;    ///< exactly this many
  bool rest_of_line;   ///< the last argument takes the rest of the line
  std::string_view usage;
  std::string_view help;
};

inline constexpr CommandSpec commands[] = {
    {"list", Command::list, 0, false, "list", "every VM: state, groups, connection counts, counters (JSON)"},
    {"stats", Command::stats, 1, false, "stats CID", "one VM with each of its connections (JSON)"},
    {"metrics", Command::metrics, 0, false, "metrics", "every VM's counters, Prometheus text format"},
    {"add", Command::add, 1, true, "add KEY=VALUE,...", "start a VM, with the keys of --vm"},
    {"remove", Command::remove, 1, false, "remove CID", "stop a VM and remove its sockets"},
    {"groups", Command::groups, 2, true, "groups CID G1+G2", "change a VM's sibling groups"},
    {"reload", Command::reload, 0, false, "reload", "re-read --config FILE and apply the difference"},
};

struct Request {
  Command command;
  std::vector<std::string> args;
};

/// Parses one request line (without its '\n'). Errors name the command's usage.
config::Result<Request> parse_request(std::string_view line);
/// The line `parse_request` reads back as `words` (joined by spaces), checked.
config::Result<std::string> format_request(std::span<const std::string> words);

/// A CID argument: decimal digits, within 32 bits.
config::Result<std::uint64_t> parse_cid(std::string_view text);

/// The reply framing.
std::string ok_reply(std::string_view body);
std::string error_reply(std::string_view message);

struct Reply {
  bool ok;
  std::string text;  ///< the body, or the error message
};
/// Parses a whole reply as the daemon sent it.
config::Result<Reply> parse_reply(std::string_view data);

}  // namespace vsockd::control
