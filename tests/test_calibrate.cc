// Calibration and validation: the fit recovers known hardware from the model's own predictions,
// residuals and validation statistics mean what they say on hand-made cases, the model's shared
// compute units and operation latency keep its floor and monotonicity, bad input exits 2, and a
// tiny real calibrate -> validate -> tune round trip produces files that parse and numbers in range.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>
#include <random>

#include <fmt/format.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "db/store.h"
#include "sim/candidates.h"
#include "sim/cost_model.h"
#include "sim/hardware.h"
#include "tests/command.h"
#include "tests/temp_dir.h"
#include "tuner/calibrate.h"
#include "tuner/nccl_tests.h"
#include "tuner/probes.h"
#include "tuner/validation_stats.h"

namespace cptune::tuner {
namespace {

using testing::run_command;
using testing::TempDir;

std::string cptune(const std::string& args) { return std::string(CPTUNE_BINARY) + " " + args; }

// A machine unlike the cpu-gloo preset the fit starts from, in every fitted parameter.
sim::Hardware truth() {
  sim::Hardware hw = sim::load_hardware("cpu-gloo");
  hw.name = "truth";
  hw.intra = {3e-4, 7e8};
  hw.attention_flops_per_s = {2.2e10, 1.3e10, 1.7e10};
  hw.memory_bandwidth_bytes_per_s = 3e9;
  hw.host_gather_alpha_s = 6e-4;
  hw.compute_units_per_node = 1.4;
  hw.operation_latency_s = 2.5e-3;
  hw.overlap_exposed_fraction = 0.6;
  hw.backward_compute_factor = 1.7;
  return hw;
}

Probe exchange_probe(ProbeKind kind, int64_t peers, int64_t bytes, int64_t copy) {
  Probe p;
  p.kind = kind;
  p.label = std::string(to_string(kind));
  p.exchange.peers[0] = peers;
  p.exchange.bytes[0] = bytes;
  p.exchange.copy_bytes = copy;
  return p;
}

Probe attention_probe(int64_t flops, int active, DType dtype) {
  Probe p;
  p.kind = ProbeKind::attention;
  p.label = "attention";
  p.flops = flops;
  p.node.flops_ranks = {{flops, active}};
  p.dtype = dtype;
  return p;
}

// The loads of a 4-rank plan like the default one, "measured" as the model predicts them on
// `hw` times (1 + Gaussian noise of `noise` relative standard deviation).
std::vector<Probe> synthetic_probes(const sim::Hardware& hw, double noise, uint64_t seed) {
  std::vector<Probe> probes;
  for (int64_t g : {4, 2}) {
    probes.push_back(exchange_probe(ProbeKind::gather, g - 1, 16 * (g - 1), 0));
    for (int64_t bytes : {1 << 10, 16 << 10, 128 << 10, 512 << 10, 2 << 20})
      probes.push_back(exchange_probe(ProbeKind::alltoallv, g - 1, bytes * (g - 1), 0));
  }
  for (int64_t bytes : {4 << 10, 64 << 10, 512 << 10, 2 << 20, 8 << 20}) {
    Probe hop;
    hop.kind = ProbeKind::ring_hop;
    hop.label = "ring";
    hop.hop_bytes = bytes;
    probes.push_back(hop);
  }
  for (int64_t bytes : {256 << 10, 2 << 20, 16 << 20}) probes.push_back(exchange_probe(ProbeKind::copy, 0, 0, 2 * bytes));
  for (int64_t flops : {int64_t(3e7), int64_t(3e8), int64_t(1.2e9)}) probes.push_back(attention_probe(flops, 4, DType::bf16));
  for (DType d : {DType::fp16, DType::fp32}) probes.push_back(attention_probe(int64_t(3e8), 4, d));
  for (int active : {1, 2, 3}) probes.push_back(attention_probe(int64_t(5e8), active, DType::bf16));
  for (int64_t flops : {int64_t(1e8), int64_t(6e8)}) {
    Probe backward = attention_probe(flops, 4, DType::bf16);
    backward.kind = ProbeKind::attention_bwd;
    probes.push_back(backward);
  }
  for (auto [flops, bytes] : {std::pair<int64_t, int64_t>{int64_t(3e7), 64 << 10}, {int64_t(3e7), 1 << 20},
                              {int64_t(1.3e8), 2 << 20}, {int64_t(3e8), 512 << 10}}) {
    Probe step = attention_probe(flops, 4, DType::bf16);
    step.kind = ProbeKind::ring_step;
    step.hop_bytes = bytes;
    probes.push_back(step);
  }
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> jitter(0.0, noise);
  for (Probe& p : probes) p.measured_s = predict_probe(p, hw) * (1 + jitter(rng));
  return probes;
}

double relative_gap(double got, double want) { return std::fabs(got - want) / want; }

TEST(CalibrationFit, RecoversKnownParametersFromTheModelsOwnPredictionsWithNoise) {
  const sim::Hardware want = truth();
  const FitResult fit = fit_hardware(synthetic_probes(want, 0.02, 7), sim::load_hardware("cpu-gloo"));
  const Eigen::VectorXd got = sim::to_vector(fit.hardware), expected = sim::to_vector(want);
  for (const std::string& name : fit.fitted) {
    const size_t i = size_t(std::find(sim::kFitParameterNames.begin(), sim::kFitParameterNames.end(), name) -
                            sim::kFitParameterNames.begin());
    EXPECT_LT(relative_gap(got[Eigen::Index(i)], expected[Eigen::Index(i)]), 0.1)
        << name << ": fitted " << got[Eigen::Index(i)] << ", true " << expected[Eigen::Index(i)];
  }
  EXPECT_EQ(fit.fitted.size(), 11u);
  // One host: nothing crosses a network, and CPU ranks have no device to sync.
  EXPECT_EQ(fit.kept, (std::vector<std::string>{"inter.alpha_s", "inter.bandwidth_bytes_per_s", "device_sync_s"}));
  EXPECT_EQ(fit.hardware.inter.alpha_s, sim::load_hardware("cpu-gloo").inter.alpha_s);
}

TEST(CalibrationFit, NoiselessProbesAreFitExactly) {
  const FitResult fit = fit_hardware(synthetic_probes(truth(), 0.0, 1), sim::load_hardware("cpu-gloo"));
  for (const Residual& r : fit.residuals) EXPECT_LT(std::fabs(r.relative()), 1e-4) << r.probe.label;
}

TEST(CalibrationFit, ResidualsAreSummarisedPerProbeKindThenOverall) {
  Probe hop;
  hop.kind = ProbeKind::ring_hop;
  hop.measured_s = 1.0;
  Probe attention = attention_probe(1, 1, DType::bf16);
  attention.measured_s = 2.0;
  const std::vector<Residual> residuals{{hop, 1.1}, {hop, 0.7}, {hop, 1.0}, {attention, 2.5}};
  const std::vector<ResidualSummary> s = summarize(residuals);
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].kind, "ring-hop");
  EXPECT_EQ(s[0].probes, 3u);
  EXPECT_NEAR(s[0].median_abs, 0.1, 1e-12);
  EXPECT_NEAR(s[0].max_abs, 0.3, 1e-12);
  EXPECT_EQ(s[1].kind, "attention");
  EXPECT_NEAR(s[1].median_abs, 0.25, 1e-12);
  EXPECT_EQ(s[2].kind, "all");
  EXPECT_EQ(s[2].probes, 4u);
  EXPECT_NEAR(s[2].median_abs, 0.175, 1e-12);
  EXPECT_NEAR(s[2].max_abs, 0.3, 1e-12);
}

