#include "sim/constraints.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/error.h"
#include "core/strategy.h"

namespace cptune::sim {
namespace {

using S = Strategy;

// "" when every sequence's length is a multiple of d.
std::string seq_multiple(const ShapeView& s, int64_t d, std::string_view why) {
  for (int64_t len : s.seq_lens)
    if (len % d != 0) return fmt::format("sequence length {} is not a multiple of {} ({})", len, d, why);
  return "";
}

// "" when query and key/value heads split evenly over U Ulysses ranks.
std::string heads_multiple(const ShapeView& s, int64_t U) {
  if (U <= 1) return "";
  if (s.q_heads % U != 0) return fmt::format("{} query heads do not split over Ulysses degree {}", s.q_heads, U);
  if (s.kv_heads % U != 0) return fmt::format("{} key/value heads do not split over Ulysses degree {}", s.kv_heads, U);
  return "";
}

std::string first_of(std::initializer_list<std::string> reasons) {
  for (const std::string& r : reasons)
    if (!r.empty()) return r;
  return "";
}

bool causal(const ShapeView& s) { return s.mask.kind != MaskKind::full; }
int64_t world(const LayoutChoice& c) { return c.ulysses * c.ring; }

using Fields = std::vector<std::pair<std::string_view, std::string>>;  // name, Python value

// Fields as "a=1 b=True" (args), {"a": 1, "b": true} (json) or Name(a=1, b=True) (python).
std::string render(const Fields& fields, ConfigFormat format, std::string_view python_name) {
  std::string out;
  for (const auto& [name, value] : fields) {
    if (format == ConfigFormat::json) {
      const std::string v = value == "True" ? "true" : value == "False" ? "false" : value;
      out += (out.empty() ? "" : ", ") + fmt::format("\"{}\": {}", name, v);
    } else {
      out += (out.empty() ? "" : format == ConfigFormat::args ? " " : ", ") + fmt::format("{}={}", name, value);
    }
  }
  if (format == ConfigFormat::json) return "{" + out + "}";
  if (format == ConfigFormat::args) return out;
  return std::string(python_name) + "(" + out + ")";
}

std::string str(std::string_view s) { return fmt::format("\"{}\"", s); }
std::string num(int64_t v) { return std::to_string(v); }

struct Engine {
  std::string_view name;
  std::vector<Strategy> strategies;
  bool ring_inner = false;  // can the engine put ring ranks innermost?
  Constraints::Rule rule;
  std::function<std::string(const LayoutChoice&, const ShapeView&, ConfigFormat)> config;
};

// sglang diffusion (multimodal_gen): yunchang-style USP, --ulysses-degree x --ring-degree, the
// basic ring; Ulysses groups on consecutive ranks (use_ulysses_low=True).
Engine sglang() {
  return {"sglang", {S::ulysses, S::ring, S::hybrid}, false,
          [](const LayoutChoice& c, const ShapeView& s) {
            if (c.strategy == S::hybrid && causal(s))
              return std::string("sglang's USP ring is the basic ring; a causal hybrid here is zigzag");
            return first_of({heads_multiple(s, c.ulysses), seq_multiple(s, world(c), "sglang splits evenly")});
          },
          [](const LayoutChoice& c, const ShapeView&, ConfigFormat f) {
            if (f == ConfigFormat::args) return fmt::format("--ulysses-degree {} --ring-degree {}", c.ulysses, c.ring);
            return render({{"ulysses_degree", num(c.ulysses)}, {"ring_degree", num(c.ring)}}, f, "ServerArgs");
          }};
}

// diffusers ContextParallelConfig: ulysses_degree, ring_degree (its ring rotates K/V by
// all-gather: allgather-kv), ulysses_anything (UAA: any heads and lengths, ring_degree 1),
// ring_anything (any lengths, ulysses_degree 1). Its unified U x R mode all-gathers on the ring
// axis, a layout cptune does not model, so no hybrid is offered.
Engine diffusers() {
  return {"diffusers", {S::ulysses, S::uaa, S::allgather_kv}, false,
          [](const LayoutChoice& c, const ShapeView& s) {
            if (c.strategy == S::ulysses)
              return first_of({heads_multiple(s, c.ulysses), seq_multiple(s, c.ulysses, "use ulysses_anything")});
            return std::string();
          },
          [](const LayoutChoice& c, const ShapeView& s, ConfigFormat f) {
            const bool ring = c.strategy == S::allgather_kv;
            Fields fields = {{ring ? "ring_degree" : "ulysses_degree", num(world(c))}};
            if (c.strategy == S::uaa) fields.push_back({"ulysses_anything", "True"});
            if (ring && !seq_multiple(s, c.ring, "").empty()) fields.push_back({"ring_anything", "True"});
            return render(fields, f, "ContextParallelConfig");
          }};
}

// cache-dit ParallelismConfig: ulysses_size or ring_size (not both), Ulysses Anything through
// parallel_kwargs; its ring all-gathers K/V (ring_rotate_method "allgather").
Engine cache_dit() {
  return {"cache-dit", {S::ulysses, S::uaa, S::allgather_kv}, false,
          [](const LayoutChoice& c, const ShapeView& s) {
            if (c.strategy == S::ulysses)
              return first_of({heads_multiple(s, c.ulysses), seq_multiple(s, c.ulysses, "use ulysses anything")});
            if (c.strategy == S::allgather_kv) return seq_multiple(s, c.ring, "cache-dit's ring splits evenly");
            return std::string();
          },
          [](const LayoutChoice& c, const ShapeView&, ConfigFormat f) {
            const bool ring = c.strategy == S::allgather_kv, anything = c.strategy == S::uaa;
            const std::string size = ring ? "ring_size" : "ulysses_size";
            if (f == ConfigFormat::args)
              return fmt::format("{}={}{}", size, world(c), anything ? " experimental_ulysses_anything=True" : "");
            if (f == ConfigFormat::json)
              return fmt::format("{{\"{}\": {}{}}}", size, world(c),
                                 anything ? ", \"parallel_kwargs\": {\"experimental_ulysses_anything\": true}" : "");
            return fmt::format("ParallelismConfig({}={}{})", size, world(c),
                               anything ? ", parallel_kwargs={\"experimental_ulysses_anything\": True}" : "");
          }};
}

// xDiT / yunchang USP: LongContextAttention over set_seq_parallel_pg(U, R, ..., use_ulysses_low),
// ring_impl_type "basic" or "zigzag"; both rank orders.
Engine xdit() {
  return {"xdit", {S::ulysses, S::ring, S::ring_zigzag, S::hybrid}, true,
          [](const LayoutChoice& c, const ShapeView& s) {
            const bool zigzag = zigzag_chunks(c.strategy, s.mask);
            return first_of({heads_multiple(s, c.ulysses),
                             seq_multiple(s, zigzag ? 2 * world(c) : world(c), "yunchang splits evenly")});
          },
          [](const LayoutChoice& c, const ShapeView& s, ConfigFormat f) {
            const std::string impl = zigzag_chunks(c.strategy, s.mask) ? "zigzag" : "basic";
            const bool low = c.order == RankOrder::ulysses_inner;
            if (f == ConfigFormat::args)
              return fmt::format("--ulysses_degree {} --ring_degree {}", c.ulysses, c.ring);
            if (f == ConfigFormat::json)
              return render({{"ulysses_degree", num(c.ulysses)}, {"ring_degree", num(c.ring)},
                             {"ring_impl_type", str(impl)}, {"use_ulysses_low", low ? "True" : "False"}},
                            f, "");
            return fmt::format(
                "set_seq_parallel_pg({}, {}, rank, world_size, use_ulysses_low={}); "
                "LongContextAttention(ring_impl_type=\"{}\")",
                c.ulysses, c.ring, low ? "True" : "False", impl);
          }};
}

// Megatron-LM over Transformer Engine: cp_comm_type p2p (load-balanced 2·CP chunks: zigzag),
// all_gather, a2a (Ulysses), a2a+p2p with hierarchical_context_parallel_sizes [U, R] (a2a
// inner). Megatron cuts every sequence into 2·CP chunks, whatever the comm type.
Engine megatron() {
  return {"megatron", {S::ring_zigzag, S::allgather_kv, S::ulysses, S::hybrid}, false,
          [](const LayoutChoice& c, const ShapeView& s) {
            return first_of({heads_multiple(s, c.ulysses), seq_multiple(s, 2 * world(c), "Megatron splits 2·CP chunks")});
          },
          [](const LayoutChoice& c, const ShapeView&, ConfigFormat f) {
            std::string type = "p2p";
            if (c.strategy == S::allgather_kv) type = "all_gather";
            if (c.strategy == S::ulysses) type = "a2a";
            if (c.strategy == S::hybrid) type = "a2a+p2p";
            const bool hier = c.strategy == S::hybrid;
            if (f == ConfigFormat::args)
              return fmt::format("--context-parallel-size {} --cp-comm-type {}{}", world(c), type,
                                 hier ? fmt::format(" --hierarchical-context-parallel-sizes {} {}", c.ulysses, c.ring) : "");
            if (f == ConfigFormat::json)
              return fmt::format("{{\"context_parallel_size\": {}, \"cp_comm_type\": \"{}\"{}}}", world(c), type,
                                 hier ? fmt::format(", \"hierarchical_context_parallel_sizes\": [{}, {}]", c.ulysses, c.ring)
                                      : "");
            return fmt::format("TransformerConfig(context_parallel_size={}, cp_comm_type=\"{}\"{})", world(c), type,
                               hier ? fmt::format(", hierarchical_context_parallel_sizes=[{}, {}]", c.ulysses, c.ring) : "");
          }};
}

// prime-rl: PyTorch's experimental context parallel with the head-tail load balancer (zigzag),
// causal masks only (setup_cp_sharder).
Engine prime_rl() {
  return {"prime-rl", {S::ring_zigzag}, false,
          [](const LayoutChoice& c, const ShapeView& s) {
            if (!causal(s)) return std::string("prime-rl shards causal attention only");
            return seq_multiple(s, 2 * world(c), "head-tail load balancing");
          },
          [](const LayoutChoice& c, const ShapeView&, ConfigFormat f) {
            if (f == ConfigFormat::args) return fmt::format("cp={}", world(c));
            if (f == ConfigFormat::json) return fmt::format("{{\"cp\": {}}}", world(c));
            return fmt::format("ParallelDims(cp={})", world(c));
          }};
}

// ring-flash-attn: ring_flash_attn_func (ring), zigzag_ring_flash_attn_func (zigzag),
// llama3_flash_attn_varlen_func (all-gathers K/V: allgather-kv).
Engine ring_flash_attn() {
  return {"ring-flash-attn", {S::ring, S::ring_zigzag, S::allgather_kv}, false,
          [](const LayoutChoice& c, const ShapeView& s) {
            return seq_multiple(s, c.strategy == S::ring_zigzag ? 2 * world(c) : world(c), "each rank holds equal chunks");
          },
          [](const LayoutChoice& c, const ShapeView& s, ConfigFormat f) {
            std::string fn = "ring_flash_attn_func";
            if (c.strategy == S::ring_zigzag) fn = "zigzag_ring_flash_attn_func";
            if (c.strategy == S::allgather_kv) fn = "llama3_flash_attn_varlen_func";
            if (f == ConfigFormat::args) return fmt::format("function={} group_size={}", fn, world(c));
            if (f == ConfigFormat::json) return fmt::format("{{\"function\": \"{}\", \"group_size\": {}}}", fn, world(c));
            return fmt::format("{}(q, k, v, causal={}, group=cp_group)  # group of {} ranks", fn,
                               causal(s) ? "True" : "False", world(c));
          }};
}

const std::vector<Engine>& engines() {
  static const std::vector<Engine> all = {sglang(), diffusers(), cache_dit(), xdit(), megatron(), prime_rl(),
                                          ring_flash_attn()};
  return all;
}

const Engine& engine(std::string_view name) {
  for (const Engine& e : engines())
    if (e.name == name) return e;
  std::string names;
  for (std::string_view n : engine_names()) names += (names.empty() ? "" : ", ") + std::string(n);
  throw Error("--engine " + std::string(name) + " has no profile; engines: " + names);
}

}  // namespace

bool Constraints::selects(const LayoutChoice& c) const {
  return (strategies.empty() || std::find(strategies.begin(), strategies.end(), c.strategy) != strategies.end()) &&
         (!ulysses || c.ulysses == ulysses) && (!ring || c.ring == ring) && (!order || c.order == *order) &&
         (!head_policy || c.head_policy == *head_policy);
}

std::string Constraints::rule_refusal(const LayoutChoice& c, const ShapeView& shape) const {
  for (const Rule& rule : rules)
    if (std::string why = rule(c, shape); !why.empty()) return (engine.empty() ? "" : "engine " + engine + ": ") + why;
  return "";
}

std::string Constraints::refusal(const LayoutChoice& c, const ShapeView& shape) const {
  const std::string who = engine.empty() ? "" : "engine " + engine + ": ";
  if (!strategies.empty() && std::find(strategies.begin(), strategies.end(), c.strategy) == strategies.end())
    return who + "strategy " + std::string(to_string(c.strategy)) + " is not allowed";
  if (ulysses && c.ulysses != ulysses) return "--ulysses " + std::to_string(ulysses) + " asks for another U";
  if (ring && c.ring != ring) return "--ring " + std::to_string(ring) + " asks for another R";
  if (order && c.order != *order) return who + "rank order " + std::string(to_string(c.order)) + " is not allowed";
  if (head_policy && c.head_policy != *head_policy)
    return who + "head policy " + std::string(to_string(c.head_policy)) + " is not allowed";
  return rule_refusal(c, shape);
}

std::vector<Strategy> parse_strategy_list(std::string_view text) {
  std::vector<Strategy> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    out.push_back(parse_strategy(text.substr(start, comma - start)));
    start = comma + 1;
  }
  return out;
}

