#include "core/types.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <utility>

#include "core/error.h"
#include "core/hash.h"
#include "core/read_file.h"

namespace cptune {
namespace {

template <typename E, size_t N>
using NameTable = std::array<std::pair<E, std::string_view>, N>;

constexpr NameTable<DType, 3> kDTypes{{{DType::bf16, "bf16"}, {DType::fp16, "fp16"}, {DType::fp32, "fp32"}}};
constexpr NameTable<MaskKind, 4> kMasks{{{MaskKind::full, "full"},
                                         {MaskKind::causal, "causal"},
                                         {MaskKind::sliding_window, "sliding"},
                                         {MaskKind::blocks, "blocks"}}};
constexpr NameTable<Strategy, 7> kStrategies{{{Strategy::ulysses, "ulysses"},
                                              {Strategy::uaa, "uaa"},
                                              {Strategy::ring, "ring"},
                                              {Strategy::ring_zigzag, "ring-zigzag"},
                                              {Strategy::allgather_kv, "allgather-kv"},
                                              {Strategy::hybrid, "hybrid"},
                                              {Strategy::hybrid_uaa, "hybrid-uaa"}}};
constexpr NameTable<HeadPolicy, 2> kPolicies{{{HeadPolicy::balanced, "balanced"}, {HeadPolicy::kv_aligned, "kv-aligned"}}};
constexpr NameTable<RankOrder, 2> kOrders{{{RankOrder::ulysses_inner, "ulysses-inner"}, {RankOrder::ring_inner, "ring-inner"}}};
constexpr NameTable<Phase, kPhaseCount> kPhases{{{Phase::gather, "gather"},
                                                 {Phase::qkv, "qkv"},
                                                 {Phase::allgather, "allgather"},
                                                 {Phase::attention, "attention"},
                                                 {Phase::o, "o"},
                                                 {Phase::grad_o, "grad-o"},
                                                 {Phase::attention_bwd, "attention-bwd"},
                                                 {Phase::grad_qkv, "grad-qkv"},
                                                 {Phase::reduce_scatter, "reduce-scatter"}}};
constexpr NameTable<Pass, 3> kPasses{{{Pass::forward, "fwd"}, {Pass::backward, "bwd"}, {Pass::forward_backward, "fwd+bwd"}}};
constexpr NameTable<MetadataChannel, 2> kChannels{{{MetadataChannel::cpu, "cpu"}, {MetadataChannel::device, "device"}}};

template <typename E, size_t N>
std::string_view name_of(const NameTable<E, N>& table, E v) {
  for (const auto& [e, name] : table)
    if (e == v) return name;
  return "?";
}

template <typename E, size_t N>
E parse_of(const NameTable<E, N>& table, std::string_view s, std::string_view what) {
  for (const auto& [e, name] : table)
    if (name == s) return e;
  std::string choices;
  for (const auto& entry : table) choices += (choices.empty() ? "" : ", ") + std::string(entry.second);
  throw Error("unknown " + std::string(what) + " '" + std::string(s) + "'; choose one of " + choices);
}

}  // namespace

int64_t dtype_bytes(DType dtype) { return dtype == DType::fp32 ? 4 : 2; }

std::string_view to_string(DType v) { return name_of(kDTypes, v); }
std::string_view to_string(MaskKind v) { return name_of(kMasks, v); }
std::string_view to_string(Strategy v) { return name_of(kStrategies, v); }
std::string_view to_string(HeadPolicy v) { return name_of(kPolicies, v); }
std::string_view to_string(RankOrder v) { return name_of(kOrders, v); }
DType parse_dtype(std::string_view s) { return parse_of(kDTypes, s, "dtype"); }
Strategy parse_strategy(std::string_view s) { return parse_of(kStrategies, s, "strategy"); }
HeadPolicy parse_head_policy(std::string_view s) { return parse_of(kPolicies, s, "head policy"); }
RankOrder parse_rank_order(std::string_view s) { return parse_of(kOrders, s, "rank order"); }
std::string_view to_string(Phase v) { return name_of(kPhases, v); }
Phase parse_phase(std::string_view s) { return parse_of(kPhases, s, "phase"); }
std::string_view to_string(Pass v) { return name_of(kPasses, v); }
Pass parse_pass(std::string_view s) { return s == "fwd-bwd" ? Pass::forward_backward : parse_of(kPasses, s, "pass"); }
std::string_view to_string(MetadataChannel v) { return name_of(kChannels, v); }
MetadataChannel parse_metadata_channel(std::string_view s) { return parse_of(kChannels, s, "metadata channel"); }

std::string to_string(const Mask& m) {
  if (m.kind == MaskKind::sliding_window) return "sliding:" + std::to_string(m.window);
  if (m.kind == MaskKind::blocks) return m.blocks ? m.blocks->name() : "blocks";
  return std::string(to_string(m.kind));
}

Mask block_mask(BlockTable table) {
  return Mask{MaskKind::blocks, 0, std::make_shared<const BlockTable>(std::move(table))};
}

bool names_table_file(std::string_view s) {
  if (s.substr(0, 7) != "blocks:") return false;
  const std::string_view rest = s.substr(7);
  const size_t colon = rest.find(':');
  const std::string_view head = rest.substr(0, colon);
  return colon == std::string_view::npos || head.empty() ||
         head.find_first_not_of("0123456789") != std::string_view::npos;
}

Mask parse_mask(std::string_view s) {
  for (std::string_view prefix : {"sliding:", "sliding-window:"}) {
    if (s.substr(0, prefix.size()) == prefix) {
      std::string_view num = s.substr(prefix.size());
      int64_t w = 0;
      auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), w);
      if (ec != std::errc() || end != num.data() + num.size() || w <= 0)
        throw Error("bad sliding window '" + std::string(num) + "' in mask '" + std::string(s) +
                    "'; write sliding:W with W a positive number of tokens");
      return Mask{MaskKind::sliding_window, w};
    }
  }
  if (s == "sliding" || s == "sliding-window")
    throw Error("mask '" + std::string(s) + "' needs a window; write sliding:W, e.g. sliding:4096");
  if (s == "blocks" || s == "blocks:")
    throw Error("mask '" + std::string(s) + "' needs a table; write blocks:FILE or a pattern such as star:16");
  if (s.substr(0, 7) == "blocks:") {
    // "blocks:N:ROWS" (the inline text to_string writes) or "blocks:FILE".
    const std::string_view rest = s.substr(7);
    if (!names_table_file(s)) {
      const size_t colon = rest.find(':');
      const std::string_view head = rest.substr(0, colon);
      std::string text(head);
      text += '\n';
      for (char c : rest.substr(colon + 1)) text += c == '/' ? '\n' : c;
      return block_mask(parse_block_table(text, "mask '" + std::string(s.substr(0, 40)) + "'"));
    }
    const std::string path(rest);
    return block_mask(parse_block_table(read_regular_file(path, "block table", size_t(1) << 20), path));
  }
  if (is_block_pattern(s)) return block_mask(block_pattern(s));
  for (const auto& [kind, name] : kMasks)
    if (name == s) return Mask{kind, 0};
  throw Error("unknown mask '" + std::string(s) + "'; choose full, causal, sliding:W, blocks:FILE or a block pattern (" +
              block_pattern_usages() + ")");
}