TEST(CalibrationFit, RejectsNoProbesAndTimesThatAreNotPositive) {
  const sim::Hardware base = sim::load_hardware("cpu-gloo");
  EXPECT_THROW(fit_hardware({}, base), Error);
  std::vector<Probe> probes = synthetic_probes(truth(), 0.0, 1);
  probes[3].measured_s = 0;
  EXPECT_THROW(fit_hardware(probes, base), Error);
  probes[3].measured_s = NAN;
  EXPECT_THROW(fit_hardware(probes, base), Error);
}

// ---------------------------------------------------------------------------------------------
// The model's terms for CPU ranks: shared compute units and a fixed cost per operation.

TEST(SharedComputeUnits, ProcessorSharingWorkedByHand) {
  sim::Hardware hw = truth();
  hw.attention_flops_per_s.bf16 = 1.0;  // one FLOP per second: times read as work
  const sim::NodeWork ranks{{{1, 1}, {3, 1}, {5, 1}, {7, 1}}};
  hw.compute_units_per_node = 2;
  // 4 ranks share 2 units (1/2 each) until t=2, 3 ranks (2/3 each) until 5, then one unit each: 7, 9.
  EXPECT_NEAR(sim::node_attention_time_s(ranks, DType::bf16, hw), 9.0, 1e-9);
  hw.compute_units_per_node = 1;
  EXPECT_NEAR(sim::node_attention_time_s(ranks, DType::bf16, hw), 16.0, 1e-9);  // all the work, one unit
  hw.compute_units_per_node = 4;
  EXPECT_NEAR(sim::node_attention_time_s(ranks, DType::bf16, hw), 7.0, 1e-9);  // the slowest rank alone
  hw.compute_units_per_node = 0;
  EXPECT_EQ(sim::node_attention_time_s(ranks, DType::bf16, hw), 0.0);  // devices of their own: not shared
}

