// cptune layout: the per-rank layout of one strategy for one shape, as a table or JSON.
#include <iostream>

#include <fmt/format.h>

#include "core/layout.h"
#include "core/layout_json.h"
#include "tuner/cli/commands.h"
#include "core/format.h"
#include "tuner/cli/shape_options.h"

namespace po = boost::program_options;

namespace cptune::cli {
namespace {

nlohmann::json with_schema(nlohmann::json doc, const char* schema) {
  doc["schema"] = schema;
  return doc;
}

std::string runs_text(const RankLayout& rl) {
  std::string out;
  for (const TokenRun& run : rl.input_runs) {
    if (!out.empty()) out += " ";
    out += fmt::format("s{}[{},{})", run.seq, run.begin, run.end());
    if (run.padded > run.count) out += fmt::format("+{}pad", run.padded - run.count);
  }
  return out;
}

void print_table(const Layout& layout) {
  std::cout << fmt::format("{}  world {}  {} node(s) of {}{}\n", to_string(layout.choice()), layout.world(),
                           layout.nodes(), layout.cluster().ranks_per_node, layout.zigzag() ? "  zigzag chunks" : "");
  std::cout << fmt::format("padding: {} tokens, {} heads\n", layout.padding_tokens(), layout.padding_heads());
  if (layout.ring() > 1)
    std::cout << fmt::format("placement: {}, imbalance {:.3f} (max / mean attention FLOPs over ring indices)\n",
                             layout.placement(), layout.placement_imbalance());
  std::cout << "\n";
  std::cout << fmt::format("{:>5} {:>4} {:>4} {:>4} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12} {:>10} {:>12}  {}\n", "rank",
                           "u", "r", "node", "tokens", "attn_tok", "q_heads", "kv_heads", "send", "recv", "GFLOP",
                           "peak", "input runs");
  for (const RankLayout& rl : layout.ranks()) {
    std::cout << fmt::format(
        "{:>5} {:>4} {:>4} {:>4} {:>9} {:>9} {:>9} {:>9} {:>12} {:>12} {:>10.3f} {:>12}  {}\n", rl.rank, rl.u, rl.r,
        rl.node, rl.input_tokens, layout.shard_tokens(rl.r),
        fmt::format("{}-{}", rl.q_heads.begin, rl.q_heads.end - 1), fmt::format("{}-{}", rl.kv_heads.begin, rl.kv_heads.end - 1),
        human_bytes(double(rl.send_bytes())), human_bytes(double(rl.recv_bytes())), double(rl.flops) / 1e9,
        human_bytes(double(rl.peak_bytes)), runs_text(rl));
  }
}

}  // namespace

int cmd_layout(const Args& args) {
  ShapeArgs shape;
  MeshArgs mesh;
  StrategyArgs choice;
  po::options_description desc("layout options");
  add_shape_options(desc, shape);
  add_mesh_options(desc, mesh);
  add_strategy_options(desc, choice);
  if (!parse_args(args, desc, "usage: cptune layout --seq S --heads H [--kv-heads K] --world P [--strategy NAME] [options]"))
    return 0;
  const LayoutSpec spec = to_spec(shape, mesh, choice);
  const Layout layout = Layout::build(spec);
  if (choice.json)
    std::cout << with_schema(to_json(layout), "cptune/layout/1").dump(2) << "\n";
  else
    print_table(layout);
  return 0;
}

}  // namespace cptune::cli
