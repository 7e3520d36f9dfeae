// Megatron-LM over Transformer Engine: context_parallel_size and hierarchical_context_parallel_sizes
// (megatron/core/model_parallel_config.py), cp_comm_type (core/transformer/transformer_config.py),
// both at NVIDIA/Megatron-LM @d98e8a6; the attention is TE's
// transformer_engine/pytorch/attention/dot_product_attention/context_parallel.py
// (NVIDIA/TransformerEngine @d0067d0): p2p rotates K/V over load-balanced 2·CP chunks (zigzag),
// all_gather gathers K/V, a2a is Ulysses, a2a+p2p nests a2a (inner) in p2p.
#include "sim/engines/megatron.h"

#include <fmt/format.h>

#include "sim/engines/rules.h"

namespace cptune::sim::engines {
namespace {

constexpr std::string_view kTe =
    "NVIDIA/TransformerEngine @d0067d0, transformer_engine/pytorch/attention/dot_product_attention/context_parallel.py";
constexpr std::string_view kConfig = "NVIDIA/Megatron-LM @d98e8a6, megatron/core/transformer/transformer_config.py";

std::string_view comm_type(Strategy s) {
  switch (s) {
    case Strategy::allgather_kv:
      return "all_gather";
    case Strategy::ulysses:
      return "a2a";
    case Strategy::hybrid:
      return "a2a+p2p";
    default:
      return "p2p";
  }
}

std::string rule(const LayoutChoice& c, const ShapeView& s) {
  // assert not sliding_window_attn or cp_comm_type in ["a2a", "all_gather"]; TE runs no block masks.
  const bool window_ok = c.strategy == Strategy::ulysses || c.strategy == Strategy::allgather_kv;
  const std::string mask =
      window_ok ? mask_in(s, {MaskKind::full, MaskKind::causal, MaskKind::sliding_window}, "TE takes causal or a window",
                          kTe)
                : mask_in(s, {MaskKind::full, MaskKind::causal},
                          "sliding windows need cp_comm_type a2a or all_gather", kConfig);
  // DualChunkSwap: "sequence lengths to be, or are padded to be, divisible by (cp_size * 2)" for
  // every comm type; THD input pads each packed sequence the same way (pad_thd_sequences_for_cp).
  return first_of({mask, heads_multiple(s, c.ulysses, kTe), seq_multiple(s, 2 * world(c), kTe)});
}

std::string config(const LayoutChoice& c, const ShapeView& s, ConfigFormat f) {
  const std::string_view type = comm_type(c.strategy);
  const bool hier = c.strategy == Strategy::hybrid;
  if (f == ConfigFormat::args)
    return fmt::format("--context-parallel-size {} --cp-comm-type {}{}", world(c), type,
                       hier ? fmt::format(" --hierarchical-context-parallel-sizes {} {}", c.ulysses, c.ring) : "");
  if (f == ConfigFormat::json)
    return fmt::format("{{\"context_parallel_size\": {}, \"cp_comm_type\": \"{}\"{}}}", world(c), type,
                       hier ? fmt::format(", \"hierarchical_context_parallel_sizes\": [{}, {}]", c.ulysses, c.ring) : "");
  // __post_init__ computes kv_channels = hidden_size // num_attention_heads: the model fields
  // must be given (their defaults, 0, raise ZeroDivisionError).
  return fmt::format(
      "TransformerConfig(num_layers=NUM_LAYERS, hidden_size=HIDDEN_SIZE, num_attention_heads={}, num_query_groups={}, "
      "context_parallel_size={}, cp_comm_type=\"{}\"{})  # NUM_LAYERS, HIDDEN_SIZE: your model's",
      s.q_heads, s.kv_heads, world(c), type,
      hier ? fmt::format(", hierarchical_context_parallel_sizes=[{}, {}]", c.ulysses, c.ring) : "");
}

}  // namespace

const Profile& megatron() {
  static const Profile p{"megatron",
                         "NVIDIA/Megatron-LM @d98e8a6: megatron/core/model_parallel_config.py, "
                         "core/transformer/transformer_config.py, core/parallel_state.py, training/arguments.py; "
                         "NVIDIA/TransformerEngine @d0067d0: transformer_engine/pytorch/attention/dot_product_attention/"
                         "context_parallel.py",
                         {Strategy::ring_zigzag, Strategy::allgather_kv, Strategy::ulysses, Strategy::hybrid},
                         false,  // create_hierarchical_groups: level 0 (a2a) on consecutive ranks
                         rule,
                         [](const LayoutChoice&, const ShapeView&) { return std::string(); },  // a training framework
                         config,
                         {}};
  return p;
}

}  // namespace cptune::sim::engines