TEST(SharedComputeUnits, MoreUnitsAreNeverSlowerAndNoPhaseBeatsItsSlowestRank) {
  AttentionShape shape;
  shape.seq_lens = {1000};
  shape.q_heads = 6;
  shape.kv_heads = 2;
  shape.head_dim = 64;
  shape.v_head_dim = 64;
  shape.mask = {MaskKind::causal, 0};
  const Cluster cluster{4, 4};
  sim::Hardware hw = truth();
  sim::for_each_candidate(shape, cluster, [&](const LayoutChoice& c, const Layout& layout) {
    const sim::PreparedLayout p = sim::prepare(layout);
    double previous = INFINITY;
    for (double units : {0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 8.0}) {
      hw.compute_units_per_node = units;
      const double t = sim::predict(p, hw).phase(Phase::attention);
      EXPECT_LE(t, previous * (1 + 1e-12)) << to_string(c) << " units " << units;
      EXPECT_GE(t * (1 + 1e-12), sim::attention_time_s(p.max_flops, DType::bf16, hw)) << to_string(c);
      previous = t;
    }
  });
}

TEST(RingOverlap, AStepLastsTheLongerPlusTheExposedShareOfTheShorter) {
  sim::Hardware hw = truth();
  EXPECT_NEAR(sim::ring_step_time_s(2.0, 5.0, hw), 5.0 + 0.6 * 2.0, 1e-12);
  EXPECT_NEAR(sim::ring_step_time_s(5.0, 2.0, hw), 5.0 + 0.6 * 2.0, 1e-12);
  hw.overlap_exposed_fraction = 0;  // the GPU presets: a perfect overlap, as before
  EXPECT_EQ(sim::ring_step_time_s(2.0, 5.0, hw), 5.0);
}

TEST(OperationLatency, AddsOncePerOperationWhateverThePeers) {
  sim::Hardware hw = truth();
  sim::ExchangeLoad a2a;
  a2a.peers[0] = 3;
  a2a.bytes[0] = 3000;
  const double without = [&] {
    sim::Hardware h = hw;
    h.operation_latency_s = 0;
    return sim::exchange_time_s(a2a, h);
  }();
  EXPECT_NEAR(sim::exchange_time_s(a2a, hw) - without, hw.operation_latency_s, 1e-15);
  EXPECT_EQ(sim::exchange_time_s(sim::ExchangeLoad{}, hw), 0.0);  // no peers: no operation
  EXPECT_EQ(sim::hop_time_s(sim::LevelBytes{}, hw), 0.0);
  EXPECT_NEAR(sim::hop_time_s(sim::LevelBytes{700000000}, hw), hw.operation_latency_s + hw.intra.alpha_s + 1.0, 1e-12);
}

// ---------------------------------------------------------------------------------------------
// Validation statistics on hand-made cases.

TEST(KendallTau, OrdersAgreeingDisagreeingAndTied) {
  const std::vector<double> x{1, 2, 3, 4};
  EXPECT_DOUBLE_EQ(kendall_tau_b(x, std::vector<double>{10, 20, 30, 40}), 1.0);
  EXPECT_DOUBLE_EQ(kendall_tau_b(x, std::vector<double>{4, 3, 2, 1}), -1.0);
  // One swapped neighbour pair of six: (5 - 1) / 6.
  EXPECT_DOUBLE_EQ(kendall_tau_b(x, std::vector<double>{1, 3, 2, 4}), 4.0 / 6.0);
  // tau-b with a tie in y: 5 concordant, 0 discordant, 6 untied in x, 5 in y.
  EXPECT_DOUBLE_EQ(kendall_tau_b(x, std::vector<double>{1, 2, 2, 4}), 5.0 / std::sqrt(30.0));
  EXPECT_TRUE(std::isnan(kendall_tau_b(std::vector<double>{1}, std::vector<double>{1})));
  EXPECT_TRUE(std::isnan(kendall_tau_b(x, std::vector<double>{2, 2, 2, 2})));
}

