// The --vm form of one VM: `key=value,key=value,...`.
#include "config/fields.hpp"

namespace vsockd::config {

Result<VmConfig> parse_vm_argument(std::string_view text, std::string_view where) {
  VmConfig vm;
  detail::KeySetter<VmConfig> setter(vm);
  if (text.empty()) return Error{fmt::format("{}: empty (expected key=value,...)", where)};
  for (std::size_t start = 0;;) {
    const std::size_t comma = text.find(',', start);
    const std::string_view item = text.substr(start, comma == std::string_view::npos ? comma : comma - start);
    // An empty item is a stray comma, most likely a value that was meant to hold one.
    if (item.empty()) return Error{fmt::format("{}: empty item in '{}' (stray ',')", where, text)};
    // The first '=' ends the key: a value (a path) may contain '=', and is kept whole rather
    // than cut at the second '=' as vhost-device-vsock does.
    const std::size_t equals = item.find('=');
    if (equals == std::string_view::npos) {
      return Error{fmt::format("{}: '{}' is not key=value", where, item)};
    }
    const std::string_view value = item.substr(equals + 1);
    auto set = setter.set(item.substr(0, equals), [&](auto& member) { return detail::parse_value(value, member); });
    if (!set) return Error{fmt::format("{}: {}", where, set.error().message)};
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  for (const char* required : {"socket", "uds_path"}) {
    if (!setter.has(required)) return Error{fmt::format("{}: {} is required", where, required)};
  }
  return vm;
}

std::string to_vm_argument(const VmConfig& vm) {
  std::string text;
  detail::for_each_member(vm, [&](std::string_view name, const auto& member) {
    if (!text.empty()) text += ',';
    text += fmt::format("{}={}", name, detail::format_value(member));
  });
  return text;
}

}  // namespace vsockd::config
