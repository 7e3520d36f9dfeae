// cptune topology import: a hardware file whose levels come from an NCCL topology dump
// (NCCL_TOPO_DUMP_FILE) and whose compute numbers come from a base preset.
#include <iostream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "core/error.h"
#include "core/read_file.h"
#include "sim/hardware.h"
#include "sim/topology.h"
#include "tuner/cli/commands.h"
#include "tuner/cli/output_file.h"
#include "tuner/cli/shape_options.h"
#include "tuner/nccl_topo.h"

namespace po = boost::program_options;

namespace cptune::cli {
namespace {

void print_levels(const sim::Hardware& hw, std::ostream& out) {
  out << fmt::format("{:<3} {:<12} {:>6} {:>10} {:>12} {:>12} {}\n", "#", "level", "ranks", "alpha", "bandwidth", "uplink",
                     "host_bounce");
  for (size_t i = 0; i < hw.levels.size(); ++i) {
    const sim::Level& l = hw.levels[i];
    out << fmt::format("{:<3} {:<12} {:>6} {:>7.2f} us {:>7.4g} GB/s {:>7} {}\n", i, l.name,
                       l.ranks > 0 ? std::to_string(l.ranks) : "all", l.link.alpha_s * 1e6, l.link.bandwidth_bytes_per_s / 1e9,
                       l.uplink_bytes_per_s > 0 ? fmt::format("{:.4g} GB/s", l.uplink_bytes_per_s / 1e9) : "-",
                       l.host_bounce ? "yes" : "");
  }
  if (hw.injection_bytes_per_s > 0) out << fmt::format("injection: {:.4g} GB/s per rank\n", hw.injection_bytes_per_s / 1e9);
}

}  // namespace

int cmd_topology(const Args& args) {
  const std::string usage =
      "usage: cptune topology import nccl-topo.xml --base PRESET --out cluster.json [--name NAME] [--nodes N]\n"
      "Reads the XML NCCL writes with NCCL_TOPO_DUMP_FILE=FILE and writes a hardware file whose levels are the\n"
      "host's NVLink peers, PCIe switches, CPU sockets and NICs, with the base preset's compute numbers.";
  std::string base_name, out, name;
  int64_t nodes = 1;
  po::options_description desc("topology import options");
  desc.add_options()("base", po::value(&base_name)->required(), "preset or file for the compute numbers (h100-sxm, a100-pcie, l20, ...)")(
      "out", po::value(&out)->required(), "hardware JSON file to write (for simulate, tune, validate --hardware)")(
      "name", po::value(&name), "name field of the written file (default: the XML file's stem)")(
      "nodes", po::value(&nodes)->default_value(1), "nodes of this kind in the default cluster");
  const auto is_help = [](const std::string& a) { return a == "--help" || a == "-h"; };
  if (args.empty() || is_help(args[0]) || (args[0] == "import" && args.size() > 1 && is_help(args[1]))) {
    (args.empty() ? std::cerr : std::cout) << usage << "\n\n" << desc << "\n";
    return args.empty() ? 2 : 0;
  }
  if (args[0] != "import") throw Error("topology action '" + args[0] + "' is not one; use: cptune topology import FILE");
  if (args.size() < 2 || args[1].rfind("--", 0) == 0) throw Error("topology import needs the NCCL topology XML file first");
  const std::string file = args[1];
  if (!parse_args(Args(args.begin() + 2, args.end()), desc, usage)) return 0;
  if (nodes < 1) throw Error(fmt::format("--nodes {} must be at least 1", nodes));
  check_writable(out, "--out");
  const std::string text = read_regular_file(file, "NCCL topology file");
  const sim::Hardware base = sim::load_hardware(base_name);
  const tuner::TopoHost host = tuner::read_nccl_topology(text, file);
  if (name.empty()) {
    name = file.substr(file.find_last_of('/') + 1);
    name = name.substr(0, name.find('.'));
  }
  std::vector<std::string> warnings;
  const sim::Hardware hw = tuner::hardware_from_topology(host, base, file, name, nodes, &warnings);
  sim::save_hardware(hw, out);
  for (const std::string& w : warnings) std::cerr << "warning: " << w << "\n";
  print_levels(hw, std::cout);
  std::cout << "\nwrote " << out << " (" << hw.name << "); use it as --hardware " << out << "\n";
  return 0;
}

}  // namespace cptune::cli
