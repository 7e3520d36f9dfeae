// SGLang's diffusion runtime (python/sglang/multimodal_gen): ServerArgs (runtime/server_args.py
// @011b8cad) sets --ulysses-degree x --ring-degree; layers/usp.py (@008b79d2) runs the Ulysses
// all-to-all and PyTorch's _templated_ring_attention with enable_load_balance = False (the basic
// ring); distributed/sp_shard.py (@443cd954) shards the sequence.
#include "sim/engines/sglang.h"

#include <fmt/format.h>

#include "sim/engines/rules.h"

namespace cptune::sim::engines {
namespace {

constexpr std::string_view kUsp = "sgl-project/sglang @008b79d2, python/sglang/multimodal_gen/runtime/layers/usp.py";
constexpr std::string_view kShard =
    "sgl-project/sglang @443cd954, python/sglang/multimodal_gen/runtime/distributed/sp_shard.py";

std::string rule(const LayoutChoice& c, const ShapeView& s) {
  // attn_callable_adapter: "We ignore the dropout_p and is_causal passed by
  // _templated_ring_attention": every ring step gets the layer's one causal flag.
  const bool ring = c.ring > 1;
  std::string why = ring ? mask_in(s, {MaskKind::full}, "the ring adapter ignores the per-step is_causal", kUsp)
                         : mask_in(s, {MaskKind::full, MaskKind::causal}, "the local attention takes is_causal only", kUsp);
  return first_of({why, one_sequence(s, "sglang", kShard), heads_multiple(s, c.ulysses, kUsp),
                   seq_multiple(s, world(c), kShard)});
}

std::string forward_only(const LayoutChoice&, const ShapeView&) {
  return cited("SGLang's diffusion runtime serves inference; its sequence-parallel layers have no backward", kUsp);
}

std::string config(const LayoutChoice& c, const ShapeView&, ConfigFormat f) {
  // _adjust_parallelism derives sp_degree from num_gpus; without --num-gpus P it is 1 and
  // _validate_parallelism refuses ulysses x ring != sp_degree (server_args.py @011b8cad).
  if (f == ConfigFormat::args)
    return fmt::format("--model-path MODEL_PATH --num-gpus {} --ulysses-degree {} --ring-degree {}", world(c),
                       c.ulysses, c.ring);
  const Fields fields = {{"model_path", f == ConfigFormat::json ? "\"MODEL_PATH\"" : "MODEL_PATH"},
                         {"num_gpus", num(world(c))},
                         {"ulysses_degree", num(c.ulysses)},
                         {"ring_degree", num(c.ring)}};
  const std::string out = render(fields, f, "ServerArgs");
  return f == ConfigFormat::python ? out + "  # MODEL_PATH: your model" : out;
}

}  // namespace

const Profile& sglang() {
  static const Profile p{"sglang",
                         "sgl-project/sglang: python/sglang/multimodal_gen/runtime/server_args.py @011b8cad, "
                         "layers/usp.py @008b79d2, distributed/yunchang.py @1cc37dbf, distributed/sp_shard.py @443cd954",
                         {Strategy::ulysses, Strategy::ring, Strategy::hybrid},
                         false,  // set_seq_parallel_pg_by_sp_groups(..., use_ulysses_low=True): Ulysses innermost
                         rule,
                         forward_only,
                         config,
                         {}};
  return p;
}

}  // namespace cptune::sim::engines
