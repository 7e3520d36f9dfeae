// vLLM-Omni's diffusion sequence parallelism: DiffusionParallelConfig (vllm_omni/diffusion/data.py
// @0027c20a: ulysses_degree, ring_degree, allgather_degree, ulysses_mode "strict" | "advanced_uaa"),
// the strategy selection in vllm_omni/diffusion/attention/parallel/factory.py (@2166eeaf: all-gather
// K/V, else Ulysses (with the ring when ring_degree > 1), else the ring), Ulysses and UAA in
// parallel/ulysses.py (@d5494000), the ring in parallel/ring.py (@1b54d710: ring_flash_attn_func,
// the basic P2P ring), and the serve flags in vllm_omni/entrypoints/cli/serve.py (@f55beb09).
#include "sim/engines/vllm_omni.h"

#include <fmt/format.h>

#include "sim/engines/rules.h"

namespace cptune::sim::engines {
namespace {

constexpr std::string_view kFactory =
    "vllm-project/vllm-omni @2166eeaf, vllm_omni/diffusion/attention/parallel/factory.py";
constexpr std::string_view kUlysses =
    "vllm-project/vllm-omni @d5494000, vllm_omni/diffusion/attention/parallel/ulysses.py";
constexpr std::string_view kRing = "vllm-project/vllm-omni @1b54d710, vllm_omni/diffusion/attention/parallel/ring.py";
constexpr std::string_view kData = "vllm-project/vllm-omni @0027c20a, vllm_omni/diffusion/data.py";

std::string rule(const LayoutChoice& c, const ShapeView& s) {
  std::string mask;
  if (c.strategy == Strategy::allgather_kv)  // "AllGather-KV SP only supports non-causal attention."
    mask = mask_in(s, {MaskKind::full}, "all-gather K/V raises on causal", kFactory);
  else if (c.strategy == Strategy::hybrid)  // cptune's causal hybrid is zigzag; the ring here is the basic ring
    mask = mask_in(s, {MaskKind::full}, "the causal hybrid is zigzag; vLLM-Omni's ring is basic", kRing);
  else
    mask = mask_in(s, {MaskKind::full, MaskKind::causal}, "the ring passes window_size=(-1, -1)", kRing);
  const std::string common = first_of({mask, one_sequence(s, "vLLM-Omni", kData)});
  if (!common.empty()) return common;
  switch (c.strategy) {
    case Strategy::ulysses:  // strict: "requires joint Q/KV heads divisible by ulysses_degree"
    case Strategy::hybrid:
      return first_of({heads_multiple(s, c.ulysses, kUlysses), seq_multiple(s, world(c), kData)});
    case Strategy::uaa:  // advanced_uaa pads K/V heads to a multiple of U and Q in ratio: any heads, any length
      return seq_at_least(s, c.ulysses, kUlysses);
    case Strategy::ring:
    case Strategy::allgather_kv:
      return seq_multiple(s, world(c), kData);
    default:
      return "strategy not run by vLLM-Omni";
  }
}

std::string forward_only(const LayoutChoice&, const ShapeView&) {
  return cited("vLLM-Omni's diffusion engine serves inference (no backward)", kFactory);
}

std::string config(const LayoutChoice& c, const ShapeView&, ConfigFormat f) {
  const bool uaa = c.strategy == Strategy::uaa;
  if (f == ConfigFormat::args) {
    if (c.strategy == Strategy::allgather_kv)  // serve has no flag for it (vllm_omni/entrypoints/cli/serve.py)
      return fmt::format("allgather_degree={}", world(c));
    std::string out;
    if (c.ulysses > 1) out += fmt::format("--ulysses-degree {}", c.ulysses);
    if (c.ring > 1) out += fmt::format("{}--ring-degree {}", out.empty() ? "" : " ", c.ring);
    if (uaa) out += " --ulysses-mode advanced_uaa";
    return out;
  }
  Fields fields;
  if (c.strategy == Strategy::allgather_kv) fields.push_back({"allgather_degree", num(world(c))});
  if (c.ulysses > 1) fields.push_back({"ulysses_degree", num(c.ulysses)});
  if (c.ring > 1) fields.push_back({"ring_degree", num(c.ring)});
  if (uaa) fields.push_back({"ulysses_mode", quoted("advanced_uaa")});
  return render(fields, f, "DiffusionParallelConfig");
}

// advanced_uaa pads K/V heads to ceil(Hkv/U)·U and Q heads to the same multiple of the group,
// and sends and computes the pad heads (_UlyssesHeadPlan).
AttentionShape wire(const LayoutChoice& c, const AttentionShape& s) {
  AttentionShape out = s;
  if (c.strategy == Strategy::uaa) {
    out.kv_heads = padded_heads(s.kv_heads, c.ulysses);
    out.q_heads = out.kv_heads * (s.q_heads / s.kv_heads);
  }
  return out;
}

}  // namespace

const Profile& vllm_omni() {
  static const Profile p{"vllm-omni",
                         "vllm-project/vllm-omni: vllm_omni/diffusion/data.py @0027c20a, "
                         "diffusion/attention/parallel/factory.py @2166eeaf, parallel/ulysses.py @d5494000, "
                         "parallel/ring.py @1b54d710, entrypoints/cli/serve.py @f55beb09",
                         {Strategy::ulysses, Strategy::uaa, Strategy::ring, Strategy::allgather_kv, Strategy::hybrid},
                         false,
                         rule,
                         forward_only,
                         config,
                         wire};
  return p;
}

}  // namespace cptune::sim::engines
