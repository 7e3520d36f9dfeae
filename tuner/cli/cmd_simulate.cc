// cptune simulate: every feasible candidate for a shape on a cluster, ranked by the cost model,
// as a table or JSON. Ranges in --seq, --heads or --world make a sweep, written as CSV with one
// row per configuration and candidate (scripts/plot_sweep.py draws it).
#include <cctype>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"
#include "core/layout_json.h"
#include "sim/candidates.h"
#include "sim/constraints.h"
#include "sim/hardware.h"
#include "sim/ranking_json.h"
#include "sim/topology.h"
#include "tuner/cli/commands.h"
#include "core/format.h"
#include "tuner/cli/shape_options.h"

namespace po = boost::program_options;

namespace cptune::cli {
namespace {

using sim::Ranking;
using sim::RankedCandidate;

struct SimulateArgs {
  ShapeArgs shape;          // shape.seq may hold a range
  std::string heads;        // a count or a range
  std::string world;        // a count or a range
  int64_t nodes = 0;        // 0: from --world, else the hardware's
  int64_t ranks_per_node = 0;  // 0: the hardware's ranks per node
  std::string hardware = "h100-sxm";
  std::string pass = "fwd";
  std::string metadata = "cpu";
  bool json = false;
  bool csv = false;
  int64_t top = 0;
  ConstraintArgs constraint;
  MeshArgs layout;  // --ulysses, --ring, --order: constraints only
};

struct Config {
  AttentionShape shape;
  Cluster cluster;
};

constexpr const char* kUsage =
    "usage: cptune simulate --hardware NAME|FILE [--nodes N --ranks-per-node G | --world P] --seq S --heads H "
    "[--kv-heads K] [options]\n"
    "ranges (a sweep, written as CSV): --seq 1k:1M:x2, --heads 8:64:+8, --world 2:64 "
    "(a:b:xF multiplies, a:b:+N adds, a:b means a:b:x2)";

po::options_description make_options(SimulateArgs& a) {
  po::options_description shape_desc;
  add_shape_options(shape_desc, a.shape);
  po::options_description desc("simulate options");
  // The shared shape flags, with --heads taking a range here.
  for (const auto& option : shape_desc.options()) {
    if (option->long_name() == "heads")
      desc.add_options()("heads", po::value(&a.heads), "query heads Hq, or a range such as 8:64:+8");
    else
      desc.add(option);
  }
  desc.add_options()
      ("hardware", po::value(&a.hardware)->default_value("h100-sxm"),
       "preset (see sim/hardware: h100-sxm, h200, a100, l20, gb200-nvl72, ...) or a JSON file in the same format")
      ("nodes", po::value(&a.nodes), "nodes (default: the hardware's)")
      ("ranks-per-node", po::value(&a.ranks_per_node), "ranks per node G (default: the hardware's)")
      ("world", po::value(&a.world), "ranks P instead of --nodes, or a range such as 2:64")
      ("pass", po::value(&a.pass)->default_value("fwd"), "fwd, bwd (the backward's phases alone) or fwd-bwd (also fwd+bwd)")
      ("metadata", po::value(&a.metadata)->default_value("cpu"),
       "where UAA gathers sequence lengths: cpu (a CPU channel) or device (device all-gather + sync)")
      ("json", po::bool_switch(&a.json), "print JSON instead of a table")
      ("csv", po::bool_switch(&a.csv), "print CSV (the default for sweeps)")
      ("top", po::value(&a.top), "show only the N fastest candidates in the table");
  add_constraint_options(desc, a.constraint, &a.layout);
  return desc;
}

std::vector<Config> make_configs(const SimulateArgs& a, const sim::Hardware& hw) {
  if (!a.world.empty() && a.nodes > 0) throw Error("give --world or --nodes, not both");
  if (a.nodes < 0 || a.ranks_per_node < 0) throw Error(fmt::format("--nodes {} and --ranks-per-node {} must be positive", a.nodes, a.ranks_per_node));
  const int64_t per_node = a.ranks_per_node > 0 ? a.ranks_per_node : hw.ranks_per_node;
  const int64_t nodes = a.nodes > 0 ? a.nodes : hw.nodes;
  int64_t nodes_world = 0;
  if (__builtin_mul_overflow(nodes, per_node, &nodes_world) || nodes_world > kMaxWorld)
    throw Error(fmt::format("{} nodes x {} ranks per node exceed the supported world of {} ranks", nodes, per_node,
                            kMaxWorld));
  const std::vector<int64_t> worlds = !a.world.empty() ? parse_range(a.world, "--world")
                                                       : std::vector<int64_t>{nodes_world};
  for (int64_t world : worlds) check_world_limit(world);
  if (a.heads.empty()) throw Error("--heads is required (query heads)");
  const std::vector<int64_t> heads = parse_range(a.heads, "--heads");
  const bool packed = !a.shape.seq_list.empty();
  const std::vector<int64_t> seqs = packed || a.shape.seq.empty() ? std::vector<int64_t>{0} : parse_range(a.shape.seq, "--seq");
  std::vector<Config> configs;
  for (int64_t world : worlds)
    for (int64_t h : heads)
      for (int64_t s : seqs) {
        ShapeArgs one = a.shape;
        one.heads = h;
        if (!packed && !a.shape.seq.empty()) one.seq = std::to_string(s);
        configs.push_back({to_shape(one), Cluster{world, per_node}});
      }
  return configs;
}

std::string seq_text(const AttentionShape& s, const char* separator) {
  std::string out;
  for (int64_t len : s.seq_lens) out += (out.empty() ? "" : separator) + std::to_string(len);
  return out;
}

std::string config_text(const Config& c, const sim::Hardware& hw, const sim::PredictOptions& o) {
  const AttentionShape& s = c.shape;
  return fmt::format("{}: {} node(s) x {} ranks (world {}), seq {}, batch {}, Hq {}, Hkv {}, D {}/{}, {}, mask {}, "
                     "pass {}, metadata {}",
                     hw.name, c.cluster.nodes(), c.cluster.ranks_per_node, c.cluster.world, seq_text(s, ","), s.batch,
                     s.q_heads, s.kv_heads, s.head_dim, s.v_head_dim, to_string(s.dtype), to_string(s.mask),
                     sim::report_name(o.pass), to_string(o.metadata));
}

std::string speedup_text(const std::optional<double>& x) { return x ? fmt::format("{:.2f}x", *x) : "-"; }
std::string seconds_text(double s) { return s > 0 ? human_seconds(s) : "-"; }

// "lpt 1.04x": the ring's placement and its imbalance; "-" without a ring.
std::string placement_text(const Layout& l) {
  return l.ring() > 1 ? fmt::format("{} {:.3f}x", l.placement(), l.placement_imbalance()) : std::string("-");
}

// Phases some candidate spends time in: the table's breakdown columns.
std::vector<Phase> active_phases(const Ranking& ranking) {
  std::vector<Phase> out;
  for (Phase ph : kAllPhases)
    for (const RankedCandidate& rc : ranking.candidates)
      if (rc.prediction.phase(ph) > 0) {
        out.push_back(ph);
        break;
      }
  return out;
}

// --engine: the engine's own configuration of a ranked row (its flags), the column and JSON field.
std::string engine_args(const sim::Constraints& k, const LayoutChoice& choice, const AttentionShape& shape) {
  return sim::engine_config(k.engine, choice, view_of(shape), sim::ConfigFormat::args);
}

void print_table(const Config& c, const Ranking& ranking, const sim::Hardware& hw, const sim::PredictOptions& o,
                 int64_t top, const sim::Constraints& constraints) {
  std::cout << config_text(c, hw, o) << "\n\n";
  const std::vector<Phase> phases = active_phases(ranking);
  std::string header = fmt::format("{:>3}  {:<13}{:>4}{:>4}  {:<14}{:<11}{:>11}{:>8}{:>10}", "#", "strategy", "U", "R",
                                   "order", "heads", "time", "x worst", "x ulysses");
  for (Phase ph : phases) header += fmt::format("{:>15}", to_string(ph));
  for (const std::string& level : ranking.level_names) header += fmt::format("{:>22}", level);
  // Block masks: where the ring put the blocks, and the FLOP imbalance it leaves (max / mean).
  const bool blocks = c.shape.mask.kind == MaskKind::blocks;
  if (blocks) header += fmt::format("  {:<18}", "placement");
  const bool engine = !constraints.engine.empty();
  std::cout << header << fmt::format("{:>12}{:>12}{:>12}{:>6}", "intra", "inter", "peak", "fits")
            << (engine ? "  " + constraints.engine + " config" : "") << "\n";
  int64_t shown = 0;
  for (const RankedCandidate& rc : ranking.candidates) {
    if (top > 0 && shown++ >= top) break;
    const LayoutChoice& k = rc.candidate;
    const sim::Prediction& p = rc.prediction;
    std::string row = fmt::format("{:>3}  {:<13}{:>4}{:>4}  {:<14}{:<11}{:>11}{:>8}{:>10}", &rc - &ranking.candidates[0] + 1,
                                  to_string(k.strategy), k.ulysses, k.ring, to_string(k.order), to_string(k.head_policy),
                                  human_seconds(p.total_s), speedup_text(rc.speedup_over_worst),
                                  speedup_text(rc.speedup_over_ulysses));
    for (Phase ph : phases) row += fmt::format("{:>15}", seconds_text(p.phase(ph)));
    for (size_t i = 0; i < ranking.level_names.size(); ++i)
      row += fmt::format("{:>22}", p.level_bytes[i] > 0 ? human_bytes(double(p.level_bytes[i])) + " " + seconds_text(p.level_s[i])
                                                        : std::string("-"));
    if (blocks) row += fmt::format("  {:<18}", placement_text(Layout::build({c.shape, c.cluster, k})));
    std::cout << row << fmt::format("{:>12}{:>12}{:>12}{:>6}", human_bytes(double(p.bytes_intra)),
                                    human_bytes(double(p.bytes_inter)), human_bytes(double(p.peak_bytes)),
                                    p.fits ? "yes" : "NO")
              << (engine ? "  " + engine_args(constraints, k, c.shape) : "") << "\n";
  }
  if (top > 0 && static_cast<int64_t>(ranking.candidates.size()) > top)
    std::cout << fmt::format("... {} more (drop --top to see all)\n", static_cast<int64_t>(ranking.candidates.size()) - top);
  std::cout << "\ntimes: slowest rank per phase, phases back to back; per level (" << hw.name
            << "'s topology, innermost first): bytes sent to peers first met there, summed over ranks, and the time its "
               "busiest link is busy; intra/inter: bytes sent within / between nodes; peak: largest rank's buffers\n";
  if (!ranking.refused.empty()) {
    std::cout << fmt::format("\nrefused ({}):\n", ranking.refused.size());
    for (const sim::Refusal& r : ranking.refused) std::cout << "  " << to_string(r.candidate) << ": " << r.reason << "\n";
  }
}

nlohmann::json config_json(const Config& c, const Ranking& ranking, const sim::Hardware& hw,
                           const sim::PredictOptions& o, const sim::Constraints& constraints) {
  nlohmann::json doc = sim::to_json(ranking, o.pass);
  if (!constraints.engine.empty()) {
    doc["engine"] = constraints.engine;
    for (size_t i = 0; i < ranking.candidates.size(); ++i) {
      const LayoutChoice& k = ranking.candidates[i].candidate;
      auto config = [&](sim::ConfigFormat f) { return sim::engine_config(constraints.engine, k, view_of(c.shape), f); };
      doc["candidates"][i]["engine_config"] = {{"args", config(sim::ConfigFormat::args)},
                                               {"python", config(sim::ConfigFormat::python)},
                                               {"json", nlohmann::json::parse(config(sim::ConfigFormat::json))}};
    }
  }
  doc["schema"] = "cptune/simulate/1";
  doc["hardware"] = hw.name;
  doc["cluster"] = {{"world", c.cluster.world}, {"ranks_per_node", c.cluster.ranks_per_node}, {"nodes", c.cluster.nodes()}};
  doc["shape"] = to_json(c.shape);
  doc["pass"] = sim::report_name(o.pass);
  doc["metadata"] = to_string(o.metadata);
  return doc;
}

void print_csv_header(const std::vector<std::string>& level_names) {
  std::string phases;
  for (Phase ph : kAllPhases) {
    std::string name(to_string(ph));
    for (char& ch : name) ch = ch == '-' ? '_' : ch;
    phases += name + "_s,";
  }
  std::cout << "hardware,pass,metadata,world,ranks_per_node,nodes,seq,batch,heads,kv_heads,head_dim,v_head_dim,dtype,"
               "mask,strategy,ulysses,ring,order,head_policy,time_s,speedup_over_worst,speedup_over_ulysses,"
            << phases << "bytes_intra,bytes_inter,peak_bytes,fits,padding_waste_s,";
  for (std::string name : level_names) {
    for (char& ch : name) ch = std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
    std::cout << "level_" << name << "_bytes,level_" << name << "_s,";
  }
  std::cout << "best\n";
}

// A block pattern's text holds commas ("strided:16,4"): RFC 4180 quotes it, as shapes files read it.
std::string csv_mask(const Mask& mask) {
  const std::string text = to_string(mask);
  return text.find(',') == std::string::npos ? text : "\"" + text + "\"";
}

void print_csv_rows(const Config& c, const Ranking& ranking, const sim::Hardware& hw, const sim::PredictOptions& o) {
  const AttentionShape& s = c.shape;
  const std::string prefix =
      fmt::format("{},{},{},{},{},{},{},{},{},{},{},{},{},{},", hw.name, sim::report_name(o.pass), to_string(o.metadata),
                  c.cluster.world, c.cluster.ranks_per_node, c.cluster.nodes(), seq_text(s, ";"), s.batch, s.q_heads,
                  s.kv_heads, s.head_dim, s.v_head_dim, to_string(s.dtype), csv_mask(s.mask));
  for (const RankedCandidate& rc : ranking.candidates) {
    const LayoutChoice& k = rc.candidate;
    const sim::Prediction& p = rc.prediction;
    std::string row = prefix + fmt::format("{},{},{},{},{},{:.6e},{:.4f},{},", to_string(k.strategy), k.ulysses, k.ring,
                                           to_string(k.order), to_string(k.head_policy), p.total_s,
                                           rc.speedup_over_worst,
                                           rc.speedup_over_ulysses ? fmt::format("{:.4f}", *rc.speedup_over_ulysses) : "");
    for (double t : p.phase_s) row += fmt::format("{:.6e},", t);
    row += fmt::format("{},{},{},{},{:.6e},", p.bytes_intra, p.bytes_inter, p.peak_bytes, p.fits ? 1 : 0,
                       p.padding_waste_s);
    for (size_t i = 0; i < p.levels; ++i) row += fmt::format("{},{:.6e},", p.level_bytes[i], p.level_s[i]);
    row += fmt::format("{}\n", &rc == ranking.best() ? 1 : 0);
    std::cout << row;
  }
}

std::string first_reason(const Ranking& ranking) {
  return ranking.refused.empty() ? "no candidates" : ranking.refused.front().reason;
}

}  // namespace

int cmd_simulate(const Args& args) {
  SimulateArgs a;
  const po::options_description desc = make_options(a);
  const auto vm = parse_args(args, desc, kUsage);
  if (!vm) return 0;
  if (a.json && a.csv) throw Error("--json and --csv both given; choose one output format");
  if (vm->count("top") && a.top < 1) throw Error(fmt::format("--top {} must be at least 1", a.top));
  const sim::Hardware hw = sim::load_hardware(a.hardware);
  const sim::PredictOptions options{parse_pass(a.pass), parse_metadata_channel(a.metadata)};
  sim::Constraints constraints = to_constraints(a.constraint, a.layout);
  // A backward pass refuses the layouts the engine runs forward only.
  if (!constraints.engine.empty()) constraints.backward = has_backward(options.pass);
  const std::vector<Config> configs = make_configs(a, hw);
  const bool sweep = configs.size() > 1;

  if (a.csv || (sweep && !a.json)) {
    std::vector<std::string> names;
    for (size_t i = 0; i < sim::level_count(hw); ++i) names.push_back(sim::level_name(hw, i));
    print_csv_header(names);
    for (const Config& c : configs) {
      const Ranking ranking = sim::rank_candidates(c.shape, c.cluster, hw, options, constraints);
      if (ranking.candidates.empty())
        std::cerr << fmt::format("skipped world {}, seq {}, heads {}: {}\n", c.cluster.world, seq_text(c.shape, ","),
                                 c.shape.q_heads, first_reason(ranking));
      print_csv_rows(c, ranking, hw, options);
    }
    return 0;
  }
  nlohmann::json documents = nlohmann::json::array();
  for (const Config& c : configs) {
    const Ranking ranking = sim::rank_candidates(c.shape, c.cluster, hw, options, constraints);
    if (ranking.candidates.empty())
      throw Error(fmt::format("no candidate lays out on world {}: {}", c.cluster.world, first_reason(ranking)));
    if (a.json)
      documents.push_back(config_json(c, ranking, hw, options, constraints));
    else
      print_table(c, ranking, hw, options, a.top, constraints);
  }
  if (a.json) std::cout << (sweep ? documents : documents.front()).dump(2) << "\n";
  return 0;
}

}  // namespace cptune::cli
