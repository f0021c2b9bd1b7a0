#include "vhostuser/codec.hpp"

#include "vhostuser/request_table.hpp"

namespace vhostuser {
namespace {

/// Exact payload size of the fixed layouts.
constexpr std::size_t fixed_size(Layout layout) {
  switch (layout) {
    case Layout::none: return 0;
    case Layout::u64:
    case Layout::vring_fd: return sizeof(std::uint64_t);
    case Layout::vring_state: return sizeof(VringState);
    case Layout::vring_addr: return sizeof(VringAddr);
    case Layout::single_region: return sizeof(SingleMemRegion);
    case Layout::log: return sizeof(LogInfo);
    case Layout::vring_area: return sizeof(VringArea);
    case Layout::inflight: return sizeof(InflightInfo);
    case Layout::iotlb: return sizeof(IotlbMsg);
    case Layout::device_state: return sizeof(DeviceStateParams);
    case Layout::uuid: return sizeof(Uuid);
    case Layout::mem_table:
    case Layout::config:
    case Layout::opaque: break;
  }
  return SIZE_MAX;  // variable-size layouts are checked by their decoders
}

Result<Payload> decode_mem_table(std::span<const std::byte> body) {
  if (body.size() < sizeof(MemTableHeader)) return Errc::wrong_size;
  const auto header = load<MemTableHeader>(body);
  if (header.nregions == 0 || header.nregions > max_mem_table_regions) return Errc::bad_payload;
  // QEMU sends only the regions in use (8 + 32 * n); other frontends send the whole
  // 8-region array of struct VhostUserMemory. Both are the same table.
  const std::size_t used = sizeof(MemTableHeader) + header.nregions * sizeof(MemRegion);
  const std::size_t full = sizeof(MemTableHeader) + max_mem_table_regions * sizeof(MemRegion);
  if (body.size() != used && body.size() != full) return Errc::wrong_size;
  MemTable table;
  table.regions.reserve(header.nregions);
  for (std::uint32_t i = 0; i < header.nregions; ++i) {
    table.regions.push_back(load<MemRegion>(body.subspan(sizeof(MemTableHeader) + i * sizeof(MemRegion))));
  }
  return Payload{std::move(table)};
}

Result<Payload> decode_config(std::span<const std::byte> body) {
  if (body.size() < sizeof(ConfigHeader)) return Errc::wrong_size;
  ConfigPayload config{load<ConfigHeader>(body), {}};
  if (config.header.size > max_config_size) return Errc::bad_payload;
  if (body.size() != sizeof(ConfigHeader) + config.header.size) return Errc::wrong_size;
  const auto data = body.subspan(sizeof(ConfigHeader));
  config.data.assign(data.begin(), data.end());
  return Payload{std::move(config)};
}

Result<Payload> decode_payload(Layout layout, std::span<const std::byte> body) {
  if (const std::size_t size = fixed_size(layout); size != SIZE_MAX && body.size() != size) {
    return Errc::wrong_size;
  }
  switch (layout) {
    case Layout::none: return Payload{NoPayload{}};
    case Layout::u64: return Payload{U64Payload{load<std::uint64_t>(body)}};
    case Layout::vring_state: return Payload{load<VringState>(body)};
    case Layout::vring_addr: return Payload{load<VringAddr>(body)};
    case Layout::vring_fd: {
      const auto value = load<std::uint64_t>(body);
      // Bits above the index and the no-fd flag are reserved (spec: "Bits (0-7) ... Bit 8").
      if ((value & ~(vring_fd_index_mask | vring_fd_no_fd)) != 0) return Errc::bad_payload;
      return Payload{VringFd{static_cast<std::uint8_t>(value & vring_fd_index_mask),
                             (value & vring_fd_no_fd) != 0}};
    }
    case Layout::mem_table: return decode_mem_table(body);
    case Layout::single_region: return Payload{load<SingleMemRegion>(body)};
    case Layout::log: return Payload{load<LogInfo>(body)};
    case Layout::config: return decode_config(body);
    case Layout::vring_area: return Payload{load<VringArea>(body)};
    case Layout::inflight: return Payload{load<InflightInfo>(body)};
    case Layout::iotlb: return Payload{load<IotlbMsg>(body)};
    case Layout::device_state: return Payload{load<DeviceStateParams>(body)};
    case Layout::uuid: return Payload{load<Uuid>(body)};
    case Layout::opaque: return Payload{OpaquePayload{{body.begin(), body.end()}}};
  }
  return Errc::wrong_size;
}

std::size_t expected_fds(FdRule rule, const Payload& payload) {
  switch (rule) {
    case FdRule::none: return 0;
    case FdRule::one: return 1;
    case FdRule::per_region: return std::get<MemTable>(payload).regions.size();
    case FdRule::vring: return std::get<VringFd>(payload).no_fd ? 0 : 1;
    case FdRule::at_most_one: return SIZE_MAX;  // checked by the caller
  }
  return 0;
}

std::vector<std::byte> encode(Request request, std::uint32_t flags, std::span<const std::byte> payload) {
  const Header header{static_cast<std::uint32_t>(request), flags,
                      static_cast<std::uint32_t>(payload.size())};
  std::vector<std::byte> out(sizeof(Header) + payload.size());
  std::memcpy(out.data(), &header, sizeof header);
  if (!payload.empty()) std::memcpy(out.data() + sizeof header, payload.data(), payload.size());
  return out;
}

}  // namespace

Result<void> check_request_header(const Header& header) {
  if ((header.flags & header_flags::version_mask) != header_flags::version) return Errc::bad_version;
  if ((header.flags & header_flags::reply) != 0) return Errc::unexpected_reply_flag;
  if (header.size > max_payload_size) return Errc::oversized_message;
  return {};
}

Result<Message> decode_request(const Header& header, std::span<const std::byte> body,
                               std::vector<UniqueFd> fds) {
  if (auto ok = check_request_header(header); !ok) return ok.error();
  if (body.size() != header.size) return Errc::wrong_size;
  const RequestRule* rule = find_rule(header.request);
  if (rule == nullptr) return Errc::unknown_request;

  auto payload = decode_payload(rule->layout, body);
  if (!payload) return payload.error();
  const std::size_t want = expected_fds(rule->fds, *payload);
  if (want == SIZE_MAX ? fds.size() > 1 : fds.size() != want) return Errc::wrong_fd_count;

  return Message{rule->request, header.flags, std::move(*payload), std::move(fds)};
}

std::vector<std::byte> encode_reply(Request request, std::span<const std::byte> payload) {
  return encode(request, header_flags::version | header_flags::reply, payload);
}

std::vector<std::byte> encode_request(Request request, std::uint32_t extra_flags,
                                      std::span<const std::byte> payload) {
  return encode(request, header_flags::version | extra_flags, payload);
}

std::vector<std::byte> encode_payload(const Payload& payload) {
  auto copy = [](const auto& value) {
    auto b = bytes_of(value);
    return std::vector<std::byte>(b.begin(), b.end());
  };
  return std::visit(
      [&](const auto& p) -> std::vector<std::byte> {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, NoPayload>) {
          return {};
        } else if constexpr (std::is_same_v<T, U64Payload>) {
          return copy(p.value);
        } else if constexpr (std::is_same_v<T, VringFd>) {
          return copy(std::uint64_t{p.index} | (p.no_fd ? vring_fd_no_fd : 0));
        } else if constexpr (std::is_same_v<T, MemTable>) {
          std::vector<std::byte> out = copy(MemTableHeader{static_cast<std::uint32_t>(p.regions.size()), 0});
          for (const auto& r : p.regions) {
            auto b = bytes_of(r);
            out.insert(out.end(), b.begin(), b.end());
          }
          return out;
        } else if constexpr (std::is_same_v<T, ConfigPayload>) {
          std::vector<std::byte> out = copy(p.header);
          out.insert(out.end(), p.data.begin(), p.data.end());
          return out;
        } else if constexpr (std::is_same_v<T, OpaquePayload>) {
          return p.bytes;
        } else {
          return copy(p);
        }
      },
      payload);
}

Result<void> check_reply_header(Request request, const Header& header,
                                std::optional<std::uint32_t> expected_size) {
  if (header.request != static_cast<std::uint32_t>(request)) return Errc::bad_reply;
  if (header.flags != (header_flags::version | header_flags::reply)) return Errc::bad_reply;
  if (header.size > max_payload_size) return Errc::oversized_message;
  if (expected_size && header.size != *expected_size) return Errc::wrong_size;
  return {};
}

}  // namespace vhostuser
