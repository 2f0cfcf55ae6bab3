// Building and checking micro-batches.
#include "pp/model/batch.h"

#include <algorithm>

#include "pp/assert.h"

namespace pp::model {

void Batch::clear() {
  token_ids.clear();
  positions.clear();
  seq_start.clear();
  block_tables.clear();
  max_blocks = 0;
  logit_rows.clear();
}

void Batch::add_sequence(std::span<const int32_t> ids, int32_t pos_begin,
                         std::span<const int32_t> table, bool want_logits) {
  PP_ASSERT(token_ids.size() == positions.size());
  token_ids.insert(token_ids.end(), ids.begin(), ids.end());
  add_sequence(int32_t(ids.size()), pos_begin, table, want_logits);
  // The overload appended positions; ids and positions stay in step.
  PP_ASSERT(token_ids.size() == positions.size());
}

void Batch::add_sequence(int32_t n_new, int32_t pos_begin, std::span<const int32_t> table,
                         bool want_logits) {
  PP_ASSERT(n_new > 0);
  if (seq_start.empty()) seq_start.push_back(0);
  int32_t row0 = int32_t(positions.size());
  for (int32_t i = 0; i < n_new; ++i) positions.push_back(pos_begin + i);
  seq_start.push_back(row0 + n_new);
  if (want_logits) logit_rows.push_back(row0 + n_new - 1);

  // Keep the table rectangular: widen every row when this one is longer.
  const int64_t n_seq_before = n_seq() - 1;
  const int64_t width = std::max<int64_t>(max_blocks, int64_t(table.size()));
  if (width > max_blocks) {
    std::vector<int32_t> wide(size_t(n_seq_before * width), -1);
    for (int64_t s = 0; s < n_seq_before; ++s) {
      std::copy_n(block_tables.begin() + s * max_blocks, max_blocks, wide.begin() + s * width);
    }
    block_tables.swap(wide);
    max_blocks = width;
  }
  block_tables.insert(block_tables.end(), table.begin(), table.end());
  block_tables.insert(block_tables.end(), size_t(max_blocks - int64_t(table.size())), -1);
}

Status Batch::validate(int64_t block_size, int64_t n_blocks, int64_t n_vocab) const {
  const int64_t n = n_tokens();
  if (n == 0)
    return n_seq() == 0 ? ok_status() : invalid_argument("batch has sequences but no tokens");
  if (!token_ids.empty() && int64_t(token_ids.size()) != n) {
    return invalid_argument("batch has {} token ids for {} positions", token_ids.size(), n);
  }
  if (seq_start.size() < 2 || seq_start.front() != 0 || seq_start.back() != n) {
    return invalid_argument("batch seq_start does not cover its {} tokens", n);
  }
  if (int64_t(block_tables.size()) != n_seq() * max_blocks) {
    return invalid_argument("batch block table has {} entries, expected {} x {}",
                            block_tables.size(), n_seq(), max_blocks);
  }
  for (int64_t s = 0; s < n_seq(); ++s) {
    const int32_t b = seq_start[s], e = seq_start[s + 1];
    if (e <= b) return invalid_argument("batch sequence {} has no tokens", s);
    for (int32_t t = b; t < e; ++t) {
      if (positions[t] < 0)
        return invalid_argument("negative position {} in sequence {}", positions[t], s);
      if (t > b && positions[t] != positions[t - 1] + 1) {
        return invalid_argument("positions of sequence {} are not consecutive", s);
      }
    }
    // Attention reads every earlier position, so every block up to the last one must be valid.
    const int64_t n_needed = int64_t(positions[e - 1]) / block_size + 1;
    if (n_needed > max_blocks) {
      return invalid_argument("block table of sequence {} has {} blocks, position {} needs {}", s,
                              max_blocks, positions[e - 1], n_needed);
    }
    const int32_t* table = block_table(s);
    for (int64_t i = 0; i < n_needed; ++i) {
      if (table[i] < 0 || table[i] >= n_blocks) {
        return invalid_argument("block id {} of sequence {} is outside the pool of {} blocks",
                                table[i], s, n_blocks);
      }
    }
  }
  for (size_t i = 0; i < logit_rows.size(); ++i) {
    if (logit_rows[i] < 0 || logit_rows[i] >= n || (i > 0 && logit_rows[i] <= logit_rows[i - 1])) {
      return invalid_argument("logit rows must ascend within [0, {})", n);
    }
  }
  if (n_vocab > 0) {
    for (int32_t id : token_ids) {
      if (id < 0 || id >= n_vocab) {
        return make_error(StatusCode::kOutOfRange, "token id {} is outside the vocabulary [0, {})",
                          id, n_vocab);
      }
    }
  }
  return ok_status();
}

}  // namespace pp::model
