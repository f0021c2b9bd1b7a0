// The daemon's reports (vm_report.hpp): JSON as documented, and Prometheus text that follows
// the exposition format (one HELP and TYPE per family, then `name{labels} value` samples).
#include <regex>
#include <set>
#include <sstream>

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "vm_report.hpp"

namespace vsockd {
namespace {

namespace json = boost::json;

VmSnapshot sample(std::uint64_t cid) {
  VmSnapshot vm;
  vm.guest_cid = cid;
  vm.socket = "/run/vm.vhost";
  vm.uds_path = "/run/vm.vsock";
  vm.groups = {"a", "b"};
  vm.state = VmState::running;
  vm.frontends_served = 2;
  vm.counters.tx = {10, 1000, 1};
  vm.counters.rx = {20, 2000, 2};
  vm.counters.count(vsock::Drop::no_shared_group);
  vm.counters.rx_ring_stalls = 3;
  vm.counters.credit_stalls = 4;
  vm.host_connection_count = 1;
  vm.sibling_connection_count = 1;
  vsock::HostSide::ConnectionInfo host{};
  host.ends = {{2, 1u << 30}, {cid, 5000}, vsock::Type::stream};
  host.state = vsock::Connection::State::established;
  host.counters.from_guest = {5, 500, 0};
  host.pending_tx_bytes = 7;
  vm.host_connections.push_back(host);
  vm.sibling_connections.push_back({{cid, 1024}, {cid + 1, 9000}, static_cast<std::uint16_t>(vsock::Type::seqpacket),
                                    {1, 2, 0}, {3, 4, 0}});
  return vm;
}

TEST(VmReport, JsonHasTheDocumentedFields) {
  const json::value vm = json::parse(json::serialize(to_json(sample(3), true)));
  EXPECT_EQ(vm.at("guest_cid").to_number<int>(), 3);
  EXPECT_EQ(vm.at("state").as_string(), "running");
  EXPECT_EQ(vm.at("groups").as_array().size(), 2u);
  EXPECT_EQ(vm.at("connections").at("host").to_number<int>(), 1);
  EXPECT_EQ(vm.at("counters").at("tx").at("bytes").to_number<int>(), 1000);
  EXPECT_EQ(vm.at("counters").at("rx").at("rsts").to_number<int>(), 2);
  EXPECT_EQ(vm.at("counters").at("drops").at("no_shared_group").to_number<int>(), 1);
  EXPECT_EQ(vm.at("counters").at("drops").as_object().size(), vsock::drop_reasons);
  EXPECT_EQ(vm.at("counters").at("credit_stalls").to_number<int>(), 4);
  const auto& host = vm.at("host_connections").as_array().at(0);
  EXPECT_EQ(host.at("peer_port").to_number<int>(), 5000);
  EXPECT_EQ(host.at("state").as_string(), "established");
  EXPECT_EQ(host.at("from_guest").at("bytes").to_number<int>(), 500);
  EXPECT_EQ(host.at("pending_bytes").to_number<int>(), 7);
  const auto& sibling = vm.at("sibling_connections").as_array().at(0);
  EXPECT_EQ(sibling.at("peer_cid").to_number<int>(), 4);
  EXPECT_EQ(sibling.at("type").as_string(), "seqpacket");
  EXPECT_EQ(sibling.at("received").at("bytes").to_number<int>(), 4);

  // Without detail, no connection lists.
  EXPECT_FALSE(to_json(sample(3), false).contains("host_connections"));
  const std::vector<VmSnapshot> two{sample(3), sample(4)};
  EXPECT_EQ(json::parse(list_json(two)).at("vms").as_array().size(), 2u);
}

TEST(VmReport, PrometheusTextFollowsTheExpositionFormat) {
  const std::vector<VmSnapshot> vms{sample(3), sample(4)};
  const std::string text = to_prometheus(vms);
  ASSERT_TRUE(text.ends_with('\n'));
  const std::regex help(R"(# HELP ([a-z_]+) .+)");
  const std::regex type(R"(# TYPE ([a-z_]+) (counter|gauge))");
  const std::regex sample_line(R"(([a-z_]+)(\{cid="[0-9]+"(,[a-z_]+="[a-z_]+")?\})? [0-9]+)");
  std::set<std::string> families;
  std::string current;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);) {
    std::smatch m;
    if (std::regex_match(line, m, help)) {
      EXPECT_TRUE(families.insert(m[1]).second) << "family twice: " << line;
      current = m[1];
    } else if (std::regex_match(line, m, type)) {
      EXPECT_EQ(m[1], current) << line;
      EXPECT_TRUE(m[2] != "counter" || current.ends_with("_total")) << line;
    } else if (std::regex_match(line, m, sample_line)) {
      EXPECT_EQ(m[1], current) << "sample outside its family: " << line;
    } else {
      ADD_FAILURE() << "not exposition format: " << line;
    }
  }
  EXPECT_EQ(families.size(), 9u);
  EXPECT_THAT(text, testing::HasSubstr("vhost_vsockd_bytes_total{cid=\"4\",direction=\"rx\"} 2000\n"));
  EXPECT_THAT(text, testing::HasSubstr("vhost_vsockd_vm_state{cid=\"3\",state=\"running\"} 1\n"));
  EXPECT_THAT(text, testing::HasSubstr("vhost_vsockd_credit_stalls_total{cid=\"3\"} 4\n"));
}

}  // namespace
}  // namespace vsockd
