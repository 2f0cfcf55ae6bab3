// The Chrome trace writer and the busy-time summary (see trace.h).
#include "pp/pipeline/trace.h"

#include <algorithm>
#include <chrono>
#include <fstream>

#include <nlohmann/json.hpp>

namespace pp::pipeline {

int64_t trace_now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::vector<StageBusy> stage_busy(std::span<const transport::StageTiming> timings, int32_t n_stages,
                                  int64_t from_us, int64_t to_us) {
  std::vector<StageBusy> out(size_t(std::max(n_stages, 0)));
  std::vector<int64_t> first(out.size(), INT64_MAX), last(out.size(), INT64_MIN);
  const bool window = from_us > 0 && to_us > from_us;
  for (size_t k = 0; k < out.size(); ++k) out[k].stage = int32_t(k);
  for (const transport::StageTiming& t : timings) {
    if (t.stage < 0 || t.stage >= n_stages || t.end_us < t.start_us) continue;
    if (window && (t.start_us < from_us || t.start_us >= to_us)) continue;
    StageBusy& b = out[size_t(t.stage)];
    ++b.n_micro_batches;
    b.compute_s += double(t.end_us - t.start_us) * 1e-6;
    first[size_t(t.stage)] = std::min(first[size_t(t.stage)], t.start_us);
    last[size_t(t.stage)] = std::max(last[size_t(t.stage)], t.end_us);
  }
  for (size_t k = 0; k < out.size(); ++k) {
    if (window) {
      out[k].wall_s = double(to_us - from_us) * 1e-6;
    } else if (out[k].n_micro_batches > 0) {
      out[k].wall_s = double(last[k] - first[k]) * 1e-6;
    }
  }
  return out;
}

namespace {

nlohmann::json complete_event(const char* name, int64_t pid, int64_t tid, int64_t begin_us,
                              int64_t end_us, uint64_t seq, int32_t group, int32_t n_tokens) {
  return {{"name", name},
          {"ph", "X"},
          {"pid", pid},
          {"tid", tid},
          {"ts", begin_us},
          {"dur", std::max<int64_t>(end_us - begin_us, 0)},
          {"args", {{"seq", seq}, {"group", group}, {"n_tokens", n_tokens}}}};
}

nlohmann::json name_event(const char* what, int64_t pid, int64_t tid, const std::string& name) {
  nlohmann::json e = {{"name", what}, {"ph", "M"}, {"pid", pid}, {"args", {{"name", name}}}};
  if (tid >= 0) e["tid"] = tid;
  return e;
}

}  // namespace

Status TraceRecorder::write(const std::filesystem::path& path) const {
  nlohmann::json events = nlohmann::json::array();
  for (int32_t k = 0; k < n_stages_; ++k) {
    events.push_back(name_event("process_name", k, -1, "stage " + std::to_string(k)));
    events.push_back(
        {{"name", "process_sort_index"}, {"ph", "M"}, {"pid", k}, {"args", {{"sort_index", k}}}});
    events.push_back(name_event("thread_name", k, 0, "compute"));
    events.push_back(name_event("thread_name", k, 1, "wait"));
    events.push_back(name_event("thread_name", k, 2, "send"));
  }
  events.push_back(name_event("process_name", n_stages_, -1, "coordinator"));
  for (const transport::StageTiming& t : timings_) {
    events.push_back(
        complete_event("compute", t.stage, 0, t.start_us, t.end_us, t.seq, t.group, t.n_tokens));
    if (t.queued_us > 0 && t.queued_us < t.start_us) {
      events.push_back(
          complete_event("wait", t.stage, 1, t.queued_us, t.start_us, t.seq, t.group, t.n_tokens));
    }
    if (t.sent_us > t.end_us) {
      events.push_back(
          complete_event("send", t.stage, 2, t.end_us, t.sent_us, t.seq, t.group, t.n_tokens));
    }
  }
  for (const PlanSpan& s : plans_) {
    events.push_back(complete_event("plan", n_stages_, s.group, s.issued_us, s.returned_us, s.seq,
                                    s.group, s.n_tokens));
  }
  std::ofstream f(path, std::ios::trunc);
  if (!f) return internal_error("cannot write trace '{}'", path.string());
  f << events.dump() << '\n';
  f.close();
  if (!f) return internal_error("cannot write trace '{}'", path.string());
  return ok_status();
}

}  // namespace pp::pipeline
