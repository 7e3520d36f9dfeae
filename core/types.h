#pragma once
// Vocabulary of docs/design.md: dtypes, masks, strategies, head policies, rank orders, and the
// attention shape, cluster, layout choice and phases every layer (sim, backends, db, tuner,
// the C ABI, every JSON and CSV) uses unchanged.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/block_mask.h"

namespace cptune {

enum class DType { bf16, fp16, fp32 };
enum class MaskKind { full, causal, sliding_window, blocks };
enum class Strategy { ulysses, uaa, ring, ring_zigzag, allgather_kv, hybrid, hybrid_uaa };
enum class HeadPolicy { balanced, kv_aligned };
enum class RankOrder { ulysses_inner, ring_inner };

inline constexpr Strategy kAllStrategies[] = {Strategy::ulysses,      Strategy::uaa,
                                              Strategy::ring,         Strategy::ring_zigzag,
                                              Strategy::allgather_kv, Strategy::hybrid,
                                              Strategy::hybrid_uaa};

int64_t dtype_bytes(DType dtype);

// Names as the CLI, JSON and the store spell them ("bf16", "causal", "hybrid-uaa",
// "kv-aligned", "ulysses-inner"). parse_* throws Error naming the bad value and the choices.
std::string_view to_string(DType v);
std::string_view to_string(MaskKind v);
std::string_view to_string(Strategy v);
std::string_view to_string(HeadPolicy v);
std::string_view to_string(RankOrder v);
DType parse_dtype(std::string_view s);
Strategy parse_strategy(std::string_view s);
HeadPolicy parse_head_policy(std::string_view s);
RankOrder parse_rank_order(std::string_view s);

// Query i attends to key j (positions in a sequence of len tokens) when: full: always; causal:
// j <= i; sliding window W: i - W < j <= i (causal, the last W keys including i itself);
// blocks: the block table says so (core/block_mask.h: the sequence cut into N equal blocks).
struct Mask {
  MaskKind kind = MaskKind::full;
  int64_t window = 0;                        // tokens; used by sliding_window only
  std::shared_ptr<const BlockTable> blocks;  // blocks only (shared, never modified)

  Mask(MaskKind k = MaskKind::full, int64_t w = 0, std::shared_ptr<const BlockTable> b = {})
      : kind(k), window(w), blocks(std::move(b)) {}

  // Masks are equal when they see the same pairs: the window matters only for sliding windows,
  // the table's cells (not its name) only for block masks.
  bool operator==(const Mask& o) const {
    if (kind != o.kind) return false;
    if (kind == MaskKind::sliding_window) return window == o.window;
    if (kind == MaskKind::blocks) return blocks == o.blocks || (blocks && o.blocks && *blocks == *o.blocks);
    return true;
  }
  // The definition above, position by position (references and tests; kernels tile it).
  bool sees(int64_t i, int64_t j, int64_t len) const {
    switch (kind) {
      case MaskKind::full:
        return true;
      case MaskKind::causal:
        return j <= i;
      case MaskKind::sliding_window:
        return i - window < j && j <= i;
      case MaskKind::blocks:
        return blocks->sees(len, i, j);
    }
    return false;
  }
};
// "full", "causal", "sliding:4096", a pattern's text ("star:16") or a table's inline text
// ("blocks:4:C.../FC../F.C./F..C"): every form parse_mask reads back.
std::string to_string(const Mask& m);
// A block mask of the table (shared, never modified).
Mask block_mask(BlockTable table);
// True when parse_mask would read s as a table file ("blocks:FILE", not the inline "blocks:N:ROWS").
bool names_table_file(std::string_view s);
// Reads every form to_string writes, "sliding-window:W", and "blocks:FILE" (a table file,
// core/block_mask.h). Throws Error naming the bad text.
Mask parse_mask(std::string_view s);

// Sequence lists as every layer spells them: "77,4097". parse throws Error naming the text
// (empty, not a number, a length below 1); sum_tokens adds them up (Error if the sum leaves
// 64 bits).
std::string seq_lens_text(std::span<const int64_t> seq_lens);
std::vector<int64_t> parse_seq_lens(std::string_view text);
int64_t sum_tokens(std::span<const int64_t> seq_lens);

// The largest shape and cluster cptune models (README "Limits"). Every byte and FLOP count of
// a shape within them fits in 64 bits; anything larger is refused with Error, never wrapped.
inline constexpr int64_t kMaxWorld = int64_t(1) << 20;      // ranks
inline constexpr int64_t kMaxTokens = int64_t(1) << 40;     // per sample, packed sequences together; sliding window
inline constexpr int64_t kMaxSequences = int64_t(1) << 20;  // packed sequences per sample
inline constexpr int64_t kMaxBatch = int64_t(1) << 20;
inline constexpr int64_t kMaxHeads = int64_t(1) << 20;      // query heads and kv heads
inline constexpr int64_t kMaxHeadDim = int64_t(1) << 16;    // D and Dv

// One attention call. seq_lens has one entry for a plain batch; several for a packed (varlen)
// batch of independent sequences, each split over the ranks on its own (cu_seqlens semantics:
// no token attends across sequences). Positions for masks are per sequence.
struct AttentionShape {
  int64_t batch = 1;
  std::vector<int64_t> seq_lens;
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;    // D, of Q and K
  int64_t v_head_dim = 0;  // Dv, of V and O
  DType dtype = DType::bf16;
  Mask mask;

