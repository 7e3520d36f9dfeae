// cache-dit: ParallelismConfig (src/cache_dit/distributed/config.py) drives its own copy of the
// templated context-parallel attention (distributed/core/_templated_{ulysses,ring,usp}.py,
// _distributed_primitives.py) behind attention/backends/register.py. Read at vipshop/cache-dit
// @f86744a (2026-08-21); PyPI 1.5.3 carries the same code.
#include "sim/engines/cache_dit.h"

#include <fmt/format.h>

#include "core/strategy.h"
#include "sim/engines/rules.h"

namespace cptune::sim::engines {
namespace {

constexpr std::string_view kRegister = "vipshop/cache-dit @f86744a, src/cache_dit/attention/backends/register.py";
constexpr std::string_view kPrimitives =
    "vipshop/cache-dit @f86744a, src/cache_dit/distributed/core/_distributed_primitives.py";
constexpr std::string_view kConfig = "vipshop/cache-dit @f86744a, src/cache_dit/distributed/config.py";

std::string rule(const LayoutChoice& c, const ShapeView& s) {
  // "Causal attention is not yet supported for templated attention"; GQA only with a model's
  // cp_gqa_strategy under pure Ulysses, which cptune does not model (kv-aligned is refused).
  std::string why = first_of({mask_in(s, {MaskKind::full}, "cache-dit's templated attention raises on is_causal", kRegister),
                              no_gqa(s, kRegister), one_sequence(s, "cache-dit", kConfig)});
  if (!why.empty()) return why;
  // Every Ulysses all-to-all pads heads (_maybe_pad_qkv_head, assert H_PAD < NEW_H_LOCAL).
  const std::string heads = first_of({head_pad(s.q_heads, c.ulysses, "query", kPrimitives),
                                      head_pad(s.kv_heads, c.ulysses, "key/value", kPrimitives)});
  switch (c.strategy) {
    case Strategy::ulysses:  // equal shards: S % U
      return first_of({heads, seq_multiple(s, c.ulysses, kPrimitives)});
    case Strategy::uaa:  // ulysses_anything: any length of at least one token per rank, ring 1
      return first_of({heads, seq_at_least(s, c.ulysses, kPrimitives)});
    case Strategy::ring:  // _RingP2PComm.send_recv_kv: the P2P ring, equal shards
      return seq_multiple(s, c.ring, kPrimitives);
    case Strategy::hybrid:  // USPAttention: Ulysses all-to-all, then the P2P ring over (ring, ulysses) mesh
      return first_of({heads, seq_multiple(s, world(c), kPrimitives)});
    default:
      return "strategy not run by cache-dit";
  }
}

std::string forward_only(const LayoutChoice&, const ShapeView&) {
  return cited("the Ulysses, ring and USP attention backward passes raise NotImplementedError",
               "vipshop/cache-dit @f86744a, src/cache_dit/distributed/core/_templated_{ulysses,ring,usp}.py");
}

std::string config(const LayoutChoice& c, const ShapeView&, ConfigFormat f) {
  Fields fields;
  if (c.ulysses > 1) fields.push_back({"ulysses_size", num(c.ulysses)});
  if (c.ring > 1) fields.push_back({"ring_size", num(c.ring)});
  if (c.strategy == Strategy::uaa) fields.push_back({"ulysses_anything", "True"});
  return render(fields, f, "ParallelismConfig");
}

// The pad heads travel and are computed.
AttentionShape wire(const LayoutChoice& c, const AttentionShape& s) {
  return uses_ulysses(c.strategy) ? with_padded_heads(s, c.ulysses) : s;
}

}  // namespace

const Profile& cache_dit() {
  static const Profile p{"cache-dit",
                         "vipshop/cache-dit @f86744a (PyPI 1.5.3): src/cache_dit/distributed/config.py, "
                         "distributed/core/_modeling_parallel.py, _distributed_primitives.py, "
                         "_templated_{ring,ulysses,usp}.py, attention/backends/register.py",
                         {Strategy::ulysses, Strategy::uaa, Strategy::ring, Strategy::hybrid},
                         false,  // mesh (ring, ulysses[, tp]): Ulysses innermost
                         rule,
                         forward_only,
                         config,
                         wire};
  return p;
}

}  // namespace cptune::sim::engines
