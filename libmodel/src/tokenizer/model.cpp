// BPE by rank and SPM by score (see model.h).
#include "tokenizer/model.h"

#include <queue>

#include <fmt/format.h>

#include "tokenizer/unicode.h"

namespace pp::model::tok {

namespace {

// A doubly linked list of symbols over the word, merged in place.
struct Symbol {
  int32_t id;
  int32_t prev, next;
  size_t begin, len;  // bytes of the word (SPM)
};

void push_byte_tokens(const Vocab& vocab, std::string_view bytes, std::optional<int32_t> unk,
                      std::vector<int32_t>& out) {
  for (unsigned char c : bytes) {
    auto id = vocab.find(fmt::format("<0x{:02X}>", c));
    if (id) {
      out.push_back(*id);
    } else if (auto single = vocab.find(std::string(1, static_cast<char>(c)))) {
      out.push_back(*single);
    } else if (unk) {
      out.push_back(*unk);
    }
  }
}

}  // namespace

bool BpeModel::add_merge(std::string_view a, std::string_view b) {
  auto ia = vocab_->find(a), ib = vocab_->find(b);
  if (!ia || !ib) return false;
  std::string joined(a);
  joined += b;
  auto in = vocab_->find(joined);
  if (!in) return false;
  const int32_t rank = static_cast<int32_t>(merge_list_.size());
  merges_.try_emplace(key(*ia, *ib), MergeInfo{rank, *in});  // the first (lowest) rank wins
  merge_list_.emplace_back(*ia, *ib);
  return true;
}

void BpeModel::encode(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (opts_.ignore_merges) {
    if (auto id = vocab_->find(word)) {
      out.push_back(*id);
      return;
    }
  }
  std::vector<Symbol> sym;
  sym.reserve(word.size());
  bool last_unk = false;
  for (size_t i = 0; i < word.size();) {
    const size_t n = utf8_char_len(word, i);
    std::string_view ch = word.substr(i, n);
    if (auto id = vocab_->find(ch)) {
      sym.push_back({*id, 0, 0, i, n});
      last_unk = false;
    } else if (opts_.byte_fallback) {
      std::vector<int32_t> bytes;
      bool all = true;
      for (unsigned char c : ch) {
        auto b = vocab_->find(fmt::format("<0x{:02X}>", c));
        if (!b) {
          all = false;
          break;
        }
        bytes.push_back(*b);
      }
      if (all) {
        for (int32_t b : bytes) sym.push_back({b, 0, 0, i, n});
        last_unk = false;
      } else if (opts_.unk_id) {
        if (!(opts_.fuse_unk && last_unk)) sym.push_back({*opts_.unk_id, 0, 0, i, n});
        last_unk = true;
      }
    } else if (opts_.unk_id) {
      if (!(opts_.fuse_unk && last_unk)) sym.push_back({*opts_.unk_id, 0, 0, i, n});
      last_unk = true;
    }
    i += n;
  }
  const int32_t n_sym = static_cast<int32_t>(sym.size());
  for (int32_t k = 0; k < n_sym; ++k) {
    sym[k].prev = k - 1;
    sym[k].next = k + 1 < n_sym ? k + 1 : -1;
  }
  // (rank, position) min-heap; a popped entry is stale when its pair no longer exists.
  struct Cand {
    int32_t rank, pos, left_id, right_id;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<>> heap;
  auto consider = [&](int32_t k) {
    if (k < 0 || sym[k].next < 0) return;
    auto it = merges_.find(key(sym[k].id, sym[sym[k].next].id));
    if (it != merges_.end()) heap.push({it->second.rank, k, sym[k].id, sym[sym[k].next].id});
  };
  for (int32_t k = 0; k + 1 < n_sym; ++k) consider(k);
  while (!heap.empty()) {
    Cand c = heap.top();
    heap.pop();
    Symbol& l = sym[c.pos];
    if (l.id < 0 || l.next < 0 || l.id != c.left_id || sym[l.next].id != c.right_id) continue;
    const int32_t r = l.next;
    l.id = merges_.at(key(c.left_id, c.right_id)).new_id;
    l.next = sym[r].next;
    if (l.next >= 0) sym[l.next].prev = c.pos;
    sym[r].id = -1;
    consider(l.prev);
    consider(c.pos);
  }
  for (int32_t k = n_sym > 0 ? 0 : -1; k >= 0; k = sym[k].next) out.push_back(sym[k].id);
}

void SpmModel::encode(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::vector<Symbol> sym;
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_char_len(text, i);
    sym.push_back({0, static_cast<int32_t>(sym.size()) - 1, -1, i, n});
    i += n;
  }
  for (size_t k = 0; k + 1 < sym.size(); ++k) sym[k].next = static_cast<int32_t>(k + 1);
  struct Bigram {
    int32_t left, right;
    float score;
    size_t len;
    // llama.cpp: the highest score first, then the leftmost.
    bool operator<(const Bigram& o) const {
      return score < o.score || (score == o.score && left > o.left);
    }
  };
  std::priority_queue<Bigram> heap;
  auto try_add = [&](int32_t l, int32_t r) {
    if (l < 0 || r < 0) return;
    std::string_view s = text.substr(sym[l].begin, sym[l].len + sym[r].len);
    auto id = vocab_->find(s);
    if (!id || static_cast<size_t>(*id) >= scores_.size()) return;
    heap.push({l, r, scores_[*id], s.size()});
  };
  for (size_t k = 1; k < sym.size(); ++k)
    try_add(static_cast<int32_t>(k - 1), static_cast<int32_t>(k));
  while (!heap.empty()) {
    Bigram b = heap.top();
    heap.pop();
    Symbol& l = sym[b.left];
    Symbol& r = sym[b.right];
    if (l.len == 0 || r.len == 0 || l.len + r.len != b.len) continue;  // stale
    l.len += r.len;
    r.len = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = b.left;
    try_add(l.prev, b.left);
    try_add(b.left, l.next);
  }
  // Every merged symbol is in the vocabulary (a bigram is only queued when it is), so only
  // single characters can be missing: they fall back to byte tokens.
  for (int32_t k = 0; k >= 0; k = sym[k].next) {
    std::string_view s = text.substr(sym[k].begin, sym[k].len);
    if (auto id = vocab_->find(s))
      out.push_back(*id);
    else
      push_byte_tokens(*vocab_, s, unk_id_, out);
  }
}

}  // namespace pp::model::tok
