// vusim: plays QEMU and a guest driver against any vhost-user backend listening on a socket.
//
//   vusim --socket /run/rng.sock --sequence qemu-7.2 --device rng --bytes 1M --pause-resume
//
// Connects, replays the chosen QEMU version's realize and start, and for the rng device
// reads entropy through the request queue and reports the rate; then optionally pauses and
// resumes the VM and drops and re-establishes the connection, reading again after each; and
// finally stops the device. Exit status 0 when everything worked, 1 with a message on stderr
// naming the phase and what went wrong, 2 for a bad command line.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <boost/endian/conversion.hpp>

#include "vusim/frontend.hpp"
#include "vusim/rng.hpp"
#include "vusim/sequences.hpp"

namespace {

struct Settings {
  std::string socket;
  std::string sequence = "qemu-7.2";
  std::string device = "rng";
  std::uint64_t bytes = 1 << 20;
  std::uint32_t buffer_size = 4096;
  std::optional<std::uint64_t> driver_features;
  unsigned regions = 1;
  std::uint64_t region_mib = 64;
  unsigned timeout_ms = 5000;
  bool pause_resume = false;
  bool reconnect = false;
  bool verbose = false;
};

std::string hex(std::uint64_t v) { return fmt::format("{:#x}", v); }

/// The device's traffic after each phase: entropy for rng; vsock has no data path here.
vusim::Result<void> exercise(const Settings& s, vusim::VhostDev& dev, std::string_view phase) {
  if (dev.model.name != "rng") return {};
  auto stats = vusim::read_entropy(dev.drivers.at(0), dev.ram, s.bytes, s.buffer_size,
                                   std::chrono::milliseconds(s.timeout_ms));
  if (!stats) return stats.error();
  fmt::print("{}: rng read {} bytes in {} requests, {:.3f} s, {:.1f} MiB/s ({:.0f} bytes/s)\n", phase,
             stats->bytes, stats->requests, std::chrono::duration<double>(stats->elapsed).count(),
             stats->bytes_per_second() / (1024 * 1024), stats->bytes_per_second());
  return {};
}

std::string bases_text(const std::vector<std::uint16_t>& bases) {
  std::string out;
  for (auto b : bases) out += (out.empty() ? "" : " ") + std::to_string(b);
  return "[" + out + "]";
}

vusim::Result<void> run(const Settings& s) {
  const vusim::Sequence& seq = *vusim::find_sequence(s.sequence);
  vusim::DeviceModel model = s.device == "vsock" ? vusim::DeviceModel::vsock() : vusim::DeviceModel::rng();
  if (s.driver_features) model.driver_features = *s.driver_features;

  auto ram = vusim::GuestRam::contiguous(s.region_mib << 20, s.regions, vusim::Backing::one_memfd);
  if (!ram) return ram.error();
  vusim::Frontend::Options options{.timeout = std::chrono::milliseconds(s.timeout_ms), .trace = {}};
  if (s.verbose) options.trace = [](std::string_view line) { fmt::print("  {}\n", line); };

  auto fe = vusim::Frontend::connect(s.socket, options);
  if (!fe) return fe.error();
  vusim::VhostDev dev(model, *ram);
  fmt::print("vusim: {} against {} (device {})\n", seq.name, s.socket, model.name);

  if (auto ok = seq.realize(*fe, dev); !ok) return ok;
  fmt::print("realize: features {} protocol features {}", hex(dev.backend_features),
             hex(dev.protocol_features));
  if (dev.config.size() == sizeof(std::uint64_t)) {
    std::uint64_t cid;
    std::memcpy(&cid, dev.config.data(), sizeof cid);
    fmt::print(" guest_cid {}", boost::endian::little_to_native(cid));
  }
  fmt::print("\n");
  if (auto ok = seq.start(*fe, dev, {}); !ok) return ok;
  fmt::print("start: driver features {}\n", hex(dev.guest_features));
  if (auto ok = exercise(s, dev, "start"); !ok) return ok;

  if (s.pause_resume) {
    auto bases = vusim::pause_resume(*fe, dev, seq);
    if (!bases) return bases.error();
    fmt::print("pause/resume: GET_VRING_BASE returned {}\n", bases_text(*bases));
    if (auto ok = exercise(s, dev, "resume"); !ok) return ok;
  }
  if (s.reconnect) {
    auto fresh = vusim::reconnect(*fe, dev, seq, s.socket, options);
    if (!fresh) return fresh.error();
    fe = std::move(fresh);
    fmt::print("reconnect: realize and start replayed on a new connection\n");
    if (auto ok = exercise(s, dev, "reconnect"); !ok) return ok;
  }
  auto bases = seq.stop(*fe, dev);
  if (!bases) return bases.error();
  fmt::print("stop: GET_VRING_BASE returned {}\n", bases_text(*bases));
  return fe->disconnect();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"vusim: play QEMU and a guest driver against a vhost-user backend"};
  Settings s;
  std::vector<std::string> names;
  for (const auto& seq : vusim::all_sequences()) names.emplace_back(seq.name);
  cli.add_option("--socket", s.socket, "the backend's vhost-user socket")->required();
  cli.add_option("--sequence", s.sequence, "which QEMU to play")
      ->check(CLI::IsMember(names))
      ->capture_default_str();
  cli.add_option("--device", s.device, "device model (queues, sizes, config)")
      ->check(CLI::IsMember({"rng", "vsock"}))
      ->capture_default_str();
  cli.add_option("--bytes", s.bytes, "rng: entropy bytes to read after each phase")
      ->transform(CLI::AsSizeValue(false))
      ->capture_default_str();
  cli.add_option("--buffer-size", s.buffer_size, "rng: bytes per request buffer")
      ->check(CLI::Range(1U, 1U << 24))
      ->capture_default_str();
  cli.add_option("--driver-features", s.driver_features,
                 "virtio features the guest driver acks when offered (default: what Linux acks)");
  cli.add_option("--regions", s.regions, "guest RAM regions, adjacent, from one memfd")
      ->check(CLI::Range(1U, 8U))
      ->capture_default_str();
  cli.add_option("--region-mib", s.region_mib, "size of each RAM region in MiB")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{4096}))
      ->capture_default_str();
  cli.add_option("--timeout-ms", s.timeout_ms, "deadline for every reply and completion")
      ->check(CLI::Range(1U, 600000U))
      ->capture_default_str();
  cli.add_flag("--pause-resume", s.pause_resume, "stop and start the device again (VM pause/cont)");
  cli.add_flag("--reconnect", s.reconnect, "drop the connection and replay everything on a new one");
  cli.add_flag("--verbose", s.verbose, "trace every message sent and received");
  CLI11_PARSE(cli, argc, argv);

  if (auto ok = run(s); !ok) {
    std::fflush(stdout);
    fmt::print(stderr, "vusim: FAILED: {}: {}\n", vusim::to_string(ok.error().fault), ok.error().message);
    return EXIT_FAILURE;
  }
  fmt::print("vusim: ok\n");
  return EXIT_SUCCESS;
}
