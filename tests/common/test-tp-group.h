// An in-process tensor-parallel group for tests (tests/model and tests/pp): N ranks in threads
// of one process, their collectives a model::TpComm over shared memory and a barrier. Sums go in
// rank order, as the ZeroMQ channel's do, so a run is bitwise reproducible.
#pragma once

#include <algorithm>
#include <barrier>
#include <span>
#include <vector>

#include "pp/model/tensor-parallel.h"
#include "pp/status.h"

namespace pp::test {

// N ranks in threads of one process: each rank's span is read by all at a barrier.
class ThreadGroup {
 public:
  explicit ThreadGroup(int32_t n) : n_(n), barrier_(n), ptr_(size_t(n)), size_(size_t(n)) {}

  class Comm final : public model::TpComm {
   public:
    Comm(ThreadGroup* g, int32_t rank) : g_(g), rank_(rank) {}
    model::TpRank rank() const override { return {rank_, g_->n_}; }
    Status all_reduce_sum(std::span<float> x) override {
      g_->ptr_[size_t(rank_)] = x.data();
      g_->size_[size_t(rank_)] = x.size();
      g_->barrier_.arrive_and_wait();
      std::vector<float> sum(g_->ptr_[0], g_->ptr_[0] + x.size());
      for (int32_t r = 1; r < g_->n_; ++r) {
        if (g_->size_[size_t(r)] != x.size()) return internal_error("all-reduce sizes differ");
        for (size_t i = 0; i < x.size(); ++i) sum[i] += g_->ptr_[size_t(r)][i];
      }
      g_->barrier_.arrive_and_wait();
      std::copy(sum.begin(), sum.end(), x.begin());
      return ok_status();
    }
    Status gather(std::span<const float> part, std::span<float> out) override {
      g_->ptr_[size_t(rank_)] = const_cast<float*>(part.data());
      g_->size_[size_t(rank_)] = part.size();
      g_->barrier_.arrive_and_wait();
      if (rank_ == 0) {
        size_t at = 0;
        for (int32_t r = 0; r < g_->n_; ++r) {
          if (at + g_->size_[size_t(r)] > out.size()) return internal_error("gather overflows");
          std::copy_n(g_->ptr_[size_t(r)], g_->size_[size_t(r)], out.data() + at);
          at += g_->size_[size_t(r)];
        }
        if (at != out.size()) return internal_error("gather fills {} of {}", at, out.size());
      }
      g_->barrier_.arrive_and_wait();
      return ok_status();
    }

   private:
    ThreadGroup* g_;
    int32_t rank_;
  };

 private:
  int32_t n_;
  std::barrier<> barrier_;
  std::vector<float*> ptr_;
  std::vector<size_t> size_;
};

}  // namespace pp::test
