#pragma once
// Block-sparse masks: a table over N x N sequence blocks (UltraAttn's mask form). Each sequence
// of L tokens is cut into N blocks by the tensor_split rule (block b holds positions
// [block_begin(L, N, b), block_begin(L, N, b + 1)): the first L mod N blocks one token longer),
// and cell (qb, kb) says which pairs of a query in block qb and a key in block kb are visible:
//   EMPTY   none;
//   FULL    all;
//   CAUSAL  those whose key position is at most the query position: on the diagonal the
//           triangle with the diagonal, below it every pair, above it none.
// Positions at or past L (the padding classic strategies append to a sequence) count as the
// last block's, so padded rows and columns follow the same table.
//
// Named patterns (README "Block-sparse masks" has their pictures), N blocks, rows qb, columns kb:
//   strided:N,S          Sparse Transformer's strided pattern with a stride of S blocks: C on the
//                        diagonal, F where 0 < qb-kb < S (local) or qb-kb is a multiple of S.
//   global-local:N,G,W   Longformer / BigBird (bidirectional): F where qb < G or kb < G (global
//                        blocks see and are seen by all) or |qb-kb| <= W (a local band).
//   star:N               a shared prompt: C on the diagonal, F in column 0 below it.
//   stream:N,SINK,LOCAL  StreamingLLM: C on the diagonal, F below it where kb < SINK (attention
//                        sinks) or qb-kb < LOCAL (a local window of LOCAL blocks, diagonal included).
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/tensor_split.h"

namespace cptune {

enum class BlockKind : uint8_t { empty, full, causal };

inline constexpr int64_t kMaxMaskBlocks = 256;  // N; a table has at most 65,536 cells

// Where block b of n starts in a sequence of len tokens (b == n: len): torch.tensor_split.
inline int64_t block_begin(int64_t len, int64_t n, int64_t b) { return split_begin(len, n, b); }
// The block holding position pos; positions at or past len belong to the last block.
inline int64_t block_of(int64_t len, int64_t n, int64_t pos) {
  if (pos >= len) return n - 1;
  const int64_t q = len / n, r = len % n;
  const int64_t long_part = r * (q + 1);
  return pos < long_part ? pos / (q + 1) : r + (pos - long_part) / q;
}

// Pairs (i, j) with i in [qa, qb), j in [ka, kb) and j <= i: the causal count in closed form.
int64_t causal_pairs(int64_t qa, int64_t qb, int64_t ka, int64_t kb);

class BlockTable {
 public:
  // cells row by row (query block major). Throws Error when n is outside [1, kMaxMaskBlocks] or
  // cells.size() != n * n. name is the mask's canonical text; empty: the inline form
  // "blocks:N:" + rows joined by '/', which parse_mask reads back.
  BlockTable(int64_t n, std::vector<BlockKind> cells, std::string name = {});

  int64_t n() const { return n_; }
  BlockKind at(int64_t qb, int64_t kb) const { return cells_[static_cast<size_t>(qb * n_ + kb)]; }
  std::span<const BlockKind> cells() const { return cells_; }
  const std::string& name() const { return name_; }
  uint64_t hash() const { return hash_; }  // of n and the cells, not the name
  int64_t count(BlockKind kind) const;     // cells of that kind

  // Equal tables have equal cells; a pattern and a file with the same cells are the same mask.
  // The hash first, then the bytes at once: a lookup's exact hit compares a caller's table with
  // its own (a 64 x 64 table: ~1 us cell by cell, ~0.1 us by memcmp).
  bool operator==(const BlockTable& o) const {
    return n_ == o.n_ && hash_ == o.hash_ && std::memcmp(cells_.data(), o.cells_.data(), cells_.size()) == 0;
  }

  // Visible (query, key) pairs with queries in [qa, qb) and keys in [ka, kb) of one sequence of
  // len tokens: exact, from the cells the ranges overlap (FULL: the rectangle, CAUSAL: the
  // positions with key <= query). O(query blocks x key blocks overlapped).
  int64_t pairs(int64_t len, int64_t qa, int64_t qb, int64_t ka, int64_t kb) const;
  bool sees(int64_t len, int64_t i, int64_t j) const {
    const BlockKind k = at(block_of(len, n_, i), block_of(len, n_, j));
    return k == BlockKind::full || (k == BlockKind::causal && j <= i);
  }

 private:
  int64_t n_ = 0;
  std::vector<BlockKind> cells_;
  std::string name_;
  uint64_t hash_ = 0;
};

// The inline text of a table: "blocks:N:" then its rows, one character per cell ('.' EMPTY,
// 'F' FULL, 'C' CAUSAL), joined by '/'.
std::string inline_text(const BlockTable& table);
// A picture of the table for terminals and README: N lines of ". F C" characters.
std::string rows_text(const BlockTable& table);

// A table file's text (`--mask blocks:FILE`), either
//   N, then N rows of N characters '.', 'F', 'C' (blanks between cells and '#' comments allowed), or
//   JSON: {"blocks": N, "rows": ["C...", "FC..", ...]}.
// Throws Error naming `source` and the line, row or character it cannot read.
BlockTable parse_block_table(std::string_view text, std::string_view source);
// The named patterns above, from "strided:16,4", "global-local:16,1,2", "star:16",
// "stream:16,1,3". Throws Error naming the bad parameter and its range.
BlockTable block_pattern(std::string_view text);
// True when text names a pattern (its part before ':' is a pattern name).
bool is_block_pattern(std::string_view text);
// The patterns' forms for help texts and messages: "strided:N,S, global-local:N,G,W, ...".
std::string block_pattern_usages();

}  // namespace cptune