TEST(KendallTau, ResolvedPairsLeaveOutThoseTheMeasurementCannotOrder) {
  // 100 and 103 are 3% apart: within a 5% tolerance that pair is left out, the other two agree.
  size_t pairs = 0;
  EXPECT_DOUBLE_EQ(resolved_tau(std::vector<double>{1, 2, 3}, std::vector<double>{103, 100, 200}, 0.05, &pairs), 1.0);
  EXPECT_EQ(pairs, 2u);
  EXPECT_TRUE(std::isnan(resolved_tau(std::vector<double>{1, 2}, std::vector<double>{100, 101}, 0.05, &pairs)));
  EXPECT_EQ(pairs, 0u);
}

ShapeValidation hand_made_shape(const std::vector<std::pair<Strategy, double>>& predicted_order,
                                const std::vector<double>& measured) {
  ShapeValidation s;
  for (size_t i = 0; i < measured.size(); ++i) {
    CandidateMeasurement c;
    c.candidate.strategy = predicted_order[i].first;
    c.predicted_s = predicted_order[i].second;
    c.measured_s = c.min_s = c.max_s = measured[i];
    s.candidates.push_back(c);
  }
  return s;
}

TEST(TopK, WithinToleranceOfTheExhaustiveBest) {
  EXPECT_TRUE(within_tolerance(1.05, 1.0, 0.05));
  EXPECT_FALSE(within_tolerance(1.0501, 1.0, 0.05));
  // Six candidates of two strategies; the measured best (0.90) is predicted 5th.
  const ShapeValidation s = hand_made_shape({{Strategy::uaa, 1.0},
                                             {Strategy::uaa, 1.1},
                                             {Strategy::uaa, 1.2},
                                             {Strategy::uaa, 1.3},
                                             {Strategy::ring, 1.4},
                                             {Strategy::ring, 1.5}},
                                            {0.95, 1.0, 1.0, 1.0, 0.90, 2.0});
  const SelectionOutcome plain = outcome_of(s, plain_top_k(s, 3));
  EXPECT_EQ(plain.measured, 3u);
  EXPECT_DOUBLE_EQ(plain.found_s, 0.95);
  EXPECT_DOUBLE_EQ(plain.best_s, 0.90);
  EXPECT_FALSE(within_tolerance(plain.found_s, plain.best_s, 0.05));  // 5.6% slower
  EXPECT_TRUE(within_tolerance(plain.found_s, plain.best_s, 0.06));
  // The tuner's rule adds the best predicted ring, which is the measured best.
  EXPECT_EQ(tuner_selection(s, 3), (std::vector<size_t>{0, 1, 2, 4}));
  const SelectionOutcome tuner = outcome_of(s, tuner_selection(s, 3));
  EXPECT_DOUBLE_EQ(tuner.found_s, 0.90);
  EXPECT_DOUBLE_EQ(tuner.fraction(), 4.0 / 6.0);
}

TEST(TopK, ReportCountsShapesAndTheCurveEndsAtEverything) {
  const std::vector<ShapeValidation> shapes{
      hand_made_shape({{Strategy::uaa, 1}, {Strategy::ring, 2}, {Strategy::ulysses, 3}}, {1.0, 2.0, 3.0}),
      hand_made_shape({{Strategy::uaa, 1}, {Strategy::ring, 2}, {Strategy::ulysses, 3}}, {3.0, 2.0, 1.0})};
  const ValidationReport r = summarize_validation(shapes, 1, 0.05);
  EXPECT_EQ(r.top_is_best, 1u);
  EXPECT_EQ(r.top_within, 1u);
  EXPECT_DOUBLE_EQ(r.median_tau, 0.0);  // +1 and -1
  EXPECT_EQ(r.plain_within, 1u);
  EXPECT_EQ(r.tuner_within, 2u);  // one per strategy: every candidate measured
  EXPECT_DOUBLE_EQ(r.tuner_mean_fraction, 1.0);
  ASSERT_EQ(r.curve.size(), 3u);
  EXPECT_EQ(r.curve.back().within, 2u);
  EXPECT_DOUBLE_EQ(r.curve.back().mean_fraction, 1.0);
  ASSERT_EQ(r.errors.back().group, "all");
  EXPECT_EQ(r.errors.back().count, 6u);
  EXPECT_THROW(summarize_validation(shapes, 0, 0.05), Error);
  EXPECT_THROW(summarize_validation(shapes, 3, -1), Error);
}

