#pragma once
// Logging set-up shared by the commands: spdlog to stderr, level chosen on the command line.
#include <string>
#include <vector>

namespace app {

/// The level names accepted by --log-level, in order of verbosity.
const std::vector<std::string>& log_level_names();

/// Configures the default logger; `level` is one of log_level_names().
void init_logging(const std::string& level);

}  // namespace app
