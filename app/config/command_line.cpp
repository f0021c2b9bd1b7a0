// vhost-vsockd's command line, with CLI11. CLI11 only collects the text of each flag; the
// values go through the same key mechanism as --vm and YAML (fields.hpp), so a flag and its
// key can never disagree on what they accept.
#include <algorithm>
#include <map>

#include <CLI/CLI.hpp>

#include "common/logging.hpp"
#include "config/fields.hpp"

namespace vsockd::config {
namespace {

struct KeyHelp {
  std::string_view key;
  std::string_view text;
};

// Documentation of each key for --help (what a key means is documented once, in
// daemon_config.hpp; these are the one-line reminders).
constexpr KeyHelp key_help[] = {
    {"guest_cid", "the guest's CID, 3 .. 4294967294"},
    {"socket", "vhost-user socket to listen on (QEMU connects to it); required"},
    {"uds_path", "host-side AF_UNIX socket of the VM (hybrid vsock); required"},
    {"tx_buffer_size", "per-connection guest->host buffer, advertised as buf_alloc, bytes"},
    {"queue_size", "largest virtqueue size accepted, a power of two up to 32768"},
    {"groups", "sibling groups, g1+g2"},
    {"connect_timeout_ms", "host-initiated connect timeout"},
    {"shutdown_timeout_ms", "flush timeout after the guest closes"},
    {"max_connections", "connections at once"},
    {"control_socket", "AF_UNIX socket of the runtime control API (vhost-vsockd ctl)"},
    {"threads", "worker threads that run all VMs; default: the number of cores"},
};

constexpr std::string_view help_for(std::string_view key) {
  for (const KeyHelp& h : key_help) {
    if (h.key == key) return h.text;
  }
  return {};
}

template <class S>
constexpr bool every_key_has_help() {
  bool ok = true;
  boost::mp11::mp_for_each<boost::describe::describe_members<S, boost::describe::mod_public>>(
      [&](auto d) { ok = ok && !help_for(d.name).empty(); });
  return ok;
}
static_assert(every_key_has_help<VmConfig>() && every_key_has_help<DaemonConfig>(),
              "every key needs a line of --help in key_help");

std::string default_text(const std::optional<std::filesystem::path>&) { return "none"; }
template <class T>
std::string default_text(const T& value) {
  return detail::format_value(value);
}

// What --help shows as the value of a flag, by member type.
std::string type_text(std::chrono::milliseconds) { return "MS"; }
std::string type_text(const std::filesystem::path&) { return "PATH"; }
std::string type_text(const std::optional<std::filesystem::path>&) { return "PATH"; }
std::string type_text(const Groups&) { return "G1+G2"; }
template <std::unsigned_integral T>
std::string type_text(T) {
  return "N";
}

/// One flag made from a described member: CLI11 keeps its text until the member is set.
struct KeyFlag {
  std::string name;  // the member, snake case
  std::string text;
  CLI::Option* option = nullptr;
};

/// Adds a flag `--<dash name>` for every described member of `defaults`.
template <class S>
void add_key_flags(CLI::App& cli, const S& defaults, std::string_view group,
                   std::vector<std::unique_ptr<KeyFlag>>& out) {
  detail::for_each_member(defaults, [&](std::string_view name, const auto& value) {
    auto flag = std::make_unique<KeyFlag>();
    flag->name = name;
    flag->option = cli.add_option("--" + detail::dash_case(name), flag->text, std::string{help_for(name)})
                       ->type_name(type_text(value))
                       ->default_str(default_text(value))
                       ->group(std::string{group});
    out.push_back(std::move(flag));
  });
}

/// Sets `target`'s members from the flags given; messages name the flag.
template <class S>
Result<detail::KeySetter<S>> apply_flags(S& target, const std::vector<std::unique_ptr<KeyFlag>>& flags) {
  detail::KeySetter<S> setter(target);
  for (const auto& flag : flags) {
    if (flag->option->count() == 0) continue;
    auto set = setter.set(detail::dash_case(flag->name),
                          [&](auto& member) { return detail::parse_value(flag->text, member); });
    if (!set) return Error{fmt::format("--{}", set.error().message)};
  }
  return setter;
}

std::string first_given(const std::vector<std::unique_ptr<KeyFlag>>& flags) {
  for (const auto& flag : flags) {
    if (flag->option->count() > 0) return flag->option->get_name();
  }
  return {};
}

Result<VmConfig> single_vm(const std::vector<std::unique_ptr<KeyFlag>>& flags) {
  VmConfig vm;
  auto setter = apply_flags(vm, flags);
  if (!setter) return setter.error();
  for (const char* required : {"socket", "uds_path"}) {
    if (!setter->has(required)) return Error{fmt::format("--{} is required", detail::dash_case(required))};
  }
  return vm;
}

}  // namespace

Result<std::variant<DaemonConfig, Help>> parse_command_line(std::span<const char* const> args) {
  CLI::App cli{"vhost-vsockd: the virtio-vsock device of QEMU VMs (vhost-user-vsock-pci), over vhost-user",
               "vhost-vsockd"};
  cli.footer(
      "Signals: SIGTERM/SIGINT stop cleanly (sockets removed), SIGHUP re-reads --config FILE.\n"
      "Runtime control: vhost-vsockd ctl --control-socket PATH COMMAND (see vhost-vsockd ctl --help).");
  std::vector<std::unique_ptr<KeyFlag>> vm_flags;
  std::vector<std::unique_ptr<KeyFlag>> global_flags;
  std::vector<std::string> vm_arguments;
  std::string config_file;
  std::string log_level = DaemonConfig{}.log_level;

  add_key_flags(cli, VmConfig{}, "One VM (or use --vm or --config)", vm_flags);
  auto* vm_option = cli.add_option("--vm", vm_arguments,
                                   "one VM, once per VM: key=value,... with the keys above "
                                   "(snake or dash case), e.g. guest-cid=4,socket=...,uds-path=...")
                        ->type_name("KEYS")
                        ->allow_extra_args(false)
                        ->group("Many VMs");
  auto* config_option = cli.add_option("--config", config_file, "YAML file with a 'vms:' list (see docs/usage.md)")
                            ->type_name("FILE")
                            ->group("Many VMs");
  add_key_flags(cli, DaemonConfig{}, "Global", global_flags);
  cli.add_option("--log-level", log_level, "log verbosity")
      ->default_str(log_level)
      ->check(CLI::IsMember(app::log_level_names()))
      ->group("Global");

  // CLI11 reports by exception; they end here as values.
  try {
    cli.parse(static_cast<int>(args.size()), args.data());
  } catch (const CLI::Success&) {  // --help
    return Help{cli.help()};
  } catch (const CLI::Error& e) {
    return Error{e.what()};
  }

  // One way of naming the VMs per command line: mixing them would leave it unclear which
  // VMs are meant (vhost-device-vsock refuses the same combinations).
  const std::string single_flag = first_given(vm_flags);
  const bool multi = vm_option->count() > 0;
  const bool file = config_option->count() > 0;
  if (file && (multi || !single_flag.empty())) {
    return Error{fmt::format("--config cannot be combined with {}", multi ? "--vm" : single_flag)};
  }
  if (multi && !single_flag.empty()) {
    return Error{fmt::format("--vm cannot be combined with {} (give every key of a VM inside its --vm)", single_flag)};
  }

  DaemonConfig config;
  if (file) {
    auto loaded = load_yaml_file(config_file);
    if (!loaded) return loaded.error();
    config = std::move(*loaded);
  } else if (multi) {
    for (std::size_t i = 0; i < vm_arguments.size(); ++i) {
      auto vm = parse_vm_argument(vm_arguments[i], fmt::format("--vm #{}", i + 1));
      if (!vm) return vm.error();
      config.vms.push_back(std::move(*vm));
    }
  } else if (!single_flag.empty()) {
    auto vm = single_vm(vm_flags);
    if (!vm) return vm.error();
    config.vms.push_back(std::move(*vm));
  } else if (!std::ranges::any_of(global_flags, [](const auto& f) {
               return f->name == "control_socket" && f->option->count() > 0;
             })) {
    // A daemon with a control socket may start empty and get its VMs from `ctl add`.
    return Error{"no VM to serve: give --socket and --uds-path (one VM), --vm (once per VM) or --config FILE"};
  }

  // The command line wins over the file's global keys.
  if (auto globals = apply_flags(config, global_flags); !globals) return globals.error();
  config.log_level = log_level;
  if (auto valid = validate(config); !valid) return valid.error();
  return config;
}

}  // namespace vsockd::config