// ---------------------------------------------------------------------------------------------
// The CLI.

// ---- nccl-tests logs: what a crafted or broken log must not do (issue 26) -------------------------

// An nccl-tests log: one host of n ranks, time = intercept + size x f / busbw at each size.
std::string nccl_log(NcclTestKind kind, int n, double intercept_us, double busbw_gbs,
                     const std::function<double(int64_t, double)>& time_of = nullptr) {
  const double f = kind == NcclTestKind::sendrecv ? 1.0 : double(n - 1) / n;
  std::string text = fmt::format("# Collective test starting: {}_perf\n#\n", to_string(kind));
  for (int r = 0; r < n; ++r)
    text += fmt::format("#  Rank {:2d} Group  0 Pid {:6d} on host-0 device {:2d} [0x{:02x}] NVIDIA L20\n", r, 100 + r, r, 16 + r);
  text += "#       size         count      type   redop    root     time   algbw   busbw #wrong     time   algbw   busbw #wrong\n";
  for (int64_t size = 1024; size <= (int64_t(1) << 30); size *= 4) {
    double t = intercept_us + double(size) * f / (busbw_gbs * 1e3);
    if (time_of) t = time_of(size, t);
    const double algbw = double(size) / t / 1e3;
    text += fmt::format("{:12d} {:12d} float none -1 {:.2f} {:.2f} {:.2f} 0 {:.2f} {:.2f} {:.2f} 0\n", size, size / 4, t, algbw,
                        algbw * f, t, algbw, algbw * f);
  }
  return text;
}

std::string nccl_error(const std::string& text) {
  try {
    fit_link(parse_nccl_tests(text, "crafted.txt", std::nullopt));
  } catch (const Error& e) {
    return e.what();
  }
  return "accepted";
}

TEST(NcclTestsCrafted, NonFiniteOrNegativeColumnsAreRefusedNamingTheLine) {
  const std::string good = nccl_log(NcclTestKind::alltoall, 4, 20, 10);
  ASSERT_EQ(nccl_error(good), "accepted");
  const size_t row = good.find("\n        4096") + 1;  // the second data row
  const size_t end = good.find('\n', row);
  const std::string fields = good.substr(row, end - row);
  auto with_row = [&](const std::string& replacement) { return good.substr(0, row) + replacement + good.substr(end); };
  for (const char* bad : {"4096 1024 float none -1 nan 0.2 0.1 0 20 0.2 0.1 0", "4096 1024 float none -1 20.0 nan 0.1 0 20 0.2 0.1 0",
                          "4096 1024 float none -1 20.0 0.2 inf 0 20 0.2 0.1 0", "4096 1024 float none -1 20.0 -0.2 0.1 0 20 0.2 0.1 0",
                          "4096 1024 float none -1 20.0 0.2 -0.1 0 20 0.2 0.1 0", "4096 1024 float none -1 1e999 0.2 0.1 0 20 0.2 0.1 0"}) {
    const std::string e = nccl_error(with_row(bad));
    EXPECT_NE(e.find("crafted.txt line"), std::string::npos) << bad << ": " << e << " (row was " << fields << ")";
  }
}

TEST(NcclTestsCrafted, ConstantOrFallingTimesFitNoBandwidth) {
  // Constant times: any slope fits; the old fit printed 1.3e20 GB/s and exited 0.
  const std::string flat = nccl_log(NcclTestKind::alltoall, 4, 20, 10, [](int64_t size, double) { return 30.0 + 1e-9 * double(size % 7); });
  EXPECT_NE(nccl_error(flat).find("never becomes bandwidth-bound"), std::string::npos) << nccl_error(flat);
  // Time falling with size: no bandwidth, and the message says so without a "-nan" slope.
  const std::string falling = nccl_log(NcclTestKind::sendrecv, 2, 20, 10, [](int64_t size, double) { return 1e6 / std::log2(double(size)); });
  const std::string e = nccl_error(falling);
  EXPECT_NE(e.find("does not grow with size"), std::string::npos) << e;
  EXPECT_EQ(e.find("nan"), std::string::npos) << e;
  // A sweep that stops in the latency regime (bytes under a fifth of the largest size's time).
  const std::string latency_only = nccl_log(NcclTestKind::alltoall, 4, 20000, 400);
  EXPECT_NE(nccl_error(latency_only).find("never becomes bandwidth-bound"), std::string::npos) << nccl_error(latency_only);
}

