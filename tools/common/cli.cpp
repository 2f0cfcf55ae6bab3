// Shared option helpers and status-to-exit-code mapping for the pp tools.
#include "cli.h"

#include <algorithm>
#include <cstdio>
#include <string_view>
#include <vector>

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

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string closest_option(const std::string& name, const std::vector<std::string>& options) {
  std::string best;
  size_t best_d = std::string::npos;
  for (const std::string& o : options) {
    const size_t d = edit_distance(name, o);
    if (d < best_d) {
      best_d = d;
      best = o;
    }
  }
  // Close enough to be a typo or a near name: a third of the longer name, at least 2 edits.
  const size_t limit = std::max<size_t>(2, std::max(name.size(), best.size()) / 3);
  return best_d <= limit ? best : std::string();
}

namespace {

// The long option names ("--model") an app, and the subcommand given on the line, accept.
std::vector<std::string> long_option_names(const CLI::App& app) {
  std::vector<std::string> out;
  for (const CLI::Option* o : app.get_options()) {
    for (const std::string& n : o->get_lnames()) out.push_back("--" + n);
  }
  for (const CLI::App* sub : app.get_subcommands()) {  // the ones parsed
    std::vector<std::string> more = long_option_names(*sub);
    out.insert(out.end(), more.begin(), more.end());
  }
  return out;
}

// The first "--name" on the command line that no option of `app` (or its parsed subcommand)
// takes, or empty.
std::string first_unknown_option(const CLI::App& app, int argc, char** argv) {
  const std::vector<std::string> known = long_option_names(app);
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") break;
    if (a.size() < 3 || a.rfind("--", 0) != 0) continue;
    a = a.substr(0, a.find('='));
    if (std::find(known.begin(), known.end(), a) == known.end()) return a;
  }
  return std::string();
}

}  // namespace

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
    // An unknown option is named, with the nearest known one, rather than CLI11's list of
    // arguments it did not expect (or a required option it then misses).
    if (const std::string bad = first_unknown_option(app, argc, argv); !bad.empty()) {
      const std::string near = closest_option(bad, long_option_names(app));
      std::fprintf(stderr, "%s: error: unknown option '%s'%s\n", app.get_name().c_str(),
                   bad.c_str(), near.empty() ? "" : (" (did you mean " + near + "?)").c_str());
      return kExitUsage;
    }
    std::fprintf(stderr, "%s: error: %s\n", app.get_name().c_str(), e.what());
    return kExitUsage;
  }
  return -1;
}

}  // namespace pp::cli
