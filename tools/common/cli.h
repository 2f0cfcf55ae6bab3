// Helpers shared by the tools' mains: the options several tools take, and the one place where a
// pp::Status becomes a message on stderr and an exit code.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "pp/status.h"

namespace pp::cli {

// Exit codes: 0 ok, 1 a failure while working, 2 bad usage or bad input.
inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

int exit_code_for(const Status& s);

// Prints "pp-xxx: error: <message>" on one line and returns the exit code for `s`.
int report(const std::string& tool, const Status& s);

// Adds --db PATH (the run store; default $XDG_DATA_HOME/pp/runs.db).
void add_db_option(CLI::App& app, std::string& db_path);
// Adds --log-level (trace, debug, info, warn, error, off) and applies it after parsing.
void add_log_option(CLI::App& app, std::string& level);
void apply_log_level(const std::string& level);
// Adds --version printing pp's version.
void add_version_flag(CLI::App& app);

// Levenshtein distance between two strings (insertions, deletions, substitutions).
size_t edit_distance(std::string_view a, std::string_view b);
// The option of `options` nearest `name` by edit distance, when near enough to be what was
// meant (within a third of the longer name, at least 2 edits); else empty.
std::string closest_option(const std::string& name, const std::vector<std::string>& options);

// Parses argv with CLI11; an unknown --option is reported as "unknown option '--x' (did you mean
// --y?)". Returns -1 to go on, or the exit code when parsing ended the program
// (--help, --version, a usage error printed on one line).
int parse(CLI::App& app, int argc, char** argv);

}  // namespace pp::cli
