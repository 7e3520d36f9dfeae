#include "tuner/cli/shape_options.h"

#include <charconv>

#include <fmt/format.h>
#include <iostream>

#include "core/error.h"
#include "core/strategy.h"

namespace po = boost::program_options;

namespace cptune::cli {

void add_shape_options(po::options_description& desc, ShapeArgs& a) {
  desc.add_options()
      ("seq", po::value(&a.seq), "sequence length in tokens (4097, 32k, 1M; k = 1024)")
      ("seq-list", po::value(&a.seq_list), "packed batch of independent sequences, e.g. 77,4097")
      ("batch", po::value(&a.batch)->default_value(1), "batch size")
      ("heads", po::value(&a.heads), "query heads Hq")
      ("kv-heads", po::value(&a.kv_heads), "key/value heads Hkv (default: Hq)")
      ("head-dim", po::value(&a.head_dim)->default_value(128), "head dim D of Q and K")
      ("v-head-dim", po::value(&a.v_head_dim), "head dim Dv of V and O (default: D)")
      ("dtype", po::value(&a.dtype)->default_value("bf16"), "bf16, fp16 or fp32")
      ("mask", po::value(&a.mask)->default_value("full"),
       ("full, causal, sliding:W, a block pattern (" + block_pattern_usages() +
        "), blocks:FILE or blocks:N:ROWS; `cptune mask show MASK` draws it").c_str());
}

void add_strategy_options(po::options_description& desc, StrategyArgs& a) {
  desc.add_options()
      ("strategy", po::value(&a.strategy)->default_value("uaa"),
       "ulysses, uaa, ring, ring-zigzag, allgather-kv, hybrid, hybrid-uaa (default uaa)")
      ("head-policy", po::value(&a.head_policy)->default_value("balanced"), "balanced or kv-aligned")
      ("json", po::bool_switch(&a.json), "print JSON instead of a table");
}

LayoutSpec to_spec(const ShapeArgs& shape, const MeshArgs& mesh, const StrategyArgs& strategy) {
  const Cluster cluster = to_cluster(mesh);
  // The degrees as given: Layout::build resolves them (core/strategy.h), once.
  const LayoutChoice choice{parse_strategy(strategy.strategy), mesh.ulysses, mesh.ring,
                            mesh.order.empty() ? RankOrder::ulysses_inner : parse_rank_order(mesh.order),
                            parse_head_policy(strategy.head_policy)};
  const AttentionShape s = to_shape(shape);  // its errors name their own flags
  try {
    // Layout::build resolves the choice; checked here too so that a bad mesh names its flags.
    (void)resolve(choice, cluster);
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " (set by --strategy, --world, --ulysses and --ring)");
  }
  return {s, cluster, choice};
}

void add_constraint_options(po::options_description& desc, ConstraintArgs& a, MeshArgs* layout) {
  std::string engines;
  for (std::string_view e : sim::engine_names()) engines += (engines.empty() ? "" : ", ") + std::string(e);
  desc.add_options()
      ("engine", po::value(&a.engine), ("only layouts this engine can run, answered in its terms: " + engines).c_str())
      ("strategy", po::value(&a.strategies), "only these strategies, e.g. ulysses,hybrid")
      ("head-policy", po::value(&a.head_policy), "only this head policy: balanced or kv-aligned");
  if (layout)
    desc.add_options()
        ("ulysses", po::value(&layout->ulysses), "only this Ulysses degree U")
        ("ring", po::value(&layout->ring), "only this ring degree R")
        ("order", po::value(&layout->order), "only this rank order: ulysses-inner or ring-inner");
}

sim::Constraints to_constraints(const ConstraintArgs& a, const MeshArgs& layout) {
  sim::Constraints c;
  if (!a.strategies.empty()) c.strategies = sim::parse_strategy_list(a.strategies);
  if (layout.ulysses < 0 || layout.ring < 0)
    throw Error("--ulysses and --ring must be at least 1 (" + std::to_string(layout.ulysses) + ", " +
                std::to_string(layout.ring) + " given)");
  c.ulysses = layout.ulysses;
  c.ring = layout.ring;
  if (!layout.order.empty()) c.order = parse_rank_order(layout.order);
  if (!a.head_policy.empty()) c.head_policy = parse_head_policy(a.head_policy);
  if (!a.engine.empty()) sim::apply_engine(c, a.engine);
  return c;
}

void add_mesh_options(po::options_description& desc, MeshArgs& a) {
  desc.add_options()
      ("world", po::value(&a.world), "ranks P in the context-parallel group")
      ("ulysses", po::value(&a.ulysses), "Ulysses degree U (hybrids; U x R = P)")
      ("ring", po::value(&a.ring), "ring degree R (hybrids; U x R = P)")
      ("order", po::value(&a.order), "rank order: ulysses-inner (default) or ring-inner")
      ("ranks-per-node", po::value(&a.ranks_per_node), "ranks per node G (default: all on one node)");
}

