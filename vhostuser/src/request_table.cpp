#include "vhostuser/request_table.hpp"

#include <array>

namespace vhostuser {
namespace {

using enum Layout;
using R = Request;
using PF = ProtocolFeature;
constexpr auto ack = ReplyRule::ack;
constexpr auto always = ReplyRule::always;

// Rows in request-id order, so the id indexes the table (checked below).
constexpr std::array<RequestRule, max_request_id> table{{
    {R::get_features, "GET_FEATURES", none, FdRule::none, always, {}},
    {R::set_features, "SET_FEATURES", u64, FdRule::none, ack, {}},
    {R::set_owner, "SET_OWNER", none, FdRule::none, ack, {}},
    {R::reset_owner, "RESET_OWNER", none, FdRule::none, ack, {}},
    {R::set_mem_table, "SET_MEM_TABLE", mem_table, FdRule::per_region, ack, {}},
    {R::set_log_base, "SET_LOG_BASE", log, FdRule::one, always, PF::log_shmfd},
    {R::set_log_fd, "SET_LOG_FD", none, FdRule::one, ack, PF::log_shmfd},
    {R::set_vring_num, "SET_VRING_NUM", vring_state, FdRule::none, ack, {}},
    {R::set_vring_addr, "SET_VRING_ADDR", vring_addr, FdRule::none, ack, {}},
    {R::set_vring_base, "SET_VRING_BASE", vring_state, FdRule::none, ack, {}},
    {R::get_vring_base, "GET_VRING_BASE", vring_state, FdRule::none, always, {}},
    {R::set_vring_kick, "SET_VRING_KICK", vring_fd, FdRule::vring, ack, {}},
    {R::set_vring_call, "SET_VRING_CALL", vring_fd, FdRule::vring, ack, {}},
    {R::set_vring_err, "SET_VRING_ERR", vring_fd, FdRule::vring, ack, {}},
    {R::get_protocol_features, "GET_PROTOCOL_FEATURES", none, FdRule::none, always, {}},
    {R::set_protocol_features, "SET_PROTOCOL_FEATURES", u64, FdRule::none, ack, {}},
    {R::get_queue_num, "GET_QUEUE_NUM", none, FdRule::none, always, PF::mq},
    {R::set_vring_enable, "SET_VRING_ENABLE", vring_state, FdRule::none, ack, {}, true},
    {R::send_rarp, "SEND_RARP", u64, FdRule::none, ack, PF::rarp},
    {R::net_set_mtu, "NET_SET_MTU", u64, FdRule::none, ack, PF::mtu},
    {R::set_backend_req_fd, "SET_BACKEND_REQ_FD", none, FdRule::one, ack, PF::backend_req},
    {R::iotlb_msg, "IOTLB_MSG", iotlb, FdRule::none, always, PF::backend_req},
    {R::set_vring_endian, "SET_VRING_ENDIAN", vring_state, FdRule::none, ack, PF::cross_endian},
    {R::get_config, "GET_CONFIG", config, FdRule::none, always, PF::config},
    {R::set_config, "SET_CONFIG", config, FdRule::none, ack, PF::config},
    {R::create_crypto_session, "CREATE_CRYPTO_SESSION", opaque, FdRule::none, always, PF::crypto_session},
    {R::close_crypto_session, "CLOSE_CRYPTO_SESSION", u64, FdRule::none, ack, PF::crypto_session},
    {R::postcopy_advise, "POSTCOPY_ADVISE", none, FdRule::none, always, PF::pagefault},
    {R::postcopy_listen, "POSTCOPY_LISTEN", none, FdRule::none, ack, PF::pagefault},
    {R::postcopy_end, "POSTCOPY_END", none, FdRule::none, always, PF::pagefault},
    {R::get_inflight_fd, "GET_INFLIGHT_FD", inflight, FdRule::none, always, PF::inflight_shmfd},
    {R::set_inflight_fd, "SET_INFLIGHT_FD", inflight, FdRule::one, ack, PF::inflight_shmfd},
    // GPU_SET_SOCKET belongs to vhost-user-gpu, which has no protocol feature of its own.
    {R::gpu_set_socket, "GPU_SET_SOCKET", none, FdRule::one, ack, {}},
    {R::reset_device, "RESET_DEVICE", none, FdRule::none, ack, PF::reset_device},
    {R::vring_kick, "VRING_KICK", vring_state, FdRule::none, ack, PF::inband_notifications},
    {R::get_max_mem_slots, "GET_MAX_MEM_SLOTS", none, FdRule::none, always, PF::configure_mem_slots},
    {R::add_mem_reg, "ADD_MEM_REG", single_region, FdRule::one, ack, PF::configure_mem_slots},
    {R::rem_mem_reg, "REM_MEM_REG", single_region, FdRule::at_most_one, ack, PF::configure_mem_slots},
    {R::set_status, "SET_STATUS", u64, FdRule::none, ack, PF::status},
    {R::get_status, "GET_STATUS", none, FdRule::none, always, PF::status},
    {R::get_shared_object, "GET_SHARED_OBJECT", uuid, FdRule::none, always, PF::shared_object},
    {R::set_device_state_fd, "SET_DEVICE_STATE_FD", device_state, FdRule::one, always, PF::device_state},
    {R::check_device_state, "CHECK_DEVICE_STATE", none, FdRule::none, always, PF::device_state},
}};

constexpr bool rows_in_id_order() {
  for (std::size_t i = 0; i < table.size(); ++i) {
    if (static_cast<std::uint32_t>(table[i].request) != i + 1) return false;
  }
  return true;
}
static_assert(rows_in_id_order(), "request table rows must be in request-id order");

}  // namespace

const RequestRule* find_rule(std::uint32_t request_id) noexcept {
  if (request_id == 0 || request_id > table.size()) return nullptr;
  return &table[request_id - 1];
}

std::string_view to_string(Request r) noexcept {
  const RequestRule* rule = find_rule(static_cast<std::uint32_t>(r));
  return rule != nullptr ? rule->name : "UNKNOWN";
}

}  // namespace vhostuser
