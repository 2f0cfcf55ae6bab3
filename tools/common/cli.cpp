// Shared option helpers and status-to-exit-code mapping for the pp tools.
#include "cli.h"

#include <cstdio>

#include <spdlog/spdlog.h>

#include "pp/version.h"

namespace pp::cli {

int exit_code_for(const Status& s) {
  switch (s.code()) {
    case StatusCode::kOk:
      return kExitOk;
    case StatusCode::kInvalidArgument:
    case StatusCode::kNotFound:
    case StatusCode::kOutOfRange:
    case StatusCode::kUnimplemented:
    case StatusCode::kAlreadyExists:
    case StatusCode::kDataLoss:
    case StatusCode::kFailedPrecondition:
      return kExitUsage;
    default:
      return kExitFailure;
  }
}

int report(const std::string& tool, const Status& s) {
  if (s.ok()) return kExitOk;
  std::fprintf(stderr, "%s: error: %s\n", tool.c_str(), s.message().c_str());
  return exit_code_for(s);
}

void add_db_option(CLI::App& app, std::string& db_path) {
  app.add_option("--db", db_path, "run store (SQLite); default $XDG_DATA_HOME/pp/runs.db");
}

void add_log_option(CLI::App& app, std::string& level) {
  app.add_option("--log-level", level, "log level: trace, debug, info, warn, error, off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
}

void apply_log_level(const std::string& level) {
  if (!level.empty()) spdlog::set_level(spdlog::level::from_str(level));
}

void add_version_flag(CLI::App& app) {
  app.set_version_flag("--version", std::string(pp::version_string()));
}

int parse(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::fprintf(stderr, "%s: error: %s\n", app.get_name().c_str(), e.what());
    return kExitUsage;
  }
  return -1;
}

}  // namespace pp::cli
