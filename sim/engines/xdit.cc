// xDiT (xdit-project/xDiT @175e0bf): xFuserArgs (xfuser/config/args.py) --ulysses_degree and
// --ring_degree; parallel_state.py calls yunchang's set_seq_parallel_pg without use_ulysses_low
// (Ulysses innermost); xFuserLongContextAttention (core/long_ctx_attention/hybrid/attn_layer.py)
// replaces the ring with xdit_ring_flash_attn_func, the basic ring only.
#include "sim/engines/xdit.h"

#include <fmt/format.h>

#include "sim/engines/rules.h"

namespace cptune::sim::engines {
namespace {

constexpr std::string_view kAttn = "xdit-project/xDiT @175e0bf, xfuser/core/long_ctx_attention/hybrid/attn_layer.py";
constexpr std::string_view kArgs = "xdit-project/xDiT @175e0bf, xfuser/config/args.py";

std::string rule(const LayoutChoice& c, const ShapeView& s) {
  // cptune's causal hybrid balances the ring by zigzag; xDiT's ring is "currently only support 'basic'".
  const std::string mask = c.strategy == Strategy::hybrid
                               ? mask_in(s, {MaskKind::full}, "the causal hybrid is zigzag; xDiT runs the basic ring only", kAttn)
                               : mask_in(s, {MaskKind::full, MaskKind::causal}, "xDiT takes is_causal only", kAttn);
  std::string heads = heads_multiple(s, c.ulysses, "_check_model_and_parallel_config, " + std::string(kArgs));
  return first_of({mask, one_sequence(s, "xDiT", kAttn), heads, seq_multiple(s, world(c), kAttn)});
}

std::string forward_only(const LayoutChoice&, const ShapeView&) {
  return cited("xDiT is an inference engine: xFuserLongContextAttention runs forward only", kAttn);
}

std::string config(const LayoutChoice& c, const ShapeView&, ConfigFormat f) {
  if (f == ConfigFormat::args) return fmt::format("--model MODEL --ulysses_degree {} --ring_degree {}", c.ulysses, c.ring);
  const Fields fields = {{"model", f == ConfigFormat::json ? "\"MODEL\"" : "MODEL"},
                         {"ulysses_degree", num(c.ulysses)},
                         {"ring_degree", num(c.ring)}};
  const std::string out = render(fields, f, "xFuserArgs");
  return f == ConfigFormat::python ? out + "  # MODEL: your model" : out;
}

}  // namespace

const Profile& xdit() {
  static const Profile p{"xdit",
                         "xdit-project/xDiT @175e0bf: xfuser/core/distributed/parallel_state.py, "
                         "core/long_ctx_attention/hybrid/attn_layer.py, model_executor/layers/usp.py, config/args.py",
                         {Strategy::ulysses, Strategy::ring, Strategy::hybrid},
                         false,
                         rule,
                         forward_only,
                         config,
                         {}};
  return p;
}

}  // namespace cptune::sim::engines
