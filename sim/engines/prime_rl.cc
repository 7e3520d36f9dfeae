// prime-rl (PrimeIntellect-ai/prime-rl @559b447): [model] cp and cp_style ("ring" | "ulysses")
// in packages/prime-rl-configs/src/prime_rl/configs/trainer.py. cp_style "ring" substitutes
// ring-flash-attn's llama3_flash_attn_varlen_func (all-gathered K/V, contiguous shards) with
// causal=True (trainer/models/layers/attn.py); "ulysses" is trainer/models/layers/ulysses_attn.py;
// utils/cp.py shard_for_cp splits the whole packed stream.
#include "sim/engines/prime_rl.h"

#include <fmt/format.h>

#include "sim/engines/rules.h"

namespace cptune::sim::engines {
namespace {

constexpr std::string_view kAttn = "PrimeIntellect-ai/prime-rl @559b447, src/prime_rl/trainer/models/layers/attn.py";
constexpr std::string_view kUlysses =
    "PrimeIntellect-ai/prime-rl @559b447, src/prime_rl/trainer/models/layers/ulysses_attn.py";
constexpr std::string_view kCp = "PrimeIntellect-ai/prime-rl @559b447, src/prime_rl/utils/cp.py";

std::string rule(const LayoutChoice& c, const ShapeView& s) {
  if (c.strategy == Strategy::ulysses) {
    // _all_to_all_seq_to_head asserts Hq % cp; K/V heads split, or are replicated when cp % Hkv == 0.
    const int64_t P = world(c);
    std::string heads;
    if (s.q_heads % P != 0) heads = cited(fmt::format("{} query heads do not split over cp {}", s.q_heads, P), kUlysses);
    else if (s.kv_heads % P != 0 && P % s.kv_heads != 0)
      heads = cited(fmt::format("{} key/value heads neither split over nor divide cp {}", s.kv_heads, P), kUlysses);
    return first_of({mask_in(s, {MaskKind::causal}, "the Ulysses path asserts is_causal", kUlysses), heads,
                     total_multiple(s, P, kCp)});
  }
  // The ring passes causal=True, and window_size=(sliding_window - 1, 0) for sliding windows.
  return first_of({mask_in(s, {MaskKind::causal, MaskKind::sliding_window}, "the ring attention is causal", kAttn),
                   total_multiple(s, world(c), kCp)});
}

std::string config(const LayoutChoice& c, const ShapeView&, ConfigFormat f) {
  const std::string_view style = c.strategy == Strategy::ulysses ? "ulysses" : "ring";
  if (f == ConfigFormat::args) return fmt::format("--model.cp {} --model.cp-style {}", world(c), style);
  if (f == ConfigFormat::json) return fmt::format("{{\"model\": {{\"cp\": {}, \"cp_style\": \"{}\"}}}}", world(c), style);
  // prime-rl is configured by TOML (docs/scaling.md); ParallelDims is internal and takes six fields.
  return fmt::format("[model]\ncp = {}\ncp_style = \"{}\"", world(c), style);
}

}  // namespace

const Profile& prime_rl() {
  static const Profile p{"prime-rl",
                         "PrimeIntellect-ai/prime-rl @559b447: packages/prime-rl-configs/src/prime_rl/configs/trainer.py, "
                         "src/prime_rl/utils/cp.py, trainer/parallel_dims.py, trainer/models/layers/{attn,ulysses_attn}.py, "
                         "docs/scaling.md",
                         {Strategy::allgather_kv, Strategy::ulysses},
                         false,
                         rule,
                         [](const LayoutChoice&, const ShapeView&) { return std::string(); },  // a trainer
                         config,
                         {}};
  return p;
}

}  // namespace cptune::sim::engines
