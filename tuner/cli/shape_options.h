#pragma once
// Command-line flags shared by every sub-command that names a shape, a mesh and a strategy
// (layout, simulate, run, tune, lookup), and their conversion into a LayoutSpec.
#include <optional>
#include <string>
#include <vector>

#include <boost/program_options.hpp>

#include "core/types.h"
#include "sim/constraints.h"

namespace cptune::cli {

struct ShapeArgs {
  std::string seq;       // "4097", "32k", "1M" (k = 1024); simulate also takes ranges
  std::string seq_list;  // "77,4097": a packed batch of independent sequences
  int64_t batch = 1;
  int64_t heads = 0;
  int64_t kv_heads = 0;    // 0: same as heads
  int64_t head_dim = 128;
  int64_t v_head_dim = 0;  // 0: same as head_dim
  std::string dtype = "bf16";
  std::string mask = "full";
};

struct MeshArgs {
  int64_t world = 0;
  int64_t ulysses = 0;  // 0: fixed by the strategy, or world / ring for hybrids
  int64_t ring = 0;
  std::string order;    // empty: ulysses-inner
  int64_t ranks_per_node = 0;  // 0: all ranks on one node
};

// --strategy and --head-policy, for the commands that name one candidate (layout, run).
struct StrategyArgs {
  std::string strategy = "uaa";
  std::string head_policy = "balanced";
  bool json = false;  // --json: print JSON instead of a table
};

void add_shape_options(boost::program_options::options_description& desc, ShapeArgs& args);
void add_strategy_options(boost::program_options::options_description& desc, StrategyArgs& args);
// The one layout these flags name, its degrees as given: Layout::build resolves them (throws
// Error naming a bad value).
LayoutSpec to_spec(const ShapeArgs& shape, const MeshArgs& mesh, const StrategyArgs& strategy);
void add_mesh_options(boost::program_options::options_description& desc, MeshArgs& args);

// What tune, simulate and lookup may choose from: --engine NAME (sim/constraints.h profiles),
// --strategy A,B and --head-policy, with --ulysses, --ring and --order of MeshArgs. They
// filter the candidates; they never name the one answer.
struct ConstraintArgs {
  std::string engine;
  std::string strategies;
  std::string head_policy;
};
// With `layout`, also adds --ulysses, --ring and --order bound to it (simulate has no MeshArgs).
void add_constraint_options(boost::program_options::options_description& desc, ConstraintArgs& args,
                            MeshArgs* layout = nullptr);
// Throws Error naming a bad value or a contradiction (an engine that cannot run what is asked).
sim::Constraints to_constraints(const ConstraintArgs& args, const MeshArgs& layout);

// "4097", "32k", "1M", "2G" -> tokens. Throws Error naming the text.
int64_t parse_count(const std::string& text, const std::string& what);
std::vector<int64_t> parse_count_list(const std::string& text, const std::string& what);
// "a", "a:b" (x2), "a:b:xF" (multiply) or "a:b:+N" (add), as nccl-tests' -b/-e/-f; a and b as
// parse_count reads them. Throws Error naming the text.
std::vector<int64_t> parse_range(const std::string& text, const std::string& what);

AttentionShape to_shape(const ShapeArgs& args);  // seq must be one value here
Cluster to_cluster(const MeshArgs& args);  // --world and --ranks-per-node

// Parses argv with desc; returns nullopt after printing help when --help was given.
std::optional<boost::program_options::variables_map> parse_args(
    const std::vector<std::string>& args, const boost::program_options::options_description& desc,
    const std::string& usage);

}  // namespace cptune::cli
