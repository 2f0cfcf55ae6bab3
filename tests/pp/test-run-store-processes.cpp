// Tests of the run store across processes (fork): several writers at once on a fresh file lose
// no row and never fail with "database is locked"; a writer killed with SIGKILL in the middle of a
// large transaction leaves a consistent file with all or none of that transaction; runs whose
// coordinator process is gone are marked abnormal.
#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "pp/store/run-store.h"
#include "test-run-store-util.h"
#include "test-util.h"

namespace pp {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using test::random_int;
using test::random_text;
using test::RawDb;

// Runs `body` in a child process, which exits with body's return value (never returning into
// the test framework).
pid_t spawn(const std::function<int()>& body) {
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int rc = body();
    std::fflush(nullptr);
    _exit(rc);
  }
  return pid;
}

// The exit code of `pid`, or 128 + signal.
int wait_for(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

void write_byte(int fd, char c) {
  while (write(fd, &c, 1) < 0 && errno == EINTR) {
  }
}

// Reads one byte; false at end of file. With timeout_ms >= 0, false when none came in time.
bool read_byte(int fd, char& c, int timeout_ms = -1) {
  pollfd p{fd, POLLIN, 0};
  if (poll(&p, 1, timeout_ms) <= 0) return false;
  return read(fd, &c, 1) == 1;
}

TEST(RunStoreProcesses, ConcurrentWritersLoseNothing) {
  constexpr int kProcs = 6, kWrites = 200, kBenchEvery = 4;
  test::TempDir dir;
  // A fresh path: the writers also race to create and migrate the file.
  const fs::path db = dir.path() / "shared" / "runs.db";
  int gate[2];
  ASSERT_EQ(pipe(gate), 0);
  std::vector<pid_t> kids;
  for (int c = 0; c < kProcs; ++c) {
    const uint64_t seed = test::rng()();
    kids.push_back(spawn([&, c, seed]() -> int {
      close(gate[1]);
      char ch;
      read_byte(gate[0], ch);  // all start together when the parent closes the gate
      std::mt19937_64 g(seed);
      auto store = RunStore::open(db);
      if (!store.ok()) {
        std::fprintf(stderr, "writer %d: %s\n", c, store.status().message().c_str());
        return 10;
      }
      for (int k = 0; k < kWrites; ++k) {
        EventRecord e;
        e.kind = "writer";
        e.stage = c;
        e.message = std::to_string(c) + ":" + std::to_string(k);
        auto r = (*store)->record_event(e);
        if (!r.ok()) {
          std::fprintf(stderr, "writer %d event %d: %s\n", c, k, r.status().message().c_str());
          return 20;
        }
        if (k % kBenchEvery == 0) {
          BenchRecord b;
          b.kind = BenchKind::kServe;
          b.label = e.message;
          b.metrics["k"] = {double(k), ""};
          b.metrics["writer"] = {double(c), ""};
          b.metrics["noise"] = {std::uniform_real_distribution<double>(0, 1)(g), "s"};
          auto br = (*store)->record_bench_run(b);
          if (!br.ok()) {
            std::fprintf(stderr, "writer %d bench %d: %s\n", c, k, br.status().message().c_str());
            return 30;
          }
        }
      }
      return 0;
    }));
  }
  close(gate[0]);
  close(gate[1]);
  for (pid_t pid : kids) EXPECT_EQ(wait_for(pid), 0) << "writer process " << pid;

  auto store = RunStore::open(db);
  ASSERT_TRUE(store.ok()) << store.status().message();
  EXPECT_TRUE((*store)->check_integrity().ok());
  auto events = (*store)->list_events();
  ASSERT_TRUE(events.ok());
  EXPECT_EQ(events->size(), size_t(kProcs * kWrites));
  std::set<std::string> want, got;
  for (int c = 0; c < kProcs; ++c) {
    for (int k = 0; k < kWrites; ++k) want.insert(std::to_string(c) + ":" + std::to_string(k));
  }
  for (const EventRecord& e : *events) got.insert(e.message);
  EXPECT_EQ(got, want);

  auto benches = (*store)->list_bench_runs();
  ASSERT_TRUE(benches.ok());
  EXPECT_EQ(benches->size(), size_t(kProcs * kWrites / kBenchEvery));
  for (const BenchRecord& b : *benches) {
    ASSERT_EQ(b.metrics.size(), 3u) << b.label;
    EXPECT_EQ(b.label, std::to_string(int(b.metrics.at("writer").value)) + ":" +
                           std::to_string(int(b.metrics.at("k").value)));
  }
  RawDb raw(db, true);
  EXPECT_EQ(raw.scalar("PRAGMA user_version"), RunStore::kSchemaVersion);
}

// The child for the kill test: opens the store, says 's', records `n` events of kind `kind` in
// one transaction, says 'd', and waits to be killed.
pid_t spawn_batch_writer(const fs::path& db, const std::string& kind, int n, int fd) {
  return spawn([&db, kind, n, fd]() -> int {
    std::vector<EventRecord> events(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      events[size_t(i)].kind = kind;
      events[size_t(i)].stage = i % 8;
      events[size_t(i)].message = std::string(150, char('a' + i % 26)) + std::to_string(i);
    }
    auto store = RunStore::open(db);
    if (!store.ok()) return 10;
    write_byte(fd, 's');
    if (!(*store)->record_events(events).ok()) return 20;
    write_byte(fd, 'd');
    for (;;) pause();
  });
}

int64_t count_kind(const fs::path& db, const std::string& kind) {
  // Through RunStore's own read path, counting without building records would need a count API;
  // a raw count keeps this fast for 10^5 rows. The kinds are our own test constants.
  RawDb raw(db, true);
  return raw.scalar("SELECT count(*) FROM events WHERE kind = '" + kind + "'");
}

TEST(RunStoreProcesses, KilledWriterLeavesAllOrNothing) {
  constexpr int kRows = 60'000;  // ~10 MB: more than SQLite's page cache, so it spills to the WAL
  test::TempDir dir;
  const fs::path db = dir.path() / "runs.db";
  {
    auto store = RunStore::open(db);
    ASSERT_TRUE(store.ok()) << store.status().message();
  }
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);

  // A first writer runs to the end: how long the transaction takes, and that a kill after the
  // commit keeps every row.
  pid_t pid = spawn_batch_writer(db, "batch-0", kRows, fds[1]);
  char c = 0;
  ASSERT_TRUE(read_byte(fds[0], c, 60'000));
  ASSERT_EQ(c, 's');
  const auto t0 = Clock::now();
  ASSERT_TRUE(read_byte(fds[0], c, 120'000));
  ASSERT_EQ(c, 'd');
  const double txn_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  kill(pid, SIGKILL);
  EXPECT_EQ(wait_for(pid), 128 + SIGKILL);
  EXPECT_EQ(count_kind(db, "batch-0"), kRows);

  int n_cut = 0;
  for (int iter = 1; iter <= 6; ++iter) {
    const std::string kind = "batch-" + std::to_string(iter);
    pid = spawn_batch_writer(db, kind, kRows, fds[1]);
    ASSERT_TRUE(read_byte(fds[0], c, 60'000));
    ASSERT_EQ(c, 's');
    // Mostly inside the transaction; the last iteration lets it reach its commit or close to it.
    const double frac =
        iter < 6 ? std::uniform_real_distribution<double>(0.05, 0.7)(test::rng()) : 0.98;
    std::this_thread::sleep_for(std::chrono::microseconds(int64_t(txn_ms * frac * 1000)));
    kill(pid, SIGKILL);
    EXPECT_EQ(wait_for(pid), 128 + SIGKILL);
    char d = 0;
    const bool done = read_byte(fds[0], d, 0) && d == 'd';

    auto store = RunStore::open(db);
    ASSERT_TRUE(store.ok()) << "after kill " << iter << ": " << store.status().message();
    Status integrity = (*store)->check_integrity();
    EXPECT_TRUE(integrity.ok()) << integrity.message();
    store.value().reset();  // close before counting through a raw connection
    const int64_t n = count_kind(db, kind);
    EXPECT_TRUE(n == 0 || n == kRows) << "iteration " << iter << ": " << n << " rows";
    if (done) {
      EXPECT_EQ(n, kRows);
    }
    if (n == 0) ++n_cut;
    EXPECT_EQ(count_kind(db, "batch-0"), kRows);
  }
  close(fds[0]);
  close(fds[1]);
  // At least one kill landed inside a transaction, or the test did not test anything.
  EXPECT_GE(n_cut, 1);
}

TEST(RunStoreProcesses, MarkAbandonedRunsMarksDeadProcesses) {
  test::TempDir dir;
  auto opened = RunStore::open(dir.path() / "runs.db");
  ASSERT_TRUE(opened.ok()) << opened.status().message();
  RunStore& store = **opened;

  // Two coordinators that start, get recorded, and die: one reaped, one left a zombie.
  int gate[2];
  ASSERT_EQ(pipe(gate), 0);
  auto waiter = [&]() -> int {
    close(gate[1]);
    char ch;
    read_byte(gate[0], ch);
    return 0;
  };
  pid_t reaped = spawn(waiter);
  pid_t zombie = spawn(waiter);
  ServingRunRecord run;
  run.model = random_text();
  run.pid = reaped;
  auto reaped_run = store.begin_serving_run(run);
  run.pid = zombie;
  auto zombie_run = store.begin_serving_run(run);
  // The same dead pid on another host: this host cannot tell, so it stays running.
  run.host = "elsewhere-" + random_text(6);
  run.pid = reaped;
  auto remote_run = store.begin_serving_run(run);
  // This process: alive.
  ServingRunRecord mine;
  auto my_run = store.begin_serving_run(mine);
  // This process's pid, but recorded for a process that started at another time: a reused pid.
  auto reused_run = store.begin_serving_run(mine);
  ASSERT_TRUE(reaped_run.ok() && zombie_run.ok() && remote_run.ok() && my_run.ok() &&
              reused_run.ok());
  {
    RawDb raw(store.path());
    raw.exec("UPDATE serving_runs SET pid_start = pid_start + 1 WHERE id = " +
             std::to_string(*reused_run));
  }

  close(gate[0]);
  close(gate[1]);
  EXPECT_EQ(wait_for(reaped), 0);
  siginfo_t info{};
  ASSERT_EQ(waitid(P_PID, id_t(zombie), &info, WEXITED | WNOWAIT), 0);  // exited, not reaped

  auto marked = store.mark_abandoned_runs();
  ASSERT_TRUE(marked.ok()) << marked.status().message();
  std::set<int64_t> got(marked->begin(), marked->end());
  EXPECT_EQ(got, (std::set<int64_t>{*reaped_run, *zombie_run, *reused_run}));
  EXPECT_EQ(wait_for(zombie), 0);

  for (int64_t id : {*reaped_run, *zombie_run, *reused_run}) {
    auto r = store.get_serving_run(id);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->outcome, RunOutcome::kAbnormal);
    EXPECT_TRUE(r->ended_at_ms.has_value());
    EXPECT_FALSE(r->end_message.empty());
    auto events = store.list_events(id);
    ASSERT_TRUE(events.ok());
    ASSERT_EQ(events->size(), 1u);
    EXPECT_EQ((*events)[0].kind, "run_abandoned");
    EXPECT_EQ(store.end_serving_run(id, RunOutcome::kOk).code(), StatusCode::kFailedPrecondition);
  }
  for (int64_t id : {*remote_run, *my_run}) {
    auto r = store.get_serving_run(id);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->outcome, RunOutcome::kRunning);
    EXPECT_FALSE(r->ended_at_ms.has_value());
  }
  auto again = store.mark_abandoned_runs();
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->empty());
  Status ended = store.end_serving_run(*my_run, RunOutcome::kOk);
  EXPECT_TRUE(ended.ok()) << int(ended.code()) << " " << ended.message();
}

}  // namespace
}  // namespace pp
