// cptune lookup: what an engine would get from the lookup library for one shape; with --engine,
// only layouts that engine can run, printed as its own configuration. Without --db every answer
// is the simulator's. The lookup is assembled by db::open_lookup, as the C ABI assembles it.
#include <iostream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/format.h"
#include "core/layout_json.h"
#include "db/open_lookup.h"
#include "sim/constraints.h"
#include "tuner/cli/commands.h"
#include "tuner/cli/shape_options.h"
#include "tuner/fingerprint.h"

namespace po = boost::program_options;

namespace cptune::cli {

int cmd_lookup(const Args& args) {
  ShapeArgs shape;
  MeshArgs mesh;
  ConstraintArgs constraint;
  std::string db_path, backend = "gloo", hardware, format, pass = "fwd";
  bool json = false;
  po::options_description desc("lookup options");
  add_shape_options(desc, shape);
  add_mesh_options(desc, mesh);
  add_constraint_options(desc, constraint);
  desc.add_options()("db", po::value(&db_path), "tuning database (read-only); without it, the simulator answers")(
      "backend", po::value(&backend)->default_value("gloo"), "backend of the measurements to use: gloo or nccl")(
      "hardware", po::value(&hardware)->default_value(std::string(db::kHardwareAuto)),
      "hardware profile for the simulator's answer when nothing of the shape's family was measured; auto: the "
      "preset this machine's device names (a GPU question, nccl or --engine, on a CPU machine needs a GPU preset)")(
      "pass", po::value(&pass)->default_value("fwd"),
      "the pass to answer for: fwd, bwd or fwd+bwd (only its measurements; an engine's forward-only layouts are "
      "never answered with a backward)")(
      "json", po::bool_switch(&json), "print JSON")(
      "format", po::value(&format),
      "with --engine: print only the engine's configuration as args (flags), python, or json (the whole answer)");
  if (!parse_args(args, desc,
                  "usage: cptune lookup [--db tune.db] --world P --seq S --heads H [--kv-heads K] [--engine NAME "
                  "[--format args|json|python]] [--hardware NAME|FILE] [--pass fwd|bwd|fwd+bwd] [options]"))
    return 0;
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
  db::LookupRequest request;
  request.db_path = db_path;
  request.fingerprint = tuner::local_fingerprint(backend, cluster.world, cluster.ranks_per_node);
  request.fingerprint.library_versions.clear();  // any versions of the same hardware: the latest recorded wins
  request.fingerprint.cptune_version.clear();
  request.hardware = hardware;
  request.constraints = constraints;
  request.pass = parse_pass(pass);
  const db::OpenedLookup opened = db::open_lookup(request);
  const ShapeView view = view_of(s);
  const std::optional<db::Answer> answer = opened.lookup.query(view);
  if (!answer)
    throw NotFound("no layout for this shape" + (constraints.engine.empty() ? "" : " that " + constraints.engine + " can run") +
                ": " + opened.lookup.why_not(view));
  auto config = [&](sim::ConfigFormat f) { return sim::engine_config(constraints.engine, answer->choice, view, f); };
  if (config_format == sim::ConfigFormat::args || config_format == sim::ConfigFormat::python) {
    std::cout << config(*config_format) << "\n";
    return 0;
  }
  const bool simulated = answer->source == db::Source::simulated;
  if (json || config_format) {
    nlohmann::json doc = to_json(answer->choice);
    doc.update({{"schema", "cptune/lookup/1"},
                {"time_s", {{"median", answer->time_s}}},
                {"source", db::to_string(answer->source)},
                {"pass", std::string(to_string(request.pass))},
                {"measured_tokens", answer->measured_tokens}});
    if (simulated) doc["hardware"] = opened.hardware;
    if (!constraints.engine.empty())
      doc["engine"] = {{"name", constraints.engine},
                       {"config", nlohmann::json::parse(config(sim::ConfigFormat::json))},
                       {"args", config(sim::ConfigFormat::args)},
                       {"python", config(sim::ConfigFormat::python)}};
    std::cout << doc.dump(2) << "\n";
    return 0;
  }
  std::cout << fmt::format("{}: {} ({}{})\n", to_string(answer->choice), human_seconds(answer->time_s),
                           db::to_string(answer->source),
                           answer->source == db::Source::nearest
                               ? fmt::format(", measured at {} tokens", answer->measured_tokens)
                               : std::string(simulated ? ", predicted on " + opened.hardware : ""));
  if (!constraints.engine.empty())
    std::cout << fmt::format("{}: {}\n{}: {}\n", constraints.engine, config(sim::ConfigFormat::python),
                             constraints.engine, config(sim::ConfigFormat::args));
  return 0;
}

}  // namespace cptune::cli
