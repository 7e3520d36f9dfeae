#include "db/records.h"
// No fmt here: these files also build libcptune_lookup.so, which should need only SQLite.

#include <algorithm>
#include <charconv>

#include "core/error.h"

namespace cptune::db {
namespace {

bool same_mask(const Mask& a, const Mask& b) {
  return a.kind == b.kind && (a.kind != MaskKind::sliding_window || a.window == b.window);
}

}  // namespace

bool ShapeKey::operator==(const ShapeKey& o) const {
  return batch == o.batch && seq_lens == o.seq_lens && q_heads == o.q_heads && kv_heads == o.kv_heads &&
         head_dim == o.head_dim && v_head_dim == o.v_head_dim && dtype == o.dtype && same_mask(mask, o.mask);
}

bool ShapeFamily::operator==(const ShapeFamily& o) const {
  return batch == o.batch && q_heads == o.q_heads && kv_heads == o.kv_heads && head_dim == o.head_dim &&
         v_head_dim == o.v_head_dim && dtype == o.dtype && same_mask(mask, o.mask);
}

ShapeKey shape_key(const AttentionShape& s) {
  return ShapeKey{s.batch, s.seq_lens, s.q_heads, s.kv_heads, s.head_dim, s.v_head_dim, s.dtype, s.mask};
}

AttentionShape attention_shape(const ShapeKey& k) {
  AttentionShape s;
  s.batch = k.batch;
  s.seq_lens = k.seq_lens;
  s.q_heads = k.q_heads;
  s.kv_heads = k.kv_heads;
  s.head_dim = k.head_dim;
  s.v_head_dim = k.v_head_dim;
  s.dtype = k.dtype;
  s.mask = k.mask;
  return s;
}

ShapeView view_of(const ShapeKey& k) {
  return ShapeView{k.batch, k.seq_lens, k.q_heads, k.kv_heads, k.head_dim, k.v_head_dim, k.dtype, k.mask};
}

ShapeKey key_of(const ShapeView& v) {
  return ShapeKey{v.batch,    {v.seq_lens.begin(), v.seq_lens.end()}, v.q_heads, v.kv_heads, v.head_dim,
                  v.v_head_dim, v.dtype, v.mask};
}

ShapeFamily family_of(const ShapeView& v) {
  return ShapeFamily{v.batch, v.q_heads, v.kv_heads, v.head_dim, v.v_head_dim, v.dtype, v.mask};
}

int64_t total_tokens(const ShapeView& v) {
  int64_t n = 0;
  for (int64_t len : v.seq_lens) n += len;
  return n;
}

std::string seq_lens_text(std::span<const int64_t> seq_lens) {
  std::string out;
  for (int64_t len : seq_lens) {
    if (!out.empty()) out += ',';
    out += std::to_string(len);
  }
  return out;
}

std::vector<int64_t> parse_seq_lens(const std::string& text) {
  std::vector<int64_t> lens;
  const char* p = text.data();
  const char* end = p + text.size();
  while (p < end) {
    int64_t len = 0;
    auto [next, ec] = std::from_chars(p, end, len);
    if (ec != std::errc() || len <= 0 || (next != end && *next != ','))
      throw Error("bad sequence lengths '" + text + "'; expected positive token counts separated by commas");
    lens.push_back(len);
    p = next == end ? end : next + 1;
  }
  if (lens.empty() || text.back() == ',') throw Error("bad sequence lengths '" + text + "'; expected e.g. 77,4097");
  return lens;
}

std::string describe(const ShapeKey& k) {
  using std::to_string;
  return std::string(cptune::to_string(k.dtype)) + " S=" + seq_lens_text(k.seq_lens) + " B=" + to_string(k.batch) +
         " Hq=" + to_string(k.q_heads) + " Hkv=" + to_string(k.kv_heads) + " D=" + to_string(k.head_dim) +
         " Dv=" + to_string(k.v_head_dim) + " " + cptune::to_string(k.mask);
}

std::string describe(const CandidateKey& c) {
  using std::to_string;
  return std::string(cptune::to_string(c.strategy)) + " U=" + to_string(c.ulysses) + " R=" + to_string(c.ring) + " " +
         std::string(cptune::to_string(c.order)) + " " + std::string(cptune::to_string(c.head_policy));
}

std::string describe(const Fingerprint& fp) {
  using std::to_string;
  return fp.backend + " " + fp.device_model + " P=" + to_string(fp.world) + " G=" + to_string(fp.ranks_per_node) +
         " nodes=" + to_string(fp.nodes);
}

}  // namespace cptune::db
