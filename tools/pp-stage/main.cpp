// pp-stage: one pipeline stage worker. Joins the coordinator, loads the layers it is assigned,
// runs micro-batches until the coordinator shuts it down or goes away.
//   pp-stage --coordinator ENDPOINT --stage K [--rank R] [--device cpu|cuda:N] [--mem-fraction F]
//            [--threads T] [--data-address ADDR] [--kv-memory BYTES] [--timeout SECONDS]
// pp-serve starts local stages itself; for several hosts run one on each (by hand, mpirun, srun).
// Exit codes: 0 shut down by the coordinator, 1 a failure (coordinator lost included), 2 bad
// usage or a bad assignment, 130 interrupted.
#include <atomic>
#include <csignal>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "cli.h"
#include "pp/partition/byte-size.h"
#include "pp/pipeline/stage-worker.h"

namespace {

constexpr const char* kTool = "pp-stage";
constexpr int kExitInterrupted = 130;

std::atomic<bool> g_interrupted{false};
extern "C" void on_signal(int) { g_interrupted.store(true); }

}  // namespace

int main(int argc, char** argv) {
  using namespace pp;
  pipeline::StageWorkerOptions o;
  std::string kv_memory, log_level = "info";
  double timeout_s = 5.0, connect_timeout_s = 60.0;

  CLI::App app("pp-stage: one pipeline stage worker", kTool);
  app.add_option("--coordinator", o.coordinator,
                 "the coordinator's endpoint: tcp://HOST:PORT or ipc:///PATH")
      ->required();
  app.add_option("--stage", o.stage, "the stage to run, 0-based (default: whichever is free)");
  app.add_option("--rank", o.rank,
                 "the rank in the stage's tensor-parallel group, 0-based (default: whichever is "
                 "free)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--device", o.device, "device: cpu, cuda or cuda:N (default cpu)");
  app.add_option("--mem-fraction", o.mem_fraction,
                 "GPU: share of the device's memory for weights, buffers and the KV cache "
                 "(default: as the coordinator says, 0.85)")
      ->check(CLI::Range(0.01, 1.0));
  app.add_option("--threads", o.threads, "compute threads (default: as the coordinator says)");
  app.add_option("--data-address", o.data_address,
                 "address to receive activations on (tcp; default: the one facing the "
                 "coordinator)");
  app.add_option("--kv-memory", kv_memory,
                 "memory offered for the KV cache, e.g. 8GiB (default: a quarter of what is free)");
  app.add_option("--timeout", timeout_s,
                 "seconds without a heartbeat after which the coordinator counts as gone");
  app.add_option("--connect-timeout", connect_timeout_s,
                 "seconds to wait for the coordinator at start");
  cli::add_log_option(app, log_level);
  cli::add_version_flag(app);
  if (int rc = cli::parse(app, argc, argv); rc >= 0) return rc;
  // Logs go to stderr, tagged with the stage: several stages often share one terminal.
  auto logger = spdlog::stderr_color_mt(kTool);
  logger->set_pattern(fmt::format("[%H:%M:%S.%e] [pp-stage {}{}] [%l] %v",
                                  o.stage >= 0 ? std::to_string(o.stage) : "?",
                                  o.rank > 0 ? fmt::format(".{}", o.rank) : ""));
  spdlog::set_default_logger(logger);
  cli::apply_log_level(log_level);

  if (!kv_memory.empty()) {
    auto bytes = partition::parse_byte_size(kv_memory);
    if (!bytes.ok()) return cli::report(kTool, bytes.status());
    o.kv_memory = int64_t(*bytes);
  }
  if (timeout_s <= 0 || connect_timeout_s <= 0) {
    return cli::report(kTool, invalid_argument("timeouts must be positive"));
  }
  o.coordinator_timeout = std::chrono::milliseconds(int64_t(timeout_s * 1000));
  o.connect_timeout = std::chrono::milliseconds(int64_t(connect_timeout_s * 1000));
  o.interrupted = &g_interrupted;
  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);

  Status s = pipeline::run_stage_worker(o);
  if (g_interrupted.load()) return kExitInterrupted;
  return cli::report(kTool, s);
}