std::string seq_lens_text(std::span<const int64_t> seq_lens) {
  std::string out;
  for (int64_t len : seq_lens) {
    if (!out.empty()) out += ',';
    out += std::to_string(len);
  }
  return out;
}

namespace {

// At most the first 100 characters of text, so a huge bad value makes a readable message.
std::string excerpt(std::string_view text) {
  if (text.size() <= 100) return std::string(text);
  return std::string(text.substr(0, 100)) + "... (" + std::to_string(text.size()) + " characters)";
}

}  // namespace

std::vector<int64_t> parse_seq_lens(std::string_view text) {
  std::vector<int64_t> lens;
  const char* p = text.data();
  const char* end = p + text.size();
  while (p < end) {
    int64_t len = 0;
    auto [next, ec] = std::from_chars(p, end, len);
    if (ec != std::errc() || len <= 0 || (next != end && *next != ','))
      throw Error("bad sequence lengths '" + excerpt(text) + "'; expected positive token counts separated by commas");
    lens.push_back(len);
    p = next == end ? end : next + 1;
  }
  if (lens.empty() || text.back() == ',')
    throw Error("bad sequence lengths '" + excerpt(text) + "'; expected e.g. 77,4097");
  return lens;
}

int64_t sum_tokens(std::span<const int64_t> seq_lens) {
  int64_t n = 0;
  for (int64_t l : seq_lens)
    if (__builtin_add_overflow(n, l, &n))
      throw Error("the sequence lengths add up to more than 2^63 tokens; at most " + std::to_string(kMaxTokens) +
                  " tokens per sample are supported");
  return n;
}

namespace {

void check_range(int64_t value, int64_t limit, const char* what) {
  if (value < 1 || value > limit)
    throw Error(std::string(what) + " " + std::to_string(value) + " is outside the supported 1.." +
                std::to_string(limit));
}

}  // namespace

void check_world_limit(int64_t world) { check_range(world, kMaxWorld, "world"); }

