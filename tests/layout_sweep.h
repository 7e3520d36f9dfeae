#pragma once
// Enumerates small LayoutSpecs exhaustively for property tests.
#include <algorithm>
#include <functional>
#include <optional>
#include <vector>

#include "core/error.h"
#include "core/layout.h"

namespace cptune::testing {

// Visible (i, j) pairs with i in [qa, qb), j in [ka, kb) of a sequence of len tokens, position by
// position from Mask::sees: what mask_pairs must equal.
inline int64_t brute_pairs(const Mask& m, int64_t len, int64_t qa, int64_t qb, int64_t ka, int64_t kb) {
  int64_t n = 0;
  for (int64_t i = qa; i < qb; ++i)
    for (int64_t j = ka; j < kb; ++j) n += m.sees(i, j, len);
  return n;
}

// Every (U, R) with U * R == P.
inline std::vector<std::pair<int64_t, int64_t>> factorizations(int64_t P) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t u = 1; u <= P; ++u)
    if (P % u == 0) out.push_back({u, P / u});
  return out;
}

// Calls fn for every strategy, U x R factorisation, order and head policy that applies to the
// shape on P ranks (hybrids over all factorisations; others over their one fixed mesh).
inline void for_each_spec(const AttentionShape& shape, int64_t P, int64_t ranks_per_node,
                          const std::function<void(const LayoutSpec&)>& fn) {
  for (Strategy s : kAllStrategies) {
    const bool hybrid = s == Strategy::hybrid || s == Strategy::hybrid_uaa;
    std::vector<std::pair<int64_t, int64_t>> meshes =
        hybrid ? factorizations(P) : std::vector<std::pair<int64_t, int64_t>>{{0, 0}};
    for (auto [U, R] : meshes) {
      for (RankOrder order : {RankOrder::ulysses_inner, RankOrder::ring_inner}) {
        for (HeadPolicy policy : {HeadPolicy::balanced, HeadPolicy::kv_aligned}) {
          fn(LayoutSpec{shape, Cluster{P, ranks_per_node}, LayoutChoice{s, U, R, order, policy}});
        }
      }
    }
  }
}

// Builds the layout, or nullopt when the spec is refused with an Error.
inline std::optional<Layout> try_build(const LayoutSpec& spec) {
  try {
    return Layout::build(spec);
  } catch (const Error&) {
    return std::nullopt;
  }
}

// Every layout that builds for each shape on P in {2, 3, 4, 6, 8, 12, 16} ranks with 1, 2, 4 or
// 8 ranks per node: the sweep the layout-reading tests (topology, simulator) share.
inline void for_each_layout_of(const std::vector<AttentionShape>& shapes, const std::function<void(const Layout&)>& fn) {
  for (const AttentionShape& shape : shapes)
    for (int64_t P : {2, 3, 4, 6, 8, 12, 16})
      for (int64_t G : {1, 2, 4, 8})
        for_each_spec(shape, P, std::min(G, P), [&](const LayoutSpec& spec) {
          if (auto l = try_build(spec)) fn(*l);
        });
}

}  // namespace cptune::testing
