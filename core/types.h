#pragma once
// Vocabulary of DESIGN.md: dtypes, masks, strategies, head policies, rank orders, and the
// attention shape and mesh a Layout is built from.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace cptune {

enum class DType { bf16, fp16, fp32 };
enum class MaskKind { full, causal, sliding_window };
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
MaskKind parse_mask_kind(std::string_view s);
Strategy parse_strategy(std::string_view s);
HeadPolicy parse_head_policy(std::string_view s);
RankOrder parse_rank_order(std::string_view s);

// Query i attends to key j when: full: always; causal: j <= i;
// sliding window W: i - W < j <= i (causal, the last W keys including i itself).
struct Mask {
  MaskKind kind = MaskKind::full;
  int64_t window = 0;  // tokens; used by sliding_window only

  // The definition above, position by position (references and tests; kernels tile it).
  bool sees(int64_t i, int64_t j) const {
    switch (kind) {
      case MaskKind::full:
        return true;
      case MaskKind::causal:
        return j <= i;
      case MaskKind::sliding_window:
        return i - window < j && j <= i;
    }
    return false;
  }
};
std::string to_string(const Mask& m);  // "full", "causal", "sliding:4096"
Mask parse_mask(std::string_view s);   // accepts the same, and "sliding-window:W"

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

  int64_t total_tokens() const;  // sum of seq_lens (per sample)
  int64_t group_size() const { return q_heads / kv_heads; }  // Q heads per KV head
};

// The context-parallel group: world = ulysses x ring ranks; ranks_per_node (G) tells which
// links cross the network. A rank's node is rank / ranks_per_node.
struct Mesh {
  int64_t world = 1;
  int64_t ulysses = 1;
  int64_t ring = 1;
  RankOrder order = RankOrder::ulysses_inner;
  int64_t ranks_per_node = 1;
};

struct LayoutSpec {
  AttentionShape shape;
  Mesh mesh;
  Strategy strategy = Strategy::uaa;
  HeadPolicy head_policy = HeadPolicy::balanced;
};

// Strategy traits shared by layout, sim, executor and tuner.
bool uses_ulysses(Strategy s);       // has a seq->heads all-to-all (U may still be 1)
bool pads_classic(Strategy s);       // classic Ulysses: equal all-to-all, tokens padded, heads divisible
bool rotates_kv(Strategy s);         // ring rotation of K,V blocks
bool zigzag_chunks(Strategy s, const Mask& m);  // 2R chunks per sequence (causal load balance)

// Canonical U x R for strategies that fix it (ulysses/uaa: U=P; ring/zigzag/allgather: R=P);
// hybrids keep the mesh's. Throws Error when the mesh contradicts the strategy.
Mesh resolve_mesh(Strategy s, Mesh mesh);

}  // namespace cptune
