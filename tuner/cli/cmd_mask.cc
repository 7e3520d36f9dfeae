// cptune mask show MASK: what a mask is, as the program reads it: its canonical text, its block
// table (rows_text), the counts of its cells, and its density. --json prints the table in the
// form a table file takes ({"blocks": N, "rows": [...]}), so the output reads back with
// --mask blocks:FILE, and scripts (scripts/mask_pictures.py) draw the program's own table.
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/layout.h"
#include "tuner/cli/commands.h"
#include "tuner/cli/shape_options.h"

namespace po = boost::program_options;

namespace cptune::cli {
namespace {

std::string usage() {
  return "usage: cptune mask show MASK [--seq L] [--json]\n"
         "  MASK: full, causal, sliding:W, " + block_pattern_usages() + ",\n"
         "        blocks:FILE (a table file) or blocks:N:ROWS (inline)";
}

// Rows as a table file's JSON writes them: one string of '.', 'F', 'C' per query block.
std::vector<std::string> row_strings(const BlockTable& t) {
  std::vector<std::string> rows;
  std::string text = rows_text(t);
  size_t start = 0;
  for (size_t nl; (nl = text.find('\n', start)) != std::string::npos; start = nl + 1) {
    std::string row;
    for (char c : text.substr(start, nl - start))
      if (c != ' ') row += c;
    rows.push_back(std::move(row));
  }
  return rows;
}

// The fraction of pairs a block table keeps when every block is long: FULL cells count whole,
// CAUSAL cells half (s(s+1)/2 of s^2 pairs tends to 1/2).
double limit_density(const BlockTable& t) {
  return (double(t.count(BlockKind::full)) + 0.5 * double(t.count(BlockKind::causal))) / double(t.n() * t.n());
}

}  // namespace

int cmd_mask(const Args& args) {
  std::string text, seq;
  bool json = false;
  po::options_description desc("mask show options");
  desc.add_options()("mask", po::value(&text), "the mask (or give it right after 'show')")(
      "seq", po::value(&seq), "sequence length L for the exact visible pairs and density (32k, 1M; k = 1024)")(
      "json", po::bool_switch(&json), "print JSON (the table as a table file's JSON) instead of text");
  if (args.empty()) throw Error("cptune mask needs an action: show\n" + usage());
  if (args[0] == "--help" || args[0] == "-h") {
    std::cout << usage() << "\n\n" << desc << "\n";
    return 0;
  }
  if (args[0] != "show") throw Error("unknown mask action '" + args[0] + "'; choose show\n" + usage());
  size_t rest = 1;
  if (args.size() > 1 && args[1].rfind("-", 0) != 0) text = args[rest++];
  if (!parse_args(Args(args.begin() + rest, args.end()), desc, usage())) return 0;
  if (text.empty()) throw Error("cptune mask show needs a mask, e.g. 'cptune mask show star:16'");
  const Mask mask = parse_mask(text);
  const int64_t len = seq.empty() ? 0 : parse_count(seq, "--seq");
  constexpr int64_t kMaxShownSeq = int64_t(1) << 31;  // L^2 pairs fit in 64 bits
  if (!seq.empty() && (len < 1 || len > kMaxShownSeq))
    throw Error(fmt::format("--seq {} must be in [1, {}] (2G tokens)", seq, kMaxShownSeq));
  const BlockTable* table = mask.kind == MaskKind::blocks ? mask.blocks.get() : nullptr;
  // Pairs of one sequence of len tokens, exact (mask_pairs is what Layout counts FLOPs with).
  const int64_t visible = len ? mask_pairs(mask, len, 0, len, 0, len) : 0;
  const double density = len ? double(visible) / (double(len) * double(len)) : 0;

  if (json) {
    nlohmann::ordered_json doc{{"schema", "cptune/mask/1"}, {"mask", to_string(mask)}, {"kind", to_string(mask.kind)}};
    if (mask.kind == MaskKind::sliding_window) doc["window"] = mask.window;
    if (table) {
      doc["blocks"] = table->n();
      doc["rows"] = row_strings(*table);
      doc["cells"] = {{"full", table->count(BlockKind::full)},
                      {"causal", table->count(BlockKind::causal)},
                      {"empty", table->count(BlockKind::empty)}};
      doc["density_limit"] = limit_density(*table);
    }
    if (len) {
      doc["seq"] = len;
      doc["visible_pairs"] = visible;
      doc["all_pairs"] = len * len;
      doc["density"] = density;
    }
    std::cout << doc.dump(2) << "\n";
    return 0;
  }
  std::cout << fmt::format("mask {}\n", to_string(mask));
  if (table) {
    std::cout << fmt::format("{} x {} blocks: {} full, {} causal, {} empty; density {:.4f} as blocks grow long\n\n",
                             table->n(), table->n(), table->count(BlockKind::full), table->count(BlockKind::causal),
                             table->count(BlockKind::empty), limit_density(*table));
    std::cout << rows_text(*table);
  }
  if (len)
    std::cout << fmt::format("{}seq {}: {} of {} (query, key) pairs visible, density {:.6f}\n", table ? "\n" : "", len,
                             visible, len * len, density);
  return 0;
}

}  // namespace cptune::cli