int64_t parse_count(const std::string& text, const std::string& what) {
  int64_t value = 0;
  const char* begin = text.data();
  const char* end = begin + text.size();
  auto [ptr, ec] = std::from_chars(begin, end, value);
  int64_t scale = 1;
  if (ec == std::errc() && ptr + 1 == end) {
    switch (*ptr) {
      case 'k': case 'K': scale = int64_t{1} << 10; break;
      case 'm': case 'M': scale = int64_t{1} << 20; break;
      case 'g': case 'G': scale = int64_t{1} << 30; break;
      default: scale = 0;
    }
    ++ptr;
  }
  if (ec != std::errc() || ptr != end || scale == 0 || value < 0 || value > INT64_MAX / scale)
    throw Error("bad " + what + " '" + (text.size() <= 100 ? text : text.substr(0, 100) + "...") +
                "'; write a whole number, optionally with k, M or G (x1024)");
  return value * scale;
}

std::vector<int64_t> parse_count_list(const std::string& text, const std::string& what) {
  std::vector<int64_t> out;
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    out.push_back(parse_count(item, what));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// "a", "a:b" (x2), "a:b:xF" or "a:b:+N"; a and b as parse_count reads them (32k, 1M).
std::vector<int64_t> parse_range(const std::string& text, const std::string& what) {
  const size_t first = text.find(':');
  if (first == std::string::npos) return {parse_count(text, what)};
  const size_t second = text.find(':', first + 1);
  const int64_t lo = parse_count(text.substr(0, first), what + " range start");
  const int64_t hi = parse_count(text.substr(first + 1, second == std::string::npos ? std::string::npos : second - first - 1),
                                 what + " range end");
  const std::string step = second == std::string::npos ? "x2" : text.substr(second + 1);
  auto bad = [&](const std::string& why) {
    return Error(fmt::format("bad {} range '{}': {}; write a:b, a:b:xF (multiply) or a:b:+N (add)", what, text, why));
  };
  if (lo < 1 || hi < lo) throw bad("need 1 <= a <= b");
  if (step.size() < 2 || (step[0] != 'x' && step[0] != '+')) throw bad("the step must be xF or +N");
  const int64_t by = parse_count(step.substr(1), what + " range step");
  if (step[0] == 'x' && by < 2) throw bad("a factor must be at least 2");
  if (step[0] == '+' && by < 1) throw bad("an increment must be at least 1");
  std::vector<int64_t> values;
  for (int64_t v = lo; v <= hi; v = step[0] == 'x' ? v * by : v + by) {
    values.push_back(v);
    if (values.size() > 100000) throw bad("more than 100000 values");
    if ((step[0] == 'x' && v > hi / by) || (step[0] == '+' && v > hi - by)) break;
  }
  return values;
}

AttentionShape to_shape(const ShapeArgs& a) {
  AttentionShape s;
  if (a.seq.empty() == a.seq_list.empty()) throw Error("give exactly one of --seq S or --seq-list S1,S2,...");
  s.seq_lens = a.seq.empty() ? parse_count_list(a.seq_list, "--seq-list entry") : std::vector{parse_count(a.seq, "--seq")};
  if (a.heads == 0) throw Error("--heads is required (query heads)");
  s.batch = a.batch;
  s.q_heads = a.heads;
  s.kv_heads = a.kv_heads == 0 ? a.heads : a.kv_heads;
  s.head_dim = a.head_dim;
  s.v_head_dim = a.v_head_dim == 0 ? a.head_dim : a.v_head_dim;
  s.dtype = parse_dtype(a.dtype);
  s.mask = parse_mask(a.mask);
  return s;
}

Cluster to_cluster(const MeshArgs& a) {
  if (a.world == 0) throw Error("--world is required (ranks in the context-parallel group)");
  if (a.world < 0) throw Error("--world " + std::to_string(a.world) + " must be at least 1");
  if (a.ranks_per_node < 0) throw Error("--ranks-per-node " + std::to_string(a.ranks_per_node) + " must be at least 1");
  if (a.ranks_per_node > a.world)
    throw Error("--ranks-per-node " + std::to_string(a.ranks_per_node) + " exceeds --world " + std::to_string(a.world));
  return Cluster{a.world, a.ranks_per_node == 0 ? a.world : a.ranks_per_node};
}

std::optional<po::variables_map> parse_args(const std::vector<std::string>& args, const po::options_description& desc,
                                            const std::string& usage) {
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      std::cout << usage << "\n\n" << desc << "\n";
      return std::nullopt;
    }
  }
  po::variables_map vm;
  const po::parsed_options parsed = po::command_line_parser(args).options(desc).run();
  for (const po::option& o : parsed.options)  // no command takes a positional argument
    if (o.position_key >= 0 || o.string_key.empty())
      throw Error("unexpected argument '" + (o.original_tokens.empty() ? o.string_key : o.original_tokens.front()) +
                  "'; every value follows its --option");
  po::store(parsed, vm);
  po::notify(vm);
  return vm;
}

}  // namespace cptune::cli