TEST(NcclTestsCrafted, DuplicatedOrMissingRankLinesAreRefused) {
  const std::string good = nccl_log(NcclTestKind::alltoall, 4, 20, 10);
  const size_t first = good.find("#  Rank"), after = good.find("#       size");
  std::string repeated = good.substr(0, first);
  for (int i = 0; i < 2502; ++i) repeated += good.substr(first, after - first);  // 10,008 rank lines, 4 ranks
  repeated += good.substr(after);
  EXPECT_NE(nccl_error(repeated).find("rank 0 is listed twice"), std::string::npos) << nccl_error(repeated);
  std::string gap = good;
  const size_t rank1 = gap.find("#  Rank  1");
  gap.erase(rank1, gap.find('\n', rank1) - rank1 + 1);
  EXPECT_NE(nccl_error(gap).find("highest rank is 3"), std::string::npos) << nccl_error(gap);
}

TEST(NcclTestsCrafted, ALineOverTheBoundIsRefusedWithoutCopyingIt) {
  const std::string good = nccl_log(NcclTestKind::alltoall, 4, 20, 10);
  const std::string e = nccl_error(std::string(kMaxNcclTestsLineBytes + 1, 'x') + "\n" + good);
  EXPECT_NE(e.find("crafted.txt line 1"), std::string::npos) << e;
  EXPECT_NE(e.find("bytes long"), std::string::npos) << e;
}

// The command itself on files that are not logs: a FIFO with no writer, a device, a file over
// 64 MiB. Each must be refused at once with exit 2 (the old reader waited forever on the FIFO and
// read /dev/zero until 4 GiB).
TEST(NcclTestsCrafted, CalibrateRefusesSpecialAndOversizedFilesAtOnce) {
  TempDir dir;
  ASSERT_EQ(mkfifo(dir.file("fifo").c_str(), 0600), 0);
  ASSERT_EQ(run_command("truncate -s 100M " + dir.file("big.txt")).exit_code, 0);
  for (const auto& [file, needle] : {std::pair{dir.file("fifo"), "is a FIFO"}, std::pair{std::string("/dev/zero"), "is a device"},
                                     std::pair{dir.file("big.txt"), "larger than 64 MiB"}}) {
    const auto r = run_command("ulimit -v 2000000; timeout 20 " +
                               cptune(fmt::format("calibrate --nccl-tests alltoall={} --base l20 --out {}", file, dir.file("o.json"))));
    EXPECT_EQ(r.exit_code, 2) << file << ": " << r.output;
    EXPECT_NE(r.output.find(needle), std::string::npos) << file << ": " << r.output;
    EXPECT_NE(r.output.find(file), std::string::npos) << r.output;
  }
  std::ofstream(dir.file("nan.txt")) << nccl_log(NcclTestKind::alltoall, 4, 20, 10, [](int64_t size, double t) {
    return size == 4096 ? NAN : t;
  });
  const auto r = run_command(cptune(fmt::format("calibrate --nccl-tests {} --base l20 --out {}", dir.file("nan.txt"), dir.file("o.json"))));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("line"), std::string::npos) << r.output;
}

// ---- nccl-tests per collective (issue 23) --------------------------------------------------------

