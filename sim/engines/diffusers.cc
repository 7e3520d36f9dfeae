// diffusers runs context parallelism inside its attention dispatcher:
// src/diffusers/models/attention_dispatch.py (_templated_context_parallel_attention and the
// Templated*Attention autograd functions), configured by ContextParallelConfig in
// src/diffusers/models/_modeling_parallel.py. Read at huggingface/diffusers @58eb52c (2026-08-23);
// PyPI 0.42.1 carries the same code (scripts/engine_conformance.py runs it).
#include "sim/engines/diffusers.h"

#include "sim/engines/rules.h"

namespace cptune::sim::engines {
namespace {

constexpr std::string_view kDispatch = "huggingface/diffusers @58eb52c, src/diffusers/models/attention_dispatch.py";
constexpr std::string_view kConfig = "huggingface/diffusers @58eb52c, src/diffusers/models/_modeling_parallel.py";

// ring_degree without ring_anything shards by EquipartitionSharder; ring_anything pads to the
// longest local length (TemplatedRingAnythingAttention).
bool ring_anything(const LayoutChoice& c, const ShapeView& s) {
  return c.strategy == Strategy::allgather_kv && !seq_multiple(s, c.ring, "").empty();
}

std::string rule(const LayoutChoice& c, const ShapeView& s) {
  // "if is_causal: raise ValueError(... not yet supported for templated attention)", and the same for enable_gqa.
  std::string why = first_of({mask_in(s, {MaskKind::full}, "_templated_context_parallel_attention raises on is_causal "
                                                            "and takes no other mask",
                                      kDispatch),
                              no_gqa(s, kDispatch), one_sequence(s, "diffusers", kConfig)});
  if (!why.empty()) return why;
  switch (c.strategy) {
    case Strategy::ulysses:  // TemplatedUlyssesAttention: EquipartitionSharder, heads reshaped by H // U
      return first_of({heads_multiple(s, c.ulysses, kDispatch),
                       seq_multiple(s, c.ulysses, "EquipartitionSharder; ulysses_anything takes any length, " +
                                                      std::string(kConfig))});
    case Strategy::uaa:  // TemplatedUlyssesAnythingAttention: _maybe_pad_qkv_head, PartitionAnythingSharder
      return first_of({head_pad(s.q_heads, c.ulysses, "query", kDispatch),
                       head_pad(s.kv_heads, c.ulysses, "key/value", kDispatch), seq_at_least(s, c.ulysses, kConfig)});
    case Strategy::allgather_kv:  // TemplatedRingAttention all-gathers K/V; ring_anything pads lengths
      return seq_at_least(s, c.ring, kConfig);
    default:
      return "strategy not run by diffusers";
  }
}

std::string forward_only(const LayoutChoice& c, const ShapeView& s) {
  if (c.strategy == Strategy::uaa)
    return cited("TemplatedUlyssesAnythingAttention.backward raises NotImplementedError", kDispatch);
  if (ring_anything(c, s)) return cited("TemplatedRingAnythingAttention.backward raises NotImplementedError", kDispatch);
  return "";
}

std::string config(const LayoutChoice& c, const ShapeView& s, ConfigFormat f) {
  const bool ring = c.strategy == Strategy::allgather_kv;
  Fields fields = {{ring ? "ring_degree" : "ulysses_degree", num(world(c))}};
  if (c.strategy == Strategy::uaa) fields.push_back({"ulysses_anything", "True"});
  if (ring_anything(c, s)) fields.push_back({"ring_anything", "True"});
  return render(fields, f, "ContextParallelConfig");
}

// UAA pads Q and K/V heads to a multiple of U and sends the pad heads through the all-to-all
// and the attention kernel (_maybe_pad_qkv_head).
AttentionShape wire(const LayoutChoice& c, const AttentionShape& s) {
  return c.strategy == Strategy::uaa ? with_padded_heads(s, c.ulysses) : s;
}

}  // namespace

const Profile& diffusers() {
  static const Profile p{"diffusers",
                         "huggingface/diffusers @58eb52c (PyPI 0.42.1): src/diffusers/models/_modeling_parallel.py, "
                         "models/attention_dispatch.py, hooks/context_parallel.py",
                         {Strategy::ulysses, Strategy::uaa, Strategy::allgather_kv},
                         false,  // init_device_mesh((ring, ulysses)): Ulysses innermost
                         rule,
                         forward_only,
                         config,
                         wire};
  return p;
}

}  // namespace cptune::sim::engines