  int64_t total_tokens() const { return sum_tokens(seq_lens); }  // per sample
  int64_t group_size() const { return q_heads / kv_heads; }     // Q heads per KV head
  bool operator==(const AttentionShape&) const = default;
};

// "bf16 S=77,4097 B=1 Hq=32 Hkv=8 D=128 Dv=128 causal" for tables, messages and logs.
std::string to_string(const AttentionShape& shape);

// A shape that borrows its sequence lengths: what a lookup query passes without allocating.
struct ShapeView {
  int64_t batch = 1;
  std::span<const int64_t> seq_lens;
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t v_head_dim = 0;
  DType dtype = DType::bf16;
  Mask mask;

  int64_t total_tokens() const { return sum_tokens(seq_lens); }
};
// The one shape check every entry point (layout, store, lookup) runs: throws Error naming the
// first size of shape (or world) outside [1, its limit above], a sum of sequence lengths beyond
// kMaxTokens, or query heads that are not a multiple of kv heads (GQA). kv_heads and v_head_dim
// must be set (not 0).
void check_limits(const ShapeView& shape);
void check_world_limit(int64_t world);
ShapeView view_of(const AttentionShape& shape);
AttentionShape shape_of(const ShapeView& view);
bool same_shape(const ShapeView& a, const ShapeView& b);
// Shapes of one family differ only in their sequence lengths (the lookup's "nearest" answer
// comes from the same family).
bool same_family(const ShapeView& a, const ShapeView& b);
// 64-bit keys computed from the fields without allocating: equal shapes have equal keys (the
// lookup still compares fields, so a collision costs a probe, never a wrong answer).
uint64_t family_hash(const ShapeView& shape);  // every field but the sequence lengths
uint64_t shape_hash(const ShapeView& shape);   // the family's key extended by the sequence lengths
// The ranks of the context-parallel group and how they sit on nodes: rank p is on node
// p / ranks_per_node (G). Nodes are derived, never stored.
struct Cluster {
  int64_t world = 1;
  int64_t ranks_per_node = 1;

  int64_t nodes() const { return (world + ranks_per_node - 1) / ranks_per_node; }
  int64_t node_of(int64_t rank) const { return rank / ranks_per_node; }
  bool operator==(const Cluster&) const = default;
};

// One point of the search space: a strategy on a U x R mesh (world = ulysses x ring) with a
// rank order and a head policy. The five fields every layer names a layout by.
struct LayoutChoice {
  Strategy strategy = Strategy::uaa;
  int64_t ulysses = 1;
  int64_t ring = 1;
  RankOrder order = RankOrder::ulysses_inner;
  HeadPolicy head_policy = HeadPolicy::balanced;

  bool operator==(const LayoutChoice&) const = default;
};
// "hybrid-uaa U=4 R=4 ring-inner kv-aligned": tables, messages and logs. parse reads the same
// text back and throws Error naming the part it cannot read.
std::string to_string(const LayoutChoice& c);
LayoutChoice parse_layout_choice(std::string_view text);

// What Layout::build lays out.
struct LayoutSpec {
  AttentionShape shape;
  Cluster cluster;
  LayoutChoice choice;
};

// Strategy traits, the mesh rule (resolve) and the phase plans: core/strategy.h.

// The phases of one attention call, forward then backward: the names the simulator predicts,
// the executor measures, the store keeps and every JSON/CSV prints.
enum class Phase {
  gather,          // UAA: all-gather of per-rank sequence lengths
  qkv,             // Ulysses all-to-all(-v) of Q, K, V
  allgather,       // allgather-kv: all-gather of K, V
  attention,       // attention; with a ring, the R steps of compute overlapped with K,V rotation
  o,               // Ulysses all-to-all of O back to the token owners
  grad_o,          // backward: all-to-all of dO to the head owners
  attention_bwd,   // backward attention; a ring rotates K,V and dK,dV
  grad_qkv,        // backward: all-to-all of dQ, dK, dV back to the token owners
  reduce_scatter,  // allgather-kv backward: reduce-scatter of dK, dV
};
inline constexpr int kPhaseCount = 9;
inline constexpr Phase kAllPhases[kPhaseCount] = {Phase::gather,        Phase::qkv,      Phase::allgather,
                                                  Phase::attention,     Phase::o,        Phase::grad_o,
                                                  Phase::attention_bwd, Phase::grad_qkv, Phase::reduce_scatter};
inline constexpr bool is_backward(Phase p) { return static_cast<int>(p) >= static_cast<int>(Phase::grad_o); }
std::string_view to_string(Phase p);  // "gather", "qkv", "allgather", "attention", "o", "grad-o", ...
Phase parse_phase(std::string_view s);

// Which passes of an attention call: the forward, the backward alone, or both (a training
// step). Named "fwd", "bwd", "fwd+bwd"; parse also reads "fwd-bwd", the simulator's first
// spelling, and throws Error naming the text otherwise.
enum class Pass { forward, backward, forward_backward };
inline constexpr bool has_forward(Pass p) { return p != Pass::backward; }
inline constexpr bool has_backward(Pass p) { return p != Pass::forward; }
std::string_view to_string(Pass p);
Pass parse_pass(std::string_view s);

// Where UAA's per-rank sequence lengths travel before its all-to-all-v: a host channel (Gloo,
// also beside NCCL; no device-to-host sync), or the device followed by a copy back and a sync.
enum class MetadataChannel { cpu, device };
std::string_view to_string(MetadataChannel m);  // "cpu", "device"
MetadataChannel parse_metadata_channel(std::string_view s);

}  // namespace cptune
