// cptune lookup: what an engine would get from the lookup library for one shape.
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/layout_json.h"
#include "db/lookup.h"
#include "db/sim_fallback.h"
#include "sim/hardware.h"
#include "tuner/cli/commands.h"
#include "tuner/fingerprint.h"
#include "core/format.h"
#include "tuner/cli/shape_options.h"

namespace po = boost::program_options;

namespace cptune::cli {

int cmd_lookup(const Args& args) {
  ShapeArgs shape;
  MeshArgs mesh;
  std::string db_path, backend = "gloo", hardware = "cpu-gloo";
  bool json = false;
  po::options_description desc("lookup options");
  add_shape_options(desc, shape);
  add_mesh_options(desc, mesh);
  desc.add_options()("db", po::value(&db_path), "tuning database (read-only)")(
      "backend", po::value(&backend)->default_value("gloo"), "backend of the measurements to use: gloo or nccl")(
      "hardware", po::value(&hardware)->default_value("cpu-gloo"),
      "hardware profile for the simulator's answer when nothing of the shape's family was measured")(
      "json", po::bool_switch(&json), "print JSON");
  if (!parse_args(args, desc, "usage: cptune lookup --db tune.db --world P --seq S --heads H [--kv-heads K] [options]"))
    return 0;
  if (db_path.empty()) throw Error("--db is required: the tuning database to read");
  if (backend != "gloo" && backend != "nccl") throw Error("--backend " + backend + " must be gloo or nccl");
  const AttentionShape s = to_shape(shape);
  check_limits(view_of(s));  // a lookup builds no layout, so the shape is checked here
  if (s.q_heads % s.kv_heads != 0)
    throw Error(fmt::format("{} query heads are not a multiple of {} kv heads; GQA needs Hq % Hkv == 0", s.q_heads,
                            s.kv_heads));
  reject_layout_flags(mesh, "lookup");
  const Cluster cluster = to_cluster(mesh);
  db::Fingerprint fp = local_fingerprint(backend, cluster.world, cluster.ranks_per_node);
  fp.library_versions.clear();  // any versions of the same hardware: the latest recorded wins
  fp.cptune_version.clear();
  const db::Lookup lookup = db::Lookup::open(
      db_path, fp, db::simulator_fallback(sim::load_hardware(hardware), fp.cluster));
  const std::optional<db::Answer> answer = lookup.query(s);
  if (!answer) throw Error("no layout for this shape: nothing measured and the simulator found no feasible candidate");
  if (json) {
    nlohmann::json doc = to_json(answer->choice);
    doc.update({{"time_s", answer->time_s},
                {"source", db::to_string(answer->source)},
                {"measured_tokens", answer->measured_tokens}});
    std::cout << doc.dump(2)
              << "\n";
  } else {
    std::cout << fmt::format("{}: {} ({}{})\n", to_string(answer->choice), human_seconds(answer->time_s), db::to_string(answer->source),
                             answer->source == db::Source::nearest
                                 ? fmt::format(", measured at {} tokens", answer->measured_tokens)
                                 : std::string(answer->source == db::Source::simulated ? ", predicted" : ""));
  }
  return 0;
}

}  // namespace cptune::cli
