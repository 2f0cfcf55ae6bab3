// Batch: one micro-batch as every stage sees it. For each sequence: its new tokens (ids at
// stage 0, positions everywhere), its KV block table, and whether the last stage must return
// the logits of its last new token. Stages exchange only the residual stream
// h [n_tokens, n_embd]; everything else here is metadata the coordinator sends ahead.
//
// Invariants (checked by validate): a sequence's new tokens have consecutive positions and
// every position 0 .. last has a block in its table (earlier tokens' KV is already cached);
// logit_rows ascend.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "pp/status.h"

namespace pp::model {

struct Batch {
  std::vector<int32_t> token_ids;  // [n_tokens]; needed by stage 0 only (may be empty later)
  std::vector<int32_t> positions;  // [n_tokens]; position of each token in its sequence
  std::vector<int32_t>
      seq_start;  // [n_seq + 1]; sequence s owns rows [seq_start[s], seq_start[s+1])
  std::vector<int32_t> block_tables;  // [n_seq, max_blocks] row-major; unused entries are -1
  int64_t max_blocks = 0;             // row length of block_tables
  std::vector<int32_t> logit_rows;  // [n_logit_rows] token rows whose next-token logits are wanted

  int64_t n_tokens() const { return int64_t(positions.size()); }
  int64_t n_seq() const { return seq_start.empty() ? 0 : int64_t(seq_start.size()) - 1; }
  int64_t n_logit_rows() const { return int64_t(logit_rows.size()); }
  const int32_t* block_table(int64_t s) const { return block_tables.data() + s * max_blocks; }

  // Empties the batch, keeping capacity (a hot-path batch is reused, not reallocated).
  void clear();
  // Appends a sequence: `ids` are its new tokens at positions pos_begin, pos_begin + 1, ...;
  // `table` its block table (it must cover those positions); with `want_logits` the last new
  // token's logits are returned.
  void add_sequence(std::span<const int32_t> ids, int32_t pos_begin, std::span<const int32_t> table,
                    bool want_logits);
  // The same for a stage that does not see token ids.
  void add_sequence(int32_t n_new, int32_t pos_begin, std::span<const int32_t> table,
                    bool want_logits);

  // kInvalidArgument naming what is wrong: shapes, positions, block ids outside [0, n_blocks),
  // tables too short for a position, token ids outside [0, n_vocab) (when n_vocab > 0 and
  // ids are present).
  Status validate(int64_t block_size, int64_t n_blocks, int64_t n_vocab) const;
};

}  // namespace pp::model
