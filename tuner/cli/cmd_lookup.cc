// cptune lookup: what an engine would get from the lookup library for one shape; with --engine,
// only layouts that engine can run, printed as its own configuration.
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/format.h"
#include "core/layout_json.h"
#include "db/lookup.h"
#include "db/sim_fallback.h"
#include "sim/constraints.h"
#include "sim/hardware.h"
#include "tuner/cli/commands.h"
#include "tuner/cli/shape_options.h"
#include "tuner/fingerprint.h"

namespace po = boost::program_options;

namespace cptune::cli {

int cmd_lookup(const Args& args) {
  ShapeArgs shape;
  MeshArgs mesh;
  ConstraintArgs constraint;
  std::string db_path, backend = "gloo", hardware = "cpu-gloo", format;
  bool json = false;
  po::options_description desc("lookup options");
  add_shape_options(desc, shape);
  add_mesh_options(desc, mesh);
  add_constraint_options(desc, constraint);
  desc.add_options()("db", po::value(&db_path), "tuning database (read-only)")(
      "backend", po::value(&backend)->default_value("gloo"), "backend of the measurements to use: gloo or nccl")(
      "hardware", po::value(&hardware)->default_value("cpu-gloo"),
      "hardware profile for the simulator's answer when nothing of the shape's family was measured")(
      "json", po::bool_switch(&json), "print JSON")(
      "format", po::value(&format),
      "with --engine: print only the engine's configuration as args (flags), python, or json (the whole answer)");
  if (!parse_args(args, desc,
                  "usage: cptune lookup --db tune.db --world P --seq S --heads H [--kv-heads K] [--engine NAME "
                  "[--format args|json|python]] [options]"))
    return 0;
  if (db_path.empty()) throw Error("--db is required: the tuning database to read");
  if (backend != "gloo" && backend != "nccl") throw Error("--backend " + backend + " must be gloo or nccl");
  const AttentionShape s = to_shape(shape);
  check_limits(view_of(s));  // a lookup builds no layout, so the shape (sizes, GQA) is checked here
  const Cluster cluster = to_cluster(mesh);
  const sim::Constraints constraints = to_constraints(constraint, mesh);
  std::optional<sim::ConfigFormat> config_format;
  if (!format.empty()) {
    if (constraint.engine.empty()) throw Error("--format " + format + " prints an engine's configuration; add --engine");
    config_format = sim::parse_config_format(format);
  }
  db::Fingerprint fp = local_fingerprint(backend, cluster.world, cluster.ranks_per_node);
  fp.library_versions.clear();  // any versions of the same hardware: the latest recorded wins
  fp.cptune_version.clear();
  db::Filter filter;
  if (!constraints.empty())
    filter = [&constraints](const LayoutChoice& c, const ShapeView& v) { return constraints.allows(c, v); };
  const db::Lookup lookup = db::Lookup::open(
      db_path, fp, db::simulator_fallback(sim::load_hardware(hardware), fp.cluster, {}, constraints), filter);
  const std::optional<db::Answer> answer = lookup.query(s);
  if (!answer)
    throw NotFound("no layout for this shape" + (constraints.engine.empty() ? "" : " that " + constraints.engine + " can run") +
                ": " + lookup.not_found_reason() + ", and the simulator found no feasible candidate" +
                (constraints.empty() ? "" : " within the constraints"));
  const ShapeView view = view_of(s);
  if (config_format == sim::ConfigFormat::args || config_format == sim::ConfigFormat::python) {
    std::cout << sim::engine_config(constraints.engine, answer->choice, view, *config_format) << "\n";
    return 0;
  }
  if (json || config_format) {
    nlohmann::json doc = to_json(answer->choice);
    doc.update({{"schema", "cptune/lookup/1"},
                {"time_s", {{"median", answer->time_s}}},
                {"source", db::to_string(answer->source)},
                {"measured_tokens", answer->measured_tokens}});
    if (!constraints.engine.empty())
      doc["engine"] = {
          {"name", constraints.engine},
          {"config", nlohmann::json::parse(sim::engine_config(constraints.engine, answer->choice, view,
                                                              sim::ConfigFormat::json))},
          {"args", sim::engine_config(constraints.engine, answer->choice, view, sim::ConfigFormat::args)},
          {"python", sim::engine_config(constraints.engine, answer->choice, view, sim::ConfigFormat::python)}};
    std::cout << doc.dump(2) << "\n";
    return 0;
  }
  std::cout << fmt::format("{}: {} ({}{})\n", to_string(answer->choice), human_seconds(answer->time_s),
                           db::to_string(answer->source),
                           answer->source == db::Source::nearest
                               ? fmt::format(", measured at {} tokens", answer->measured_tokens)
                               : std::string(answer->source == db::Source::simulated ? ", predicted" : ""));
  if (!constraints.engine.empty())
    std::cout << fmt::format("{}: {}\n{}: {}\n", constraints.engine,
                             sim::engine_config(constraints.engine, answer->choice, view, sim::ConfigFormat::python),
                             constraints.engine,
                             sim::engine_config(constraints.engine, answer->choice, view, sim::ConfigFormat::args));
  return 0;
}

}  // namespace cptune::cli
