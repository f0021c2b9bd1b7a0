#include "describe.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "vhostuser/codec.hpp"

namespace vusim {
namespace {

using vhostuser::Request;

std::string hex_dump(std::span<const std::byte> bytes) {
  constexpr std::size_t shown = 32;
  std::string out;
  for (std::size_t i = 0; i < std::min(bytes.size(), shown); ++i) {
    out += fmt::format("{:02x}", std::to_integer<unsigned>(bytes[i]));
  }
  if (bytes.size() > shown) out += "...";
  return out;
}

std::string region_text(const vhostuser::MemRegion& r) {
  return fmt::format("gpa={:#x} size={:#x} uva={:#x} mmap_offset={:#x}", r.guest_phys_addr, r.memory_size,
                     r.userspace_addr, r.mmap_offset);
}

/// The payload of `request` decoded by its layout, or a hex dump when the size does not fit.
std::string payload_text(Request request, std::span<const std::byte> p, bool is_reply) {
  using vhostuser::load;
  // Replies carry their request's layout only for GET_VRING_BASE and GET_CONFIG; every
  // other reply is a u64 (a value, or a REPLY_ACK status).
  if (is_reply && request != Request::get_vring_base && request != Request::get_config) {
    return p.size() == sizeof(std::uint64_t) ? fmt::format("{:#x}", load<std::uint64_t>(p)) : hex_dump(p);
  }
  switch (request) {
    case Request::set_vring_num:
    case Request::set_vring_base:
    case Request::get_vring_base:
    case Request::set_vring_enable:
      if (p.size() == sizeof(vhostuser::VringState)) {
        const auto s = load<vhostuser::VringState>(p);
        return fmt::format("index={} num={}", s.index, s.num);
      }
      break;
    case Request::set_vring_kick:
    case Request::set_vring_call:
    case Request::set_vring_err:
      if (p.size() == sizeof(std::uint64_t)) {
        const auto v = load<std::uint64_t>(p);
        return fmt::format("index={}{}", v & vhostuser::vring_fd_index_mask,
                           (v & vhostuser::vring_fd_no_fd) != 0 ? " no-fd" : "");
      }
      break;
    case Request::set_vring_addr:
      if (p.size() == sizeof(vhostuser::VringAddr)) {
        const auto a = load<vhostuser::VringAddr>(p);
        return fmt::format("index={} flags={:#x} desc={:#x} used={:#x} avail={:#x} log={:#x}", a.index,
                           a.flags, a.desc_user_addr, a.used_user_addr, a.avail_user_addr, a.log_guest_addr);
      }
      break;
    case Request::set_mem_table:
      if (p.size() >= sizeof(vhostuser::MemTableHeader)) {
        const auto h = load<vhostuser::MemTableHeader>(p);
        std::string out = fmt::format("nregions={}", h.nregions);
        const std::size_t fit = (p.size() - sizeof h) / sizeof(vhostuser::MemRegion);
        for (std::size_t i = 0; i < std::min<std::size_t>(h.nregions, fit); ++i) {
          out += " [" +
                 region_text(
                     load<vhostuser::MemRegion>(p.subspan(sizeof h + i * sizeof(vhostuser::MemRegion)))) +
                 "]";
        }
        return out;
      }
      break;
    case Request::add_mem_reg:
    case Request::rem_mem_reg:
      if (p.size() == sizeof(vhostuser::SingleMemRegion)) {
        return region_text(load<vhostuser::SingleMemRegion>(p).region);
      }
      break;
    case Request::get_config:
    case Request::set_config:
      if (p.size() >= sizeof(vhostuser::ConfigHeader)) {
        const auto c = load<vhostuser::ConfigHeader>(p);
        return fmt::format("offset={} size={} flags={:#x} data={}", c.offset, c.size, c.flags,
                           hex_dump(p.subspan(sizeof c)));
      }
      break;
    default: break;
  }
  if (p.size() == sizeof(std::uint64_t)) return fmt::format("{:#x}", load<std::uint64_t>(p));
  return hex_dump(p);
}

std::string line(std::string_view arrow, const vhostuser::Header& h, std::span<const std::byte> payload,
                 std::size_t fds, bool is_reply) {
  const auto request = static_cast<Request>(h.request);
  std::string out = fmt::format("{} {:2} {:<22} flags={:#x} size={}", arrow, h.request,
                                vhostuser::to_string(request), h.flags, h.size);
  if (fds > 0) out += fmt::format(" fds={}", fds);
  if (!payload.empty()) {
    out += ' ';
    out += payload_text(request, payload, is_reply);
  }
  return out;
}

}  // namespace

std::string describe_request(const vhostuser::Header& header, std::span<const std::byte> payload,
                             std::size_t fds) {
  return line("->", header, payload, fds, false);
}

std::string describe_reply(const vhostuser::RawMessage& reply) {
  return line("<-", reply.header, reply.body, reply.fds.size(), true);
}

}  // namespace vusim
