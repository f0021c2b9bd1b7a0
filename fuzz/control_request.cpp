// Fuzz target: what a control-socket client sends (app/vsockd/control_protocol.hpp) and
// what the daemon does with the words before touching any VM: the request grammar, CIDs, a
// --vm value (`add`) with every key's parser and the whole configuration's validation, and
// group lists (`groups`). Also the client's side: parsing a reply. Nothing may crash, hang
// or trip a sanitizer; anything may be refused.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "control_protocol.hpp"
#include "fuzz_target.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  namespace control = vsockd::control;
  namespace config = vsockd::config;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  (void)control::parse_reply(text);
  auto request = control::parse_request(text);
  if (!request) return 0;
  switch (request->command) {
    case control::Command::stats:
    case control::Command::remove: (void)control::parse_cid(request->args[0]); break;
    case control::Command::groups:
      if (control::parse_cid(request->args[0])) (void)config::parse_groups(request->args[1]);
      break;
    case control::Command::add:
      if (auto vm = config::parse_vm_argument(request->args[0], "add")) {
        config::DaemonConfig daemon;
        daemon.vms.push_back(*vm);
        (void)config::validate(daemon);
      }
      break;
    default: break;
  }
  return 0;
}
