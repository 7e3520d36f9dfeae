#include "core/mask_pairs.h"

#include "core/block_mask.h"

namespace cptune {
namespace {

// Number of keys j in [ka, kb) with j <= i - shift, summed over i in [qa, qb).
int64_t causal_sum(int64_t qa, int64_t qb, int64_t ka, int64_t kb, int64_t shift) {
  return causal_pairs(qa - shift, qb - shift, ka, kb);
}

}  // namespace

int64_t mask_pairs(const Mask& mask, int64_t len, int64_t qa, int64_t qb, int64_t ka, int64_t kb) {
  if (qb <= qa || kb <= ka) return 0;
  switch (mask.kind) {
    case MaskKind::full:
      return (qb - qa) * (kb - ka);
    case MaskKind::causal:
      return causal_sum(qa, qb, ka, kb, 0);
    case MaskKind::sliding_window:
      return causal_sum(qa, qb, ka, kb, 0) - causal_sum(qa, qb, ka, kb, mask.window);
    case MaskKind::blocks:
      return mask.blocks->pairs(len, qa, qb, ka, kb);
  }
  return 0;
}

}  // namespace cptune
