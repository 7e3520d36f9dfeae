// cptune run: one strategy for one shape, run for real across ranks, verified and timed.
#include <algorithm>
#include <iostream>
#include <optional>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backends/comm/comm.h"
#include "backends/exec/executor.h"
#include "backends/kernels/cpu_isa.h"
#include "backends/comm/launcher.h"
#include "core/error.h"
#include "core/layout_json.h"
#include "core/layout.h"
#include "tuner/cli/commands.h"
#include "tuner/cli/npy.h"
#include "tuner/cli/output_file.h"
#include "core/format.h"
#include "tuner/cli/run_options.h"
#include "tuner/cli/shape_options.h"

namespace po = boost::program_options;

namespace cptune::cli {
namespace {

nlohmann::json spread_json(const backends::Spread& s) {
  return {{"median", s.median_s}, {"min", s.min_s}, {"max", s.max_s}};
}

// One communication phase as nccl-tests reports a collective. bytes: what the busiest rank
// sends (its own share excluded); n: the ranks it exchanges with.
//   busbw = bytes / time: the rate one rank's links carried (nccl-tests' bus bandwidth)
//   alltoall, allgather: algbw = size / time, size = bytes * n / (n - 1) the rank's whole
//     buffer, own share included, as nccl-tests counts it; so busbw = algbw * (n - 1) / n
//   sendrecv (the ring's K,V rotation, overlapped with attention): algbw = busbw
struct Traffic {
  std::string_view collective;  // "alltoall", "allgather", "sendrecv"
  int64_t bytes = 0;
  int64_t n = 1;
  double algbw(double seconds) const {
    const double size = collective == "sendrecv" ? double(bytes) : double(bytes) * double(n) / double(n - 1);
    return seconds > 0 ? size / seconds : 0;
  }
  double busbw(double seconds) const { return seconds > 0 ? double(bytes) / seconds : 0; }
};

// The bytes each communication phase moves, and over which group (Ulysses: U, ring: R).
// A backward phase moves the transpose of a forward one (dO: O's bytes the other way; dQ, dK,
// dV: Q, K, V's): a rank sends what it received. The storage dtype's bytes: the backward's ring
// rotates K,V again (in attention-bwd's traffic) and its fp32 dK, dV beside them, not counted here.
struct PhaseTraffic {
  Phase phase;
  LinkBytes RankLayout::*bytes;
  std::string_view collective;
  bool over_ulysses;
  bool transposed = false;
};
constexpr PhaseTraffic kPhaseTraffic[] = {
    {Phase::gather, &RankLayout::gather_bytes, "allgather", true},
    {Phase::qkv, &RankLayout::qkv_bytes, "alltoall", true},
    {Phase::o, &RankLayout::o_bytes, "alltoall", true},
    {Phase::allgather, &RankLayout::allgather_bytes, "allgather", false},
    {Phase::attention, &RankLayout::ring_bytes, "sendrecv", false},  // the K,V rotation it overlaps
    {Phase::grad_o, &RankLayout::o_bytes, "alltoall", true, true},
    {Phase::attention_bwd, &RankLayout::ring_bytes, "sendrecv", false},
    {Phase::grad_qkv, &RankLayout::qkv_bytes, "alltoall", true, true},
};

std::optional<Traffic> traffic(const Layout& layout, Phase phase) {
  for (const PhaseTraffic& p : kPhaseTraffic) {
    if (p.phase != phase) continue;
    Traffic t{p.collective, 0, p.over_ulysses ? layout.ulysses() : layout.ring()};
    for (const RankLayout& r : layout.ranks())
      t.bytes = std::max(t.bytes, p.transposed ? (r.*p.bytes).recv() : (r.*p.bytes).send());
    if (t.bytes == 0 || t.n < 2) return std::nullopt;
    return t;
  }
  return std::nullopt;
}

constexpr double kGB = 1e9;

std::string semicolons(std::string text) {  // a CSV cell of a packed batch's lengths
  for (char& c : text) c = c == ',' ? ';' : c;
  return text;
}

nlohmann::json error_json(const std::optional<backends::ErrorStats>& e) {
  if (!e) return nullptr;
  return {{"verified", e->passed()}, {"max_abs_err", e->max_abs_err}, {"tolerance", e->tolerance},
          {"error_ratio", e->worst_ratio}, {"verified_rows", e->rows}};
}

nlohmann::json result_json(const Layout& layout, const backends::RunResult& r, const std::string& backend,
                           Pass pass) {
  nlohmann::json phases = nlohmann::json::object();
  for (const auto& p : r.phases) {
    nlohmann::json phase = spread_json(p.time);
    if (const std::optional<Traffic> t = traffic(layout, p.phase))
      phase.update({{"collective", t->collective},
                    {"ranks", t->n},
                    {"bytes", t->bytes},
                    {"algbw_GBps", t->algbw(p.time.median_s) / kGB},
                    {"busbw_GBps", t->busbw(p.time.median_s) / kGB}});
    phases[std::string(to_string(p.phase))] = phase;
  }
  nlohmann::json out = to_json(layout.choice());
  out.update({{"schema", "cptune/run/1"},
              {"world", layout.world()},
              {"seq", seq_lens_text(layout.shape().seq_lens)},
              {"backend", backend},
              {"cpu_isa", std::string(backends::to_string(backends::active_cpu_isa()))},
              {"iterations", r.iterations},
              {"time_s", spread_json(r.time)},
              {"phases", phases},
              {"verified", r.max_abs_err ? nlohmann::json(r.verified()) : nlohmann::json(nullptr)},
              {"max_abs_err", r.max_abs_err ? nlohmann::json(*r.max_abs_err) : nlohmann::json(nullptr)},
              {"tolerance", r.max_abs_err ? nlohmann::json(r.tolerance) : nlohmann::json(nullptr)},
              {"error_ratio", r.max_abs_err ? nlohmann::json(r.worst_ratio) : nlohmann::json(nullptr)},
              {"verified_rows", r.max_abs_err ? nlohmann::json(r.verified_rows) : nlohmann::json(nullptr)}});
  out["pass"] = std::string(to_string(pass));
  if (has_backward(pass))
    out["gradients"] = {{"dq", error_json(r.grad_q_err)}, {"dk", error_json(r.grad_k_err)}, {"dv", error_json(r.grad_v_err)}};
  return out;
}

std::string bandwidth_cells(const Layout& layout, const backends::PhaseStats& p) {
  const std::optional<Traffic> t = traffic(layout, p.phase);
  if (!t) return "";
  return fmt::format(" {:>10} {:>12} {:>9.3f} {:>9.3f}", t->collective, human_bytes(t->bytes),
                     t->algbw(p.time.median_s) / kGB, t->busbw(p.time.median_s) / kGB);
}

void print_result(const Layout& layout, const backends::RunResult& r, const std::string& backend, int warmups,
                  Pass pass) {
  std::cout << fmt::format("cptune run: {}, world {}, {} ranks, dtype {}, seq {}, pass {}\n", to_string(layout.choice()),
                           layout.world(), backend, to_string(layout.shape().dtype),
                           seq_lens_text(layout.shape().seq_lens), to_string(pass));
  if (r.max_abs_err)
    std::cout << fmt::format("verify: {} rows, max |O - O_ref| = {:.3e}, worst error / tolerance = {:.3f}: {}\n",
                             r.verified_rows, *r.max_abs_err, r.worst_ratio, r.worst_ratio <= 1 ? "PASSED" : "FAILED");
  const std::pair<const char*, const std::optional<backends::ErrorStats>*> grads[] = {
      {"dQ", &r.grad_q_err}, {"dK", &r.grad_k_err}, {"dV", &r.grad_v_err}};
  for (const auto& [name, e] : grads)
    if (e->has_value())
      std::cout << fmt::format("verify: {} rows, max |{} - {}_ref| = {:.3e}, worst error / tolerance = {:.3f}: {}\n",
                               (*e)->rows, name, name, (*e)->max_abs_err, (*e)->worst_ratio,
                               (*e)->passed() ? "PASSED" : "FAILED");
  std::cout << fmt::format("time: slowest rank per iteration, {} iterations after {} warm-up(s)\n", r.iterations, warmups);
  std::cout << fmt::format("{:<14} {:>12} {:>12} {:>12} {:>10} {:>12} {:>9} {:>9}\n", "phase", "median", "min", "max",
                           "collective", "bytes", "algbw", "busbw");
  for (const auto& p : r.phases)
    std::cout << fmt::format("{:<14} {:>12} {:>12} {:>12}{}\n", to_string(p.phase), human_seconds(p.time.median_s),
                             human_seconds(p.time.min_s), human_seconds(p.time.max_s), bandwidth_cells(layout, p));
  std::cout << fmt::format("{:<14} {:>12} {:>12} {:>12}\n", "total", human_seconds(r.time.median_s),
                           human_seconds(r.time.min_s), human_seconds(r.time.max_s));
  std::cout << "bytes: sent by the busiest rank (own share excluded); GB/s at the median time. busbw = bytes/time;\n"
               "algbw = bytes*n/(n-1)/time for alltoall and allgather over n ranks (busbw = algbw*(n-1)/n, as "
               "nccl-tests),\nalgbw = busbw for sendrecv (the ring's K,V rotation, timed with the attention it "
               "overlaps)\n";
}

std::vector<std::string> comma_list(const std::string& list) {
  std::vector<std::string> out;
  for (size_t start = 0; start <= list.size();) {
    const size_t comma = std::min(list.find(',', start), list.size());
    out.push_back(list.substr(start, comma - start));
    start = comma + 1;
  }
  return out;
}

// --inputs q.npy,k.npy,v.npy[,do.npy]: each [S, H, D] or [B, S, H, D] (S the total tokens of the
// packed sequences), checked against the shape the flags give; dO (O's shape) for a backward.
backends::GivenInputs read_inputs(const std::string& list, const AttentionShape& s, Pass pass, bool& batch_axis) {
  const std::vector<std::string> paths = comma_list(list);
  if (!has_backward(pass) && paths.size() != 3)
    throw Error("--inputs " + list + ": give three files, q.npy,k.npy,v.npy");
  if (has_backward(pass) && paths.size() != 3 && paths.size() != 4)
    throw Error("--inputs " + list + ": give q.npy,k.npy,v.npy and, for the backward, do.npy (dO; generated when left out)");
  backends::GivenInputs in;
  in.total_tokens = s.total_tokens();
  in.q_heads = s.q_heads;
  in.kv_heads = s.kv_heads;
  in.head_dim = s.head_dim;
  in.v_head_dim = s.v_head_dim;
  in.offsets.assign(s.seq_lens.size(), 0);
  for (size_t i = 1; i < s.seq_lens.size(); ++i) in.offsets[i] = in.offsets[i - 1] + s.seq_lens[i - 1];
  const int64_t heads[4] = {s.q_heads, s.kv_heads, s.kv_heads, s.q_heads};
  const int64_t dims[4] = {s.head_dim, s.head_dim, s.v_head_dim, s.v_head_dim};
  std::vector<float>* into[4] = {&in.q, &in.k, &in.v, &in.d_out};
  for (int i = 0; i < static_cast<int>(paths.size()); ++i) {
    NpyArray a = read_npy(paths[size_t(i)]);
    std::vector<int64_t> want = {s.total_tokens(), heads[i], dims[i]};
    if (a.shape.size() == 4 || s.batch > 1) want.insert(want.begin(), s.batch);
    if (a.shape != want) {
      std::string got, expected;
      for (int64_t d : a.shape) got += (got.empty() ? "" : ", ") + std::to_string(d);
      for (int64_t d : want) expected += (expected.empty() ? "" : ", ") + std::to_string(d);
      throw Error("--inputs: " + paths[size_t(i)] + " has shape (" + got + "), the flags say (" + expected +
                  ") = ([batch,] tokens, heads, head dim)");
    }
    batch_axis = batch_axis || a.shape.size() == 4;
    *into[i] = std::move(a.data);
  }
  return in;
}

void print_csv_header() {
  std::cout << "strategy,ulysses,ring,world,seq,phase,median_s,min_s,max_s,collective,ranks,bytes,algbw_GBps,busbw_GBps\n";
}

void print_csv(const Layout& layout, const backends::RunResult& r) {
  const std::string prefix = fmt::format("{},{},{},{},{}", to_string(layout.strategy()), layout.ulysses(), layout.ring(),
                                         layout.world(), semicolons(seq_lens_text(layout.shape().seq_lens)));
  const auto row = [&](std::string_view name, const backends::Spread& time, const std::optional<Traffic>& t) {
    std::cout << fmt::format("{},{},{:.6e},{:.6e},{:.6e},", prefix, name, time.median_s, time.min_s, time.max_s);
    if (t)
      std::cout << fmt::format("{},{},{},{:.6f},{:.6f}\n", t->collective, t->n, t->bytes, t->algbw(time.median_s) / kGB,
                               t->busbw(time.median_s) / kGB);
    else
      std::cout << ",,,,\n";
  };
  for (const auto& p : r.phases) row(to_string(p.phase), p.time, traffic(layout, p.phase));
  row("total", r.time, std::nullopt);
}

}  // namespace

int cmd_run(const Args& args) {
  ShapeArgs shape;
  MeshArgs mesh;
  RunArgs run;
  StrategyArgs choice;
  bool csv = false;
  std::string inputs, save_output;
  po::options_description desc("run options");
  add_shape_options(desc, shape);
  add_mesh_options(desc, mesh);
  add_run_options(desc, run);
  add_strategy_options(desc, choice);
  desc.add_options()("csv", po::bool_switch(&csv), "print CSV: one row per sequence length and phase")(
      "inputs", po::value(&inputs),
      "q.npy,k.npy,v.npy[,do.npy]: Q, K, V (and the backward's dO) to run on ([batch,] tokens, heads, dim; "
      "float32/64)")(
      "out", po::value(&save_output),
      "write O to this .npy (float32, [batch,] tokens, q heads, v head dim); with a backward pass four files "
      "o.npy,dq.npy,dk.npy,dv.npy (dQ, dK, dV like Q, K, V)");
  add_pass_option(desc, run);
  if (!parse_args(args, desc,
                  "usage: cptune run --world P [--strategy NAME] --seq S --heads H [--kv-heads K] [--verify] [options]\n"
                  "Starts P local CPU ranks over Gloo; under torchrun, mpirun or srun it is one rank of the\n"
                  "launcher's world (--world and --rendezvous default to the launcher's). --seq a:b:xF sweeps\n"
                  "sequence lengths like nccl-tests' -b/-e/-f."))
    return 0;
  if (csv && choice.json) throw Error("give --csv or --json, not both");
  join_outside_launch(mesh.world, &mesh.ranks_per_node, run);
  std::vector<int64_t> seqs{0};
  if (shape.seq.find(':') != std::string::npos) seqs = parse_range(shape.seq, "--seq");
  backends::ExecutorOptions options = executor_options(run);
  std::optional<backends::GivenInputs> given;
  bool batch_axis = false;  // O gets a batch axis when the inputs had one
  if ((!inputs.empty() || !save_output.empty()) && seqs.size() > 1)
    throw Error("--inputs and --out take one shape; drop the --seq range");
  if (!inputs.empty()) {
    given = read_inputs(inputs, to_shape(shape), options.pass, batch_axis);
    options.inputs = &*given;
  }
  const std::vector<std::string> outputs = save_output.empty() ? std::vector<std::string>{} : comma_list(save_output);
  if (!outputs.empty() && outputs.size() != (has_backward(options.pass) ? 4u : 1u))
    throw Error("--out " + save_output + ": give " +
                (has_backward(options.pass) ? "four files o.npy,dq.npy,dk.npy,dv.npy for --pass " +
                                                  std::string(to_string(options.pass))
                                            : std::string("one file o.npy (four with --pass bwd or fwd+bwd)")));
  for (const std::string& file : outputs) check_writable(file, "--out");
  options.collect_output = !save_output.empty();
  int code = 0;
  if (csv) print_csv_header();
  for (size_t i = 0; i < seqs.size(); ++i) {
    ShapeArgs one = shape;
    if (seqs[i] > 0) one.seq = std::to_string(seqs[i]);
    const Layout layout = Layout::build(to_spec(one, mesh, choice));
    check_host_memory(run, {&layout, 1}, run.verify);
    RunArgs step = run;
    if (seqs.size() > 1) step.run_id = run.run_id + "-" + std::to_string(i);  // fresh keys in a shared store
    code = std::max(code, run_ranks(step, layout.world(), [&](backends::Comm& world, backends::Device& device) {
      options.device = &device;
      const backends::RunResult result = backends::execute(layout, world, options);
      if (world.rank() == 0) {
        if (csv)
          print_csv(layout, result);
        else if (choice.json)  // a sweep prints JSON Lines: one document per sequence length
          std::cout << result_json(layout, result, world.backend(), options.pass).dump(seqs.size() > 1 ? -1 : 2) << "\n";
        else
          print_result(layout, result, world.backend(), options.warmups, options.pass);
        std::cout << std::flush;
        if (!outputs.empty()) {
          const AttentionShape& s = layout.shape();
          const auto save = [&](const std::string& path, int64_t heads, int64_t dim, const std::vector<float>& values) {
            NpyArray a{{s.total_tokens(), heads, dim}, values};
            if (s.batch > 1 || batch_axis) a.shape.insert(a.shape.begin(), s.batch);
            write_npy(path, a);
          };
          save(outputs[0], s.q_heads, s.v_head_dim, result.output);
          if (outputs.size() == 4) {
            save(outputs[1], s.q_heads, s.head_dim, result.grad_q);
            save(outputs[2], s.kv_heads, s.head_dim, result.grad_k);
            save(outputs[3], s.kv_heads, s.v_head_dim, result.grad_v);
          }
        }
      }
      return result.max_abs_err && !result.verified() ? 1 : 0;
    }, std::cerr));
  }
  return code;
}

}  // namespace cptune::cli