// On an 8 x L20 host the alltoall through the CPUs is far slower per byte than the sendrecv ring
// of the same GPUs: each goes into its own entry of the host level, and the ranking follows.
TEST(NcclTestsPerCollective, AlltoallAndSendrecvGetTheirOwnEntriesAndMoveTheRanking) {
  const sim::Hardware base = sim::load_hardware("l20");
  const std::vector<NcclTestsRun> runs = {
      parse_nccl_tests(nccl_log(NcclTestKind::alltoall, 8, 60, 3.0), "a2a.txt", std::nullopt),
      parse_nccl_tests(nccl_log(NcclTestKind::sendrecv, 8, 12, 11.0), "sr.txt", std::nullopt)};
  const sim::Hardware hw = apply_nccl_tests(base, runs);
  const size_t host = 2;
  ASSERT_EQ(hw.levels[host].name, "host");
  const sim::LinkClass* a2a = hw.levels[host].rate_of(sim::Collective::alltoall);
  const sim::LinkClass* sr = hw.levels[host].rate_of(sim::Collective::sendrecv);
  ASSERT_TRUE(a2a && sr);
  EXPECT_NEAR(a2a->bandwidth_bytes_per_s, 3.0e9, 0.05 * 3.0e9);
  EXPECT_NEAR(a2a->alpha_s, 60e-6 / 7, 0.1 * 60e-6 / 7);
  EXPECT_NEAR(sr->bandwidth_bytes_per_s, 11.0e9, 0.05 * 11.0e9);
  EXPECT_EQ(hw.levels[host].rate_of(sim::Collective::all_gather), nullptr);
  EXPECT_EQ(hw.levels[host].link, base.levels[host].link);  // the level's own numbers stay the fallback
  for (size_t i = 0; i < hw.levels.size(); ++i)
    if (i != host) EXPECT_EQ(hw.levels[i], base.levels[i]) << i;
  EXPECT_NE(hw.source.find("level 'host' alltoall"), std::string::npos) << hw.source;
  EXPECT_EQ(sim::hardware_from_json(sim::to_json(hw), "round trip").levels, hw.levels);
  // An all-to-all over the whole host now costs its measured rate; a hop its own.
  sim::ExchangeLoad e;
  e.peers = {1, 2, 4};
  e.bytes = {1 << 20, 2 << 20, 4 << 20};
  EXPECT_NEAR(sim::exchange_time_s(e, hw), hw.operation_latency_s + 7 * a2a->alpha_s + double(7 << 20) / a2a->bandwidth_bytes_per_s,
              1e-12);
  EXPECT_NEAR(sim::hop_time_s(sim::LevelBytes{0, 0, 1 << 20}, hw),
              hw.operation_latency_s + sr->alpha_s + double(1 << 20) / sr->bandwidth_bytes_per_s, 1e-12);
  // FLUX-size full attention on the 8 GPUs: Ulysses over all eight falls behind a ring.
  const AttentionShape flux{1, {4608}, 24, 24, 128, 128, DType::bf16, {MaskKind::full, 0}};
  auto rank_of = [&](const sim::Hardware& h, Strategy s, int64_t u, int64_t r) {
    const sim::Ranking ranking = sim::rank_candidates(flux, sim::cluster_of(h), h);
    for (size_t i = 0; i < ranking.candidates.size(); ++i) {
      const LayoutChoice& c = ranking.candidates[i].candidate;
      if (c.strategy == s && c.ulysses == u && c.ring == r) return std::pair{i, ranking.candidates[i].prediction.total_s};
    }
    return std::pair{ranking.candidates.size(), 0.0};
  };
  const auto [ulysses_before, ulysses_before_s] = rank_of(base, Strategy::ulysses, 8, 1);
  const auto [ulysses_after, ulysses_after_s] = rank_of(hw, Strategy::ulysses, 8, 1);
  const auto [ring_after, ring_after_s] = rank_of(hw, Strategy::ring, 1, 8);
  EXPECT_GT(ulysses_after_s, 1.5 * ulysses_before_s);
  EXPECT_GT(ulysses_after, ulysses_before);
  EXPECT_LT(ring_after, ulysses_after);
  EXPECT_LT(ring_after_s, ulysses_after_s);
}

TEST(CalibrateCli, BadInputIsNamedWithExitCode2) {
  TempDir dir;
  const std::string shapes = dir.file("shapes.csv");
  std::ofstream(shapes) << "seq,heads\n64,2\n";
  struct Case {
    std::string args, needle;
  };
  const std::vector<Case> cases = {
      {"calibrate --world 1 --out " + dir.file("p.json"), "--world 1"},
      {"calibrate --world 2", "--out is required"},
      {"calibrate --world 2 --out /nonexistent/folder/p.json", "does not exist"},
      {"calibrate --world 2 --out " + dir.path(), "is a folder"},
      {"calibrate --world 2 --backend mpi --out " + dir.file("p.json"), "--backend mpi"},
      {"calibrate --world 2 --scale 0 --out " + dir.file("p.json"), "--scale"},
      {"calibrate --world 2 --statistic mean --out " + dir.file("p.json"), "--statistic mean"},
      {"calibrate --world 2 --backend nccl --out " + dir.file("p.json"), "--backend nccl"},
      {"validate --world 0 --shapes " + shapes, "--world 0"},
      {"validate --world 2", "--shapes is required"},
      {"validate --world 2 --shapes " + dir.file("missing.csv"), "missing.csv"},
      {"validate --world 2 --shapes " + shapes + " --hardware " + dir.file("none.json"), "none.json"},
      {"validate --world 2 --shapes " + shapes + " --top 0", "--top 0"},
      {"validate --world 2 --shapes " + shapes + " --csv --out /nonexistent/v.csv", "does not exist"},
      {"validate --world 2 --shapes " + shapes + " --backend mpi", "--backend mpi"},
  };
  for (const Case& c : cases) {
    const auto r = run_command(cptune(c.args));
    EXPECT_EQ(r.exit_code, 2) << c.args << "\n" << r.output;
    EXPECT_NE(r.output.find(c.needle), std::string::npos) << c.args << "\n" << r.output;
  }
  EXPECT_FALSE(std::filesystem::exists(dir.file("p.json"))) << "a refused calibration writes nothing";
}

