#include "backend_fixture.hpp"

#include <poll.h>

#include <cstdlib>
#include <iostream>
#include <thread>

namespace vusim::test {

TempDir::TempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/vusim-XXXXXX";
  if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed for " + pattern);
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ignored;
  std::filesystem::remove_all(path_, ignored);
}

Backend::Backend(vhostuser::Device& device)
    : socket_(dir_.path() / "backend.sock"), work_(boost::asio::make_work_guard(io_)) {
  auto server = vhostuser::Server::listen(io_.get_executor(), socket_, device);
  if (!server)
    throw std::runtime_error("cannot listen on " + socket_.native() + ": " + server.error().message());
  server_ = std::move(*server);
  server_->start();
  thread_ = std::thread([this] { io_.run(); });
}

Backend::~Backend() {
  on_backend([this] {
    server_->close();
    server_.reset();
  });
  work_.reset();
  io_.stop();
  thread_.join();
}

Frontend::Options traced_options(std::vector<std::string>& log) {
  return {.timeout = std::chrono::milliseconds(5000),
          .trace = [&log](std::string_view line) { log.emplace_back(line); }};
}

void dump_on_failure(const std::vector<std::string>& log) {
  if (!::testing::Test::HasFailure()) return;
  std::cerr << "vhost-user conversation (" << log.size() << " messages):\n";
  for (const auto& line : log) std::cerr << "  " << line << '\n';
}

bool wait_readable(int fd, std::chrono::milliseconds timeout) {
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(timeout.count())) == 1;
}

bool wait_drained(int eventfd, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    pollfd p{eventfd, POLLIN, 0};
    if (::poll(&p, 1, 0) == 0) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::yield();
  }
}

}  // namespace vusim::test
