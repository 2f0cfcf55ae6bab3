// Sampling one token from one row of logits.
//
// Greedy (temperature <= 0 or top_k == 1): the argmax, lowest id on ties. Otherwise, with
// s = logit / temperature and w = exp(s - max s) (unnormalised probabilities):
//   top-k: keep the k largest logits (ties: lower id first);
//   top-p: of those, in descending order, keep the shortest prefix whose w sums to >= top_p of
//          their total (always at least one token);
//   min-p: keep tokens with w >= min_p (w of the most likely token is exactly 1);
// then one draw u = philox_uniform(seed, step): walk the kept tokens in ascending id order
// summing w in f64 and take the first whose running sum exceeds u * total.
// The reported logprobs are log_softmax of the raw logits (before temperature), f64 normaliser.
//
// Nothing sorts the whole vocabulary: top-k uses nth_element, top-p buckets by logit and sorts
// only the bucket where the nucleus ends, and the draw walks the kept tokens in id order (the
// identity order of the vocabulary unless top-k reordered them).
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "pp/assert.h"
#include "pp/kernels/cpu.h"

namespace pp::kernels::cpu {
namespace {

// Strict order "a is more likely than b": higher logit, then lower id.
struct MoreLikely {
  const float* logits;
  bool operator()(int32_t a, int32_t b) const {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  }
};

int32_t argmax(const float* l, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (l[i] > l[best]) best = i;
  }
  return int32_t(best);
}

// The n most likely tokens, most likely first, by a bounded heap (O(vocab log n)).
std::vector<int32_t> top_tokens(const float* l, int64_t n_vocab, int64_t n) {
  n = std::min(n, n_vocab);
  std::vector<int32_t> heap;
  heap.reserve(size_t(n));
  const MoreLikely more{l};
  // With comparator `more`, the heap's front is the least likely of the kept ones.
  for (int64_t i = 0; i < n_vocab; ++i) {
    const int32_t id = int32_t(i);
    if (int64_t(heap.size()) < n) {
      heap.push_back(id);
      std::push_heap(heap.begin(), heap.end(), more);
    } else if (more(id, heap.front())) {
      std::pop_heap(heap.begin(), heap.end(), more);
      heap.back() = id;
      std::push_heap(heap.begin(), heap.end(), more);
    }
  }
  std::sort(heap.begin(), heap.end(), more);
  return heap;
}

// Top-p over candidates idx[0, n): keeps the shortest run of the most likely candidates (in the
// order MoreLikely) whose w sums to >= top_p of their total, at least one. Returns the number
// kept; they are compacted to the front of idx in their original relative order. Instead of
// sorting, candidates are bucketed by logit (buckets are monotone in the logit, so every token
// of a higher bucket precedes every token of a lower one); only the bucket where the running
// sum crosses the threshold is sorted. O(n) plus the sort of one bucket.
int64_t nucleus(const float* l, const float* w, int32_t* idx, int64_t n, float top_p) {
  const MoreLikely more{l};
  float lo = l[idx[0]], hi = l[idx[0]];
  double total = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    lo = std::min(lo, l[idx[j]]);
    hi = std::max(hi, l[idx[j]]);
    total += double(w[idx[j]]);
  }
  const int64_t n_buckets = std::clamp<int64_t>(n / 16, 1, 4096);
  const double scale = hi > lo ? double(n_buckets) / (double(hi) - double(lo)) : 0.0;
  auto bucket = [&](int32_t id) {
    return std::min<int64_t>(n_buckets - 1, int64_t((double(l[id]) - lo) * scale));
  };
  thread_local std::vector<double> bucket_sum;
  bucket_sum.assign(size_t(n_buckets), 0.0);
  for (int64_t j = 0; j < n; ++j) bucket_sum[size_t(bucket(idx[j]))] += double(w[idx[j]]);

  // The bucket where the running sum (from the most likely end) reaches the threshold.
  const double threshold = double(top_p) * total;
  double cum = 0.0;
  int64_t edge = 0;
  for (int64_t b = n_buckets - 1; b >= 0; --b) {
    if (cum + bucket_sum[size_t(b)] >= threshold || b == 0) {
      edge = b;
      break;
    }
    cum += bucket_sum[size_t(b)];
  }
  // Inside the edge bucket, in order, up to the token that completes the nucleus.
  thread_local std::vector<int32_t> edge_ids;
  edge_ids.clear();
  for (int64_t j = 0; j < n; ++j) {
    if (bucket(idx[j]) == edge) edge_ids.push_back(idx[j]);
  }
  PP_ASSERT(!edge_ids.empty());
  std::sort(edge_ids.begin(), edge_ids.end(), more);
  int32_t last = edge_ids.back();  // rounding can leave the sum a hair below the threshold
  for (int32_t id : edge_ids) {
    cum += double(w[id]);
    if (cum >= threshold) {
      last = id;
      break;
    }
  }
  int64_t kept = 0;
  for (int64_t j = 0; j < n; ++j) {
    const int32_t id = idx[j];
    const int64_t b = bucket(id);
    if (b > edge || (b == edge && !more(last, id))) idx[kept++] = id;
  }
  return kept;
}

}  // namespace