// Two ranks, small sizes: the whole path a user takes, in seconds.
TEST(CalibrateCli, CalibrateThenValidateThenTuneEndToEnd) {
  TempDir dir;
  const std::string profile = dir.file("profile.json");
  const auto cal = run_command(cptune("calibrate --backend gloo --world 2 --scale 0.15 --warmups 0 --iterations 2 "
                                      "--json --out " + profile));
  ASSERT_EQ(cal.exit_code, 0) << cal.output;
  const auto fit = nlohmann::json::parse(cal.output.substr(cal.output.find('{')));
  EXPECT_EQ(fit["out"], profile);
  EXPECT_GT(fit["probes"].size(), 20u);
  for (const auto& p : fit["probes"]) {
    EXPECT_GT(p["measured_s"].get<double>(), 0) << p;
    EXPECT_GT(p["predicted_s"].get<double>(), 0) << p;
  }
  EXPECT_EQ(fit["residuals"].back()["kind"], "all");
  const sim::Hardware hw = sim::load_hardware(profile);  // the simulator accepts it
  EXPECT_EQ(hw.name, "gloo-p2-calibrated");
  EXPECT_EQ(hw.ranks_per_node, 2);
  EXPECT_NE(hw.source.find("cptune calibrate"), std::string::npos);

  const std::string shapes = dir.file("held_out.csv");
  std::ofstream(shapes) << "seq,heads,kv_heads,head_dim,mask\n96,4,2,16,causal\n80,3,3,16,full\n";
  const std::string csv = dir.file("validation.csv");
  const auto val = run_command(cptune("validate --world 2 --warmups 0 --iterations 2 --json --hardware " + profile +
                                      " --shapes " + shapes + " --csv " + csv));
  ASSERT_EQ(val.exit_code, 0) << val.output;
  const auto report = nlohmann::json::parse(val.output.substr(val.output.find('{')));
  EXPECT_EQ(report["hardware"], "gloo-p2-calibrated");
  ASSERT_EQ(report["shapes"].size(), 2u);
  for (const char* key : {"top_is_best_fraction", "top_within_fraction", "tuner_within_fraction",
                          "tuner_mean_measured_fraction", "plain_within_fraction", "plain_mean_measured_fraction"}) {
    EXPECT_GE(report[key].get<double>(), 0) << key;
    EXPECT_LE(report[key].get<double>(), 1) << key;
  }
  for (const auto& shape : report["shapes"]) {
    EXPECT_GE(shape["candidates"].size(), 2u);
    if (!shape["tau"].is_null()) {
      EXPECT_GE(shape["tau"].get<double>(), -1);
      EXPECT_LE(shape["tau"].get<double>(), 1);
    }
  }
  EXPECT_GE(report["errors"].back()["median"].get<double>(), 0);
  std::ifstream rows(csv);
  std::string header;
  std::getline(rows, header);
  EXPECT_EQ(header, "shape_index,shape,strategy,candidate,predicted_s,measured_s,min_s,max_s");

  // The tuner ranks with the calibrated file and records which one.
  const std::string db = dir.file("tune.db");
  const auto tune = run_command(cptune("tune --world 2 --seq 64 --heads 2 --head-dim 16 --top 1 --iterations 1 "
                                       "--warmups 0 --db " + db + " --hardware " + profile));
  ASSERT_EQ(tune.exit_code, 0) << tune.output;
  const auto rows_json = run_command(cptune("db export --json --db " + db));
  ASSERT_EQ(rows_json.exit_code, 0) << rows_json.output;
  for (const auto& row : nlohmann::json::parse(rows_json.output))
    EXPECT_EQ(row["profile"], "gloo-p2-calibrated (profile.json)");
}

}  // namespace
}  // namespace cptune::tuner
