// The YAML form of the configuration (--config): reading with yaml-cpp, and writing back.
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "config/fields.hpp"

namespace vsockd::config {
namespace {

/// "FILE:LINE" of a node (yaml-cpp counts lines from 0).
std::string at(std::string_view name, const YAML::Node& node) {
  return fmt::format("{}:{}", name, node.Mark().line + 1);
}

// A YAML value becomes a member through the same text parsers as a flag or a --vm value:
// every member takes a scalar, and groups also take a list.
template <class T>
Result<void> from_yaml(const YAML::Node& node, T& member) {
  if (node.IsNull()) return Error{"no value"};
  if (!node.IsScalar()) return Error{"expected a single value, not a list or a map"};
  return detail::parse_value(node.Scalar(), member);
}

Result<void> from_yaml(const YAML::Node& node, Groups& member) {
  if (!node.IsSequence()) return from_yaml<Groups>(node, member);
  std::vector<std::string> items;
  for (const YAML::Node& item : node) {
    if (!item.IsScalar()) return Error{"a list of group names holds only names"};
    items.push_back(item.Scalar());
  }
  return detail::parse_list(items, member);
}

/// Sets the members of `target` from the map `node`, except the entries `take(key, value)`
/// claims for itself (it returns true for those). `label` names the map in messages ("VM 2: ").
template <class S, class Take>
Result<detail::KeySetter<S>> read_map(const YAML::Node& node, S& target, std::string_view name, std::string_view label,
                                      Take&& take) {
  detail::KeySetter<S> setter(target);
  for (const auto& entry : node) {
    const YAML::Node& key = entry.first;
    if (!key.IsScalar()) return Error{fmt::format("{}: {}a key must be a plain name", at(name, key), label)};
    auto taken = take(key, entry.second);
    if (!taken) return Error{fmt::format("{}: {}{}", at(name, key), label, taken.error().message)};
    if (*taken) continue;
    auto set = setter.set(key.Scalar(), [&](auto& member) { return from_yaml(entry.second, member); });
    if (!set) return Error{fmt::format("{}: {}{}", at(name, key), label, set.error().message)};
  }
  return setter;
}

Result<VmConfig> read_vm(const YAML::Node& node, std::string_view name, std::size_t number) {
  const std::string label = fmt::format("VM {}: ", number);
  if (!node.IsMap()) {
    return Error{fmt::format("{}: {}expected a map of keys (guest_cid, socket, ...)", at(name, node), label)};
  }
  VmConfig vm;
  auto setter =
      read_map(node, vm, name, label, [](const YAML::Node&, const YAML::Node&) { return Result<bool>{false}; });
  if (!setter) return setter.error();
  for (const char* required : {"socket", "uds_path"}) {
    if (!setter->has(required)) return Error{fmt::format("{}: {}{} is required", at(name, node), label, required)};
  }
  return vm;
}

Result<DaemonConfig> read_document(const YAML::Node& root, std::string_view name) {
  if (!root.IsMap()) return Error{fmt::format("{}: expected a map with a 'vms' list", name)};
  DaemonConfig config;
  std::optional<YAML::Node> vms;
  std::string vms_at;
  auto globals = read_map(root, config, name, "", [&](const YAML::Node& key, const YAML::Node& value) -> Result<bool> {
    if (key.Scalar() != "vms") return false;
    if (vms) return Error{"vms: given twice"};
    vms = value;
    vms_at = at(name, key);
    return true;
  });
  if (!globals) return globals.error();
  // vhost-device-vsock panics here (an unwrap on the missing key).
  if (!vms) return Error{fmt::format("{}: no 'vms' list", name)};
  if (!vms->IsSequence() || vms->size() == 0) {
    return Error{fmt::format("{}: vms: expected a list of at least one VM", vms_at)};
  }
  for (const YAML::Node& item : *vms) {
    auto vm = read_vm(item, name, config.vms.size() + 1);
    if (!vm) return vm.error();
    config.vms.push_back(std::move(*vm));
  }
  return config;
}

// --- writing ------------------------------------------------------------------------------------

void emit(YAML::Emitter& out, std::string_view key, const std::filesystem::path& value) {
  // Quoted, so that a path such as "null" or "123" reads back as text.
  out << YAML::Key << std::string{key} << YAML::Value << YAML::DoubleQuoted << value.native();
}

void emit(YAML::Emitter& out, std::string_view key, const std::optional<std::filesystem::path>& value) {
  if (value) emit(out, key, *value);
}

void emit(YAML::Emitter& out, std::string_view key, const Groups& value) {
  out << YAML::Key << std::string{key} << YAML::Value << YAML::Flow << YAML::BeginSeq;
  for (const std::string& group : value) out << YAML::DoubleQuoted << group;
  out << YAML::EndSeq;
}

template <class T>
void emit(YAML::Emitter& out, std::string_view key, const T& value) {
  out << YAML::Key << std::string{key} << YAML::Value << detail::format_value(value);
}

}  // namespace

Result<DaemonConfig> load_yaml(std::string_view text, std::string_view name) {
  // yaml-cpp reports syntax errors by exception; they end here as values.
  YAML::Node root;
  try {
    root = YAML::Load(std::string{text});
  } catch (const YAML::Exception& e) {
    return Error{fmt::format("{}:{}: {}", name, e.mark.line + 1, e.msg)};
  }
  auto config = read_document(root, name);
  if (!config) return config;
  if (auto valid = validate(*config); !valid) return Error{fmt::format("{}: {}", name, valid.error().message)};
  return config;
}

Result<DaemonConfig> load_yaml_file(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) return Error{fmt::format("cannot open {}: {}", file.native(), std::strerror(errno))};
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad() || !text) return Error{fmt::format("cannot read {}", file.native())};
  auto config = load_yaml(text.str(), file.native());
  if (config) config->config_file = file;
  return config;
}

Result<std::vector<VmConfig>> reload_vms(const std::filesystem::path& file) {
  auto config = load_yaml_file(file);
  if (!config) return config.error();
  return std::move(config->vms);
}

std::string to_yaml(const DaemonConfig& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  detail::for_each_member(config, [&](std::string_view key, const auto& value) { emit(out, key, value); });
  out << YAML::Key << "vms" << YAML::Value << YAML::BeginSeq;
  for (const VmConfig& vm : config.vms) {
    out << YAML::BeginMap;
    detail::for_each_member(vm, [&](std::string_view key, const auto& value) { emit(out, key, value); });
    out << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::EndMap;
  return std::string{out.c_str()} + "\n";
}

}  // namespace vsockd::config