void check_limits(const ShapeView& s) {
  check_range(s.batch, kMaxBatch, "batch");
  check_range(s.q_heads, kMaxHeads, "query heads");
  check_range(s.kv_heads, kMaxHeads, "kv heads");
  check_range(s.head_dim, kMaxHeadDim, "head dim");
  check_range(s.v_head_dim, kMaxHeadDim, "value head dim");
  check_range(int64_t(s.seq_lens.size()), kMaxSequences, "number of packed sequences");
  int64_t total = 0;  // each length <= 2^40 and at most 2^20 of them: no overflow
  for (int64_t len : s.seq_lens) {
    check_range(len, kMaxTokens, "sequence length");
    total += len;
  }
  check_range(total, kMaxTokens, "total tokens per sample");
  if (s.mask.kind == MaskKind::sliding_window) check_range(s.mask.window, kMaxTokens, "sliding window");
  if (s.mask.kind == MaskKind::blocks && !s.mask.blocks)
    throw Error("a block mask without its table; give blocks:FILE or a pattern such as star:16");
  if (s.q_heads % s.kv_heads != 0)
    throw Error(std::to_string(s.q_heads) + " query heads are not a multiple of " + std::to_string(s.kv_heads) +
                " kv heads; GQA needs Hq % Hkv == 0");
}

std::string to_string(const AttentionShape& k) {
  using std::to_string;
  return std::string(cptune::to_string(k.dtype)) + " S=" + seq_lens_text(k.seq_lens) + " B=" + to_string(k.batch) +
         " Hq=" + to_string(k.q_heads) + " Hkv=" + to_string(k.kv_heads) + " D=" + to_string(k.head_dim) +
         " Dv=" + to_string(k.v_head_dim) + " " + cptune::to_string(k.mask);
}

ShapeView view_of(const AttentionShape& s) {
  return ShapeView{s.batch, s.seq_lens, s.q_heads, s.kv_heads, s.head_dim, s.v_head_dim, s.dtype, s.mask};
}

AttentionShape shape_of(const ShapeView& v) {
  return AttentionShape{v.batch, {v.seq_lens.begin(), v.seq_lens.end()}, v.q_heads, v.kv_heads, v.head_dim,
                        v.v_head_dim, v.dtype, v.mask};
}

bool same_family(const ShapeView& a, const ShapeView& b) {
  return a.batch == b.batch && a.q_heads == b.q_heads && a.kv_heads == b.kv_heads && a.head_dim == b.head_dim &&
         a.v_head_dim == b.v_head_dim && a.dtype == b.dtype && a.mask == b.mask;
}

bool same_shape(const ShapeView& a, const ShapeView& b) {
  return same_family(a, b) && std::equal(a.seq_lens.begin(), a.seq_lens.end(), b.seq_lens.begin(), b.seq_lens.end());
}

namespace {

uint64_t combine(uint64_t h, int64_t value) { return hash_combine(h, uint64_t(value)); }

}  // namespace

uint64_t family_hash(const ShapeView& s) {
  uint64_t h = 0x6370'7475'6e65ULL;  // "cptune"
  for (int64_t v : {s.batch, s.q_heads, s.kv_heads, s.head_dim, s.v_head_dim, int64_t(s.dtype), int64_t(s.mask.kind)})
    h = combine(h, v);
  if (s.mask.kind == MaskKind::sliding_window) h = combine(h, s.mask.window);
  if (s.mask.kind == MaskKind::blocks && s.mask.blocks) h = combine(h, int64_t(s.mask.blocks->hash()));
  return h;
}

uint64_t shape_hash(const ShapeView& s) {
  uint64_t h = combine(family_hash(s), int64_t(s.seq_lens.size()));
  for (int64_t len : s.seq_lens) h = combine(h, len);
  return h;
}

std::string to_string(const LayoutChoice& c) {
  return std::string(to_string(c.strategy)) + " U=" + std::to_string(c.ulysses) + " R=" + std::to_string(c.ring) +
         " " + std::string(to_string(c.order)) + " " + std::string(to_string(c.head_policy));
}

LayoutChoice parse_layout_choice(std::string_view text) {
  // Five words: strategy, U=<n>, R=<n>, order, head policy.
  std::vector<std::string_view> words;
  for (size_t i = 0; i < text.size();) {
    const size_t j = std::min(text.find(' ', i), text.size());
    if (j > i) words.push_back(text.substr(i, j - i));
    i = j + 1;
  }
  const auto bad = [&](const std::string& why) {
    return Error("bad layout choice '" + std::string(text) + "': " + why +
                 "; write it as 'STRATEGY U=<n> R=<n> ORDER HEAD-POLICY', e.g. 'hybrid-uaa U=4 R=2 ulysses-inner balanced'");
  };
  if (words.size() != 5) throw bad(std::to_string(words.size()) + " words, not 5");
  const auto degree = [&](std::string_view word, std::string_view prefix) {
    int64_t n = 0;
    const std::string_view num = word.substr(std::min(prefix.size(), word.size()));
    auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), n);
    if (word.substr(0, prefix.size()) != prefix || ec != std::errc() || end != num.data() + num.size() || n < 1)
      throw bad("'" + std::string(word) + "' is not " + std::string(prefix) + "<positive number>");
    return n;
  };
  return LayoutChoice{parse_strategy(words[0]), degree(words[1], "U="), degree(words[2], "R="),
                      parse_rank_order(words[3]), parse_head_policy(words[4])};
}


}  // namespace cptune
