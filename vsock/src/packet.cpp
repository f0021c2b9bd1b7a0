#include "vsock/packet.hpp"

#include <fmt/format.h>

namespace vsock {

Header decode(const WireHeader& w) {
  return Header{
      .src = {w.src_cid.value(), w.src_port.value()},
      .dst = {w.dst_cid.value(), w.dst_port.value()},
      .len = w.len.value(),
      .type = w.type.value(),
      .op = w.op.value(),
      .flags = w.flags.value(),
      .buf_alloc = w.buf_alloc.value(),
      .fwd_cnt = w.fwd_cnt.value(),
  };
}

WireHeader encode(const Header& h) {
  WireHeader w;
  w.src_cid = h.src.cid;
  w.dst_cid = h.dst.cid;
  w.src_port = h.src.port;
  w.dst_port = h.dst.port;
  w.len = h.len;
  w.type = h.type;
  w.op = h.op;
  w.flags = h.flags;
  w.buf_alloc = h.buf_alloc;
  w.fwd_cnt = h.fwd_cnt;
  return w;
}

Header reset_reply(const Header& packet) {
  Header rst;
  rst.src = packet.dst;
  rst.dst = packet.src;
  rst.type = packet.type;
  rst.op = static_cast<std::uint16_t>(Op::rst);
  return rst;
}

std::string describe(const Header& h) {
  static constexpr const char* ops[] = {"INVALID", "REQUEST",  "RESPONSE",      "RST",
                                        "SHUTDOWN", "RW", "CREDIT_UPDATE", "CREDIT_REQUEST"};
  const char* op = h.op < std::size(ops) ? ops[h.op] : "OP?";
  const char* type = h.type == 1 ? "stream" : h.type == 2 ? "seqpacket" : "type?";
  return fmt::format("{} {}:{} -> {}:{} {} len {} flags {:#x} buf_alloc {} fwd_cnt {}", op, h.src.cid,
                     h.src.port, h.dst.cid, h.dst.port, type, h.len, h.flags, h.buf_alloc, h.fwd_cnt);
}

}  // namespace vsock
