#include "db/shape_hash.h"

#include <algorithm>

namespace cptune::db {
namespace {

// The finaliser of MurmurHash3: every input bit reaches every output bit, so the low bits the
// table indexes with are as good as the high ones.
uint64_t mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

uint64_t combine(uint64_t h, int64_t value) { return mix(h ^ (uint64_t(value) + 0x9e3779b97f4a7c15ULL + (h << 6))); }

}  // namespace

uint64_t family_hash(const ShapeView& s) {
  uint64_t h = 0x6370'7475'6e65ULL;  // "cptune"
  for (int64_t v : {s.batch, s.q_heads, s.kv_heads, s.head_dim, s.v_head_dim, int64_t(s.dtype), int64_t(s.mask.kind)})
    h = combine(h, v);
  if (s.mask.kind == MaskKind::sliding_window) h = combine(h, s.mask.window);
  return h;
}

uint64_t shape_hash(const ShapeView& s) {
  uint64_t h = combine(family_hash(s), int64_t(s.seq_lens.size()));
  for (int64_t len : s.seq_lens) h = combine(h, len);
  return h;
}

bool same_shape(const ShapeView& a, const ShapeView& b) {
  return family_of(a) == family_of(b) &&
         std::equal(a.seq_lens.begin(), a.seq_lens.end(), b.seq_lens.begin(), b.seq_lens.end());
}

}  // namespace cptune::db