const std::vector<std::string_view>& engine_names() {
  static const std::vector<std::string_view> names = [] {
    std::vector<std::string_view> out;
    for (const Engine& e : engines()) out.push_back(e.name);
    return out;
  }();
  return names;
}

void apply_engine(Constraints& c, std::string_view name) {
  const Engine& e = engine(name);
  if (c.strategies.empty()) {
    c.strategies = e.strategies;
  } else {
    std::vector<Strategy> both;
    for (Strategy s : c.strategies)
      if (std::find(e.strategies.begin(), e.strategies.end(), s) != e.strategies.end()) both.push_back(s);
    if (both.empty()) {
      std::string can;
      for (Strategy s : e.strategies) can += (can.empty() ? "" : ",") + std::string(to_string(s));
      throw Error("--engine " + std::string(name) + " runs none of the strategies given with --strategy; it runs " + can);
    }
    c.strategies = both;
  }
  if (!e.ring_inner) {
    if (c.order == RankOrder::ring_inner)
      throw Error("--engine " + std::string(name) + " puts Ulysses ranks innermost; drop --order ring-inner");
    c.order = RankOrder::ulysses_inner;
  }
  if (c.head_policy == HeadPolicy::kv_aligned)
    throw Error("--engine " + std::string(name) + " splits heads contiguously (balanced); drop --head-policy kv-aligned");
  c.head_policy = HeadPolicy::balanced;
  c.engine = e.name;
  c.rules.push_back(e.rule);
}

ConfigFormat parse_config_format(std::string_view text) {
  if (text == "args") return ConfigFormat::args;
  if (text == "json") return ConfigFormat::json;
  if (text == "python") return ConfigFormat::python;
  throw Error("--format " + std::string(text) + " is not one; use args, json or python");
}

std::string engine_config(std::string_view name, const LayoutChoice& c, const ShapeView& shape, ConfigFormat format) {
  const Engine& e = engine(name);
  Constraints only;
  apply_engine(only, name);
  if (std::string why = only.refusal(c, shape); !why.empty())
    throw Error(to_string(c) + " cannot be expressed for " + std::string(e.name) + ": " + why);
  return e.config(c, shape, format);
}

}  // namespace cptune::sim
