#pragma once
// `vhost-vsockd ctl`: the control socket's client (control_protocol.hpp).
//
//   vhost-vsockd ctl --control-socket PATH COMMAND [ARG...]
//
// Prints the reply's body on stdout and exits with 0, or prints the daemon's error on
// stderr and exits with 1; a bad command line (checked against the same grammar the daemon
// uses) or an unreachable daemon exits with 2 and 1 respectively, with a readable message.
#include <span>

namespace vsockd {

/// `args` as main() gets it, starting at "ctl".
int run_ctl(std::span<const char* const> args);

}  // namespace vsockd
