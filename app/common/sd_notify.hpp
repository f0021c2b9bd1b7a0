#pragma once
// systemd's readiness protocol (sd_notify(3)): one datagram "READY=1" to the AF_UNIX socket
// named by $NOTIFY_SOCKET. Does nothing when the variable is unset (not under systemd or a
// test harness), so daemons call it unconditionally once every socket listens.
#include <string_view>

namespace app {

/// Sends `state` (e.g. "READY=1", "STOPPING=1"); returns false if a socket was named but
/// the datagram could not be sent.
bool sd_notify(std::string_view state);

}  // namespace app