SampleResult sample(const SampleParams& p, std::vector<float>& scratch) {
  PP_ASSERT(p.logits && p.n_vocab > 0);
  const float* l = p.logits;
  const int64_t n_vocab = p.n_vocab;
  const int32_t best = argmax(l, n_vocab);
  const float l_max = l[best];

  // log_softmax normaliser of the raw logits.
  double sum_exp = 0.0;
  for (int64_t i = 0; i < n_vocab; ++i) sum_exp += double(std::exp(l[i] - l_max));
  const double log_norm = double(l_max) + std::log(sum_exp);
  auto logprob = [&](int32_t id) { return float(double(l[id]) - log_norm); };

  SampleResult result;
  if (p.n_top_logprobs > 0) {
    for (int32_t id : top_tokens(l, n_vocab, p.n_top_logprobs)) {
      if (std::isinf(l[id])) break;  // masked out (-inf): not a candidate, and after all others
      result.top.push_back({id, logprob(id)});
    }
  }

  const bool greedy = p.temperature <= 0.0f || p.top_k == 1;
  if (greedy) {
    result.token = best;
    result.logprob = logprob(best);
    return result;
  }

  // w[i] = exp(l[i] / T - max): dividing by T > 0 keeps the order, so the max is l_max / T.
  scratch.resize(size_t(n_vocab));
  float* w = scratch.data();
  const float s_max = l_max / p.temperature;
  for (int64_t i = 0; i < n_vocab; ++i) w[i] = std::exp(l[i] / p.temperature - s_max);

  // The candidates: every token but those masked out (-inf, structured output).
  thread_local std::vector<int32_t> idx;
  idx.clear();
  for (int64_t i = 0; i < n_vocab; ++i) {
    if (!std::isinf(l[i])) idx.push_back(int32_t(i));
  }
  PP_ASSERT_MSG(!idx.empty(), "every token is masked out");
  int64_t n_kept = int64_t(idx.size());
  bool id_order = true;  // idx[0, n_kept) is in ascending id order
  const MoreLikely more{l};

  if (p.top_k > 0 && p.top_k < n_kept) {
    std::nth_element(idx.begin(), idx.begin() + (p.top_k - 1), idx.end(), more);
    n_kept = p.top_k;
    id_order = false;
  }
  if (p.top_p < 1.0f) n_kept = nucleus(l, w, idx.data(), n_kept, p.top_p);
  if (p.min_p > 0.0f) {
    int64_t out = 0;
    for (int64_t j = 0; j < n_kept; ++j) {
      const int32_t id = idx[size_t(j)];
      if (w[id] >= p.min_p) idx[size_t(out++)] = id;
    }
    n_kept = out;
  }
  PP_ASSERT(n_kept > 0);
  if (!id_order) std::sort(idx.begin(), idx.begin() + n_kept);

  double total = 0.0;
  for (int64_t j = 0; j < n_kept; ++j) total += double(w[idx[size_t(j)]]);
  const double target = double(philox_uniform(p.seed, p.step)) * total;
  int32_t token = idx[size_t(n_kept - 1)];
  double cum = 0.0;
  for (int64_t j = 0; j < n_kept; ++j) {
    cum += double(w[idx[size_t(j)]]);
    if (cum > target) {
      token = idx[size_t(j)];
      break;
    }
  }
  result.token = token;
  result.logprob = logprob(token);
  return result;
}

SampleResult sample_with_penalties(PenaltyParams pen, SampleParams s, std::vector<float>& penalized,
                                   std::vector<float>& scratch) {
  return sample_constrained(pen, {}, s, penalized, scratch);
}

SampleResult sample_constrained(PenaltyParams pen, const LogitConstraints& c, SampleParams s,
                                std::vector<float>& penalized, std::vector<float>& scratch) {
  const bool penalties = pen.repetition != 1.0f || pen.presence != 0.0f || pen.frequency != 0.0f;
  if (penalties || c.active()) {
    penalized.assign(s.logits, s.logits + s.n_vocab);
    if (penalties) {
      pen.logits = penalized.data();
      pen.n_vocab = s.n_vocab;
      apply_penalties(pen);
    }
    if (c.active()) apply_logit_constraints(penalized.data(), s.n_vocab, c);
    s.logits = penalized.data();
  }
  return sample(s, scratch);
}

}  // namespace pp::kernels::cpu
