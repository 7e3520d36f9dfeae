#pragma once
// Where the sequence blocks of a block-sparse mask go on the R ring indices (issue 16).
//
// A ring index computes its shard's queries against every key its mask shows them, so its work
// is the sum, over the token ranges it holds, of those rows' visible pairs against the whole
// sequence. Contiguous chunks load the rows of a dense part of the table onto one index; zigzag
// balances only the causal triangle. The balanced placement is a documented heuristic:
//   candidates   contiguous (R tensor_split chunks), zigzag (2R chunks, index r takes chunks r and
//                2R-1-r) and LPT: longest processing time first over placement units, each unit
//                going to the index with the least work so far (ties: fewer tokens, lower index);
//   units        uneven strategies: the mask's blocks, each cut into k = ceil(2R / N) tensor_split
//                pieces when N < 2R (so there are at least 2R units), into ceil(4 cost / share)
//                pieces when its rows cost more than a quarter of an index's fair share (the
//                sequence's work / R), and into ceil(R seen / work) pieces when its keys take part
//                in a large fraction `seen / work` of the sequence's pairs (star's first block), so
//                that such keys spread over many indices and no ring step waits on one of them;
//                every index gets at least one unit of every sequence. Classic (padding)
//                strategies: M = 2R ceil(N / 2R) equal slots of the padded sequence, M / R of them
//                per index, so shards stay equal;
//   cost         a unit's query rows' visible pairs against the whole (padded) sequence;
//   choice       among the candidates whose busiest index has no more work than contiguous's, the
//                one with the smallest step_pairs (the ring's lockstep compute; ties: less work on
//                the busiest index, then contiguous, zigzag, LPT), so it is never worse than
//                contiguous in per-index FLOPs and never slower in the simulator's ring compute.
// Sequences are placed one after another; LPT carries each index's work across them.
// Ranges come back sorted, adjacent ones merged, and for uneven strategies cut at the mask's
// block boundaries, so that a ring step can skip (or not forward) whole blocks.
#include <cstdint>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "core/types.h"

namespace cptune {

// Rings longer than this keep their fixed chunks and send every shard every step under a block
// mask too: the placement's choice and the skip plan cost O(R^2) block pairs.
inline constexpr int64_t kMaxPlacedRing = 256;

struct PlacementProblem {
  Mask mask;                         // a block mask
  std::vector<int64_t> lens;         // real length of each sequence
  std::vector<int64_t> padded_lens;  // after classic padding (a multiple of units); == lens when uneven
  int64_t ring = 1;                  // R
  int64_t units = 0;                 // classic: equal slots per sequence (classic_units); 0: uneven
};

// [begin, end) positions of one sequence (padded positions for classic strategies).
using PositionRange = std::pair<int64_t, int64_t>;

struct BlockPlacement {
  std::string_view name;  // "contiguous", "zigzag" or "lpt"
  std::vector<std::vector<std::vector<PositionRange>>> ranges;  // [seq][ring index], sorted
  std::vector<int64_t> pairs;  // per ring index: its rows' visible pairs, padding included
  // Sum over ring steps k of the largest pairs any index r computes against the shard of r - k:
  // the ring's compute when its steps run in lockstep (the simulator's model of a ring).
  int64_t step_pairs = 0;
  int64_t max_pairs() const;
};

// M for classic strategies: 2R ceil(N / 2R) equal slots per sequence.
int64_t classic_units(int64_t blocks, int64_t ring);

BlockPlacement contiguous_placement(const PlacementProblem& p);
BlockPlacement zigzag_placement(const PlacementProblem& p);
BlockPlacement lpt_placement(const PlacementProblem& p);
// The header comment's choice among the three candidates above.
BlockPlacement balanced_placement(const PlacementProblem& p);

// max / mean of per-index work; 1 when there is no work at all.
double imbalance(std::span<const int64_t> work);

}  // namespace cptune
