#include "core/block_placement.h"

#include <algorithm>
#include <numeric>
#include <tuple>

#include "core/block_mask.h"
#include "core/mask_pairs.h"
#include "core/tensor_split.h"

namespace cptune {
namespace {

bool classic(const PlacementProblem& p) { return p.units > 0; }

// Visible pairs of rows [a, b) of sequence seq against the whole (padded) sequence.
int64_t rows_cost(const PlacementProblem& p, size_t seq, int64_t a, int64_t b) {
  return mask_pairs(p.mask, p.lens[seq], a, b, 0, p.padded_lens[seq]);
}

BlockPlacement empty_placement(const PlacementProblem& p, std::string_view name) {
  BlockPlacement out;
  out.name = name;
  out.ranges.assign(p.lens.size(), std::vector<std::vector<PositionRange>>(static_cast<size_t>(p.ring)));
  return out;
}

// Sorts and merges each index's ranges, cuts them at block boundaries (uneven strategies: the
// classic slots must stay equal) and counts each index's work.
BlockPlacement finish(const PlacementProblem& p, BlockPlacement out) {
  const int64_t n = p.mask.blocks->n();
  out.pairs.assign(static_cast<size_t>(p.ring), 0);
  for (size_t seq = 0; seq < out.ranges.size(); ++seq) {
    const int64_t len = p.lens[seq];
    for (size_t r = 0; r < out.ranges[seq].size(); ++r) {
      std::vector<PositionRange>& ranges = out.ranges[seq][r];
      std::sort(ranges.begin(), ranges.end());
      std::vector<PositionRange> merged;
      for (const PositionRange& x : ranges) {
        if (!merged.empty() && merged.back().second == x.first)
          merged.back().second = x.second;
        else
          merged.push_back(x);
      }
      ranges.clear();
      for (auto [a, b] : merged) {
        if (!classic(p)) {
          for (int64_t blk = block_of(len, n, a) + 1; blk < n && block_begin(len, n, blk) < b; ++blk) {
            ranges.emplace_back(a, block_begin(len, n, blk));
            a = block_begin(len, n, blk);
          }
        }
        ranges.emplace_back(a, b);
      }
      for (auto [a, b] : ranges) out.pairs[r] += rows_cost(p, seq, a, b);
    }
  }
  // The ring's compute, step by step: index r against the shard of r - k, the slowest index each step.
  // Uneven ranges lie in one block each, so a pair of ranges reads one cell (classic: mask_pairs).
  const int64_t R = p.ring;
  std::vector<std::vector<std::vector<int64_t>>> block(out.ranges.size());  // [seq][r][range]
  for (size_t seq = 0; seq < out.ranges.size(); ++seq)
    for (const auto& ranges : out.ranges[seq]) {
      block[seq].emplace_back();
      for (auto [a, b] : ranges) block[seq].back().push_back(classic(p) ? -1 : block_of(p.lens[seq], n, a));
    }
  const BlockTable& table = *p.mask.blocks;
  for (int64_t k = 0; k < R; ++k) {
    int64_t most = 0;
    for (int64_t r = 0; r < R; ++r) {
      const size_t q = static_cast<size_t>(r), src = static_cast<size_t>((r - k + R) % R);
      int64_t pairs = 0;
      for (size_t seq = 0; seq < out.ranges.size(); ++seq) {
        const auto& qr = out.ranges[seq][q];
        const auto& kr = out.ranges[seq][src];
        for (size_t i = 0; i < qr.size(); ++i) {
          for (size_t j = 0; j < kr.size(); ++j) {
            const int64_t bq = block[seq][q][i], bk = block[seq][src][j];
            if (bq < 0) {
              pairs += mask_pairs(p.mask, p.lens[seq], qr[i].first, qr[i].second, kr[j].first, kr[j].second);
              continue;
            }
            const BlockKind cell = table.at(bq, bk);
            if (cell == BlockKind::full || (cell == BlockKind::causal && bq > bk))
              pairs += (qr[i].second - qr[i].first) * (kr[j].second - kr[j].first);
            else if (cell == BlockKind::causal && bq == bk)
              pairs += table.pairs(p.lens[seq], qr[i].first, qr[i].second, kr[j].first, kr[j].second);
          }
        }
      }
      most = std::max(most, pairs);
    }
    out.step_pairs += most;
  }
  return out;
}

// Chunk c of `chunks` equal (classic) or tensor_split (uneven) chunks of sequence seq.
PositionRange chunk(const PlacementProblem& p, size_t seq, int64_t chunks, int64_t c) {
  if (classic(p)) {
    const int64_t w = p.padded_lens[seq] / chunks;
    return {c * w, (c + 1) * w};
  }
  return {split_begin(p.lens[seq], chunks, c), split_begin(p.lens[seq], chunks, c + 1)};
}

void add(std::vector<PositionRange>& to, PositionRange x) {
  if (x.second > x.first) to.push_back(x);
}

// The placement units of one sequence, as the header comment defines them.
std::vector<PositionRange> units_of(const PlacementProblem& p, size_t seq) {
  std::vector<PositionRange> units;
  if (classic(p)) {
    for (int64_t i = 0; i < p.units; ++i) add(units, chunk(p, seq, p.units, i));
    return units;
  }
  const int64_t len = p.lens[seq], n = p.mask.blocks->n(), R = p.ring;
  const int64_t k = n < 2 * R ? (2 * R + n - 1) / n : 1;
  const int64_t total = rows_cost(p, seq, 0, len), share = total / R;  // an index's fair share
  for (int64_t b = 0; b < n; ++b) {
    const int64_t begin = block_begin(len, n, b), size = block_begin(len, n, b + 1) - begin;
    const int64_t cost = rows_cost(p, seq, begin, begin + size);
    const int64_t seen = mask_pairs(p.mask, len, 0, len, begin, begin + size);  // pairs its keys are in
    int64_t pieces = k;
    if (share > 0) pieces = std::max(pieces, (4 * cost + share - 1) / share);
    if (total > 0) pieces = std::max(pieces, static_cast<int64_t>((static_cast<__int128>(R) * seen + total - 1) / total));
    pieces = std::min(size, pieces);
    for (int64_t i = 0; i < pieces; ++i)
      add(units, {begin + split_begin(size, pieces, i), begin + split_begin(size, pieces, i + 1)});
  }
  return units;
}

}  // namespace

int64_t BlockPlacement::max_pairs() const { return pairs.empty() ? 0 : *std::max_element(pairs.begin(), pairs.end()); }

int64_t classic_units(int64_t blocks, int64_t ring) { return 2 * ring * ((blocks + 2 * ring - 1) / (2 * ring)); }

BlockPlacement contiguous_placement(const PlacementProblem& p) {
  BlockPlacement out = empty_placement(p, "contiguous");
  for (size_t seq = 0; seq < p.lens.size(); ++seq)
    for (int64_t r = 0; r < p.ring; ++r) add(out.ranges[seq][r], chunk(p, seq, p.ring, r));
  return finish(p, std::move(out));
}

BlockPlacement zigzag_placement(const PlacementProblem& p) {
  BlockPlacement out = empty_placement(p, "zigzag");
  for (size_t seq = 0; seq < p.lens.size(); ++seq) {
    for (int64_t r = 0; r < p.ring; ++r) {
      add(out.ranges[seq][r], chunk(p, seq, 2 * p.ring, r));
      add(out.ranges[seq][r], chunk(p, seq, 2 * p.ring, 2 * p.ring - 1 - r));
    }
  }
  return finish(p, std::move(out));
}

BlockPlacement lpt_placement(const PlacementProblem& p) {
  BlockPlacement out = empty_placement(p, "lpt");
  const size_t R = static_cast<size_t>(p.ring);
  std::vector<int64_t> work(R, 0), tokens(R, 0);
  for (size_t seq = 0; seq < p.lens.size(); ++seq) {
    std::vector<PositionRange> units = units_of(p, seq);
    std::vector<int64_t> cost(units.size());
    for (size_t i = 0; i < units.size(); ++i) cost[i] = rows_cost(p, seq, units[i].first, units[i].second);
    std::vector<size_t> order(units.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return cost[a] > cost[b]; });
    // Classic: M / R slots per index. Uneven: every index gets a unit of every sequence.
    std::vector<int64_t> room(R, classic(p) ? p.units / p.ring : int64_t{1} << 62);
    std::vector<bool> has(R, false);
    size_t missing = R;
    for (size_t i = 0; i < order.size(); ++i) {
      const bool fill = !classic(p) && order.size() - i == missing;
      size_t best = R;
      for (size_t r = 0; r < R; ++r) {
        if (room[r] == 0 || (fill && has[r])) continue;
        if (best == R || std::tie(work[r], tokens[r]) < std::tie(work[best], tokens[best])) best = r;
      }
      const PositionRange unit = units[order[i]];
      out.ranges[seq][best].push_back(unit);
      work[best] += cost[order[i]];
      tokens[best] += unit.second - unit.first;
      --room[best];
      if (!has[best]) --missing;
      has[best] = true;
    }
  }
  return finish(p, std::move(out));
}

BlockPlacement balanced_placement(const PlacementProblem& p) {
  BlockPlacement best = contiguous_placement(p);
  const int64_t bound = best.max_pairs();
  for (BlockPlacement other : {zigzag_placement(p), lpt_placement(p)}) {
    if (other.max_pairs() > bound) continue;
    if (std::pair(other.step_pairs, other.max_pairs()) < std::pair(best.step_pairs, best.max_pairs()))
      best = std::move(other);
  }
  return best;
}

double imbalance(std::span<const int64_t> work) {
  const int64_t most = work.empty() ? 0 : *std::max_element(work.begin(), work.end());
  const double total = std::accumulate(work.begin(), work.end(), 0.0);
  return total > 0 ? double(most) * double(work.size()) / total : 1.0;
}

}  // namespace cptune
