#pragma once
// Shared by the configuration tests: running the command-line parser on a list of words,
// reading the message of an error, and a temporary directory removed at the end.
#include <unistd.h>

#include <filesystem>
#include <initializer_list>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "config/daemon_config.hpp"

namespace vsockd::config::test {

/// parse_command_line() of `vhost-vsockd <args...>`.
inline Result<std::variant<DaemonConfig, Help>> parse(std::initializer_list<std::string> args) {
  std::vector<const char*> argv{"vhost-vsockd"};
  for (const std::string& arg : args) argv.push_back(arg.c_str());
  return parse_command_line(argv);
}

/// The configuration of a command line that must parse.
inline DaemonConfig parse_ok(std::initializer_list<std::string> args) {
  auto parsed = parse(args);
  if (!parsed) ADD_FAILURE() << "refused: " << parsed.error().message;
  if (!parsed || !std::holds_alternative<DaemonConfig>(*parsed)) return {};
  return std::get<DaemonConfig>(*parsed);
}

/// The message of a result that must be an error ("" and a test failure if it is not).
template <class T>
std::string error_of(const Result<T>& result) {
  if (result) {
    ADD_FAILURE() << "accepted, expected an error";
    return {};
  }
  return result.error().message;
}

/// A fresh directory under $TMPDIR (or /tmp), removed with everything in it.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "vsockd-config-XXXXXX").native();
    if (::mkdtemp(pattern.data()) == nullptr) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }
  [[nodiscard]] std::string operator/(std::string_view name) const { return (path_ / name).native(); }

 private:
  std::filesystem::path path_;
};

}  // namespace vsockd::config::test
