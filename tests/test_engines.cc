// Engine profiles and constraints (sim/constraints.h) over many shapes and worlds: a constrained
// enumeration is exactly the unconstrained one filtered by the rules, every candidate an engine
// gets is one it can express (engine_config succeeds), allgather-kv is never named a ring, and
// the lookup answers an engine only with layouts it can run: the best expressible measurement,
// else the simulator's best expressible layout. Also the C ABI's local fingerprint, fingerprint
// listing and not-found messages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "core/error.h"
#include "db/cptune_lookup.h"
#include "db/local_fingerprint.h"
#include "db/lookup.h"
#include "db/sim_fallback.h"
#include "db/store.h"
#include "sim/candidates.h"
#include "sim/constraints.h"
#include "sim/hardware.h"
#include "tests/temp_dir.h"

namespace cptune {
namespace {

using sim::ConfigFormat;
using sim::Constraints;

AttentionShape make_shape(std::vector<int64_t> seqs, int64_t heads, int64_t kv_heads, MaskKind mask = MaskKind::full) {
  AttentionShape s;
  s.seq_lens = std::move(seqs);
  s.q_heads = heads;
  s.kv_heads = kv_heads;
  s.head_dim = 64;
  s.v_head_dim = 64;
  s.mask = Mask{mask, 0};
  return s;
}

std::vector<AttentionShape> shapes() {
  std::vector<AttentionShape> out;
  for (int64_t seq : {4096, 4097, 1000, 8192 + 16})
    for (auto [h, kv] : {std::pair{25, 5}, {24, 8}, {32, 8}, {30, 30}, {8, 1}})
      for (MaskKind m : {MaskKind::full, MaskKind::causal}) out.push_back(make_shape({seq}, h, kv, m));
  out.push_back(make_shape({77, 4096}, 32, 8, MaskKind::causal));
  return out;
}

Constraints engine(std::string_view name) {
  Constraints c;
  sim::apply_engine(c, name);
  return c;
}

TEST(EngineProfiles, ConstrainedEnumerationIsTheUnconstrainedOneFilteredByTheRules) {
  for (std::string_view name : sim::engine_names()) {
    const Constraints c = engine(name);
    for (const AttentionShape& shape : shapes()) {
      for (Cluster cluster : {Cluster{3, 3}, Cluster{4, 4}, Cluster{8, 8}, Cluster{8, 4}, Cluster{16, 8}}) {
        const std::vector<LayoutChoice> all = sim::enumerate_candidates(shape, cluster);
        std::vector<sim::Refusal> refused;
        const std::vector<LayoutChoice> got = sim::enumerate_candidates(shape, cluster, &refused, c);
        std::vector<LayoutChoice> want;
        for (const LayoutChoice& k : all)
          if (c.allows(k, view_of(shape))) want.push_back(k);
        EXPECT_EQ(got, want) << name << " on " << to_string(shape) << " P=" << cluster.world;
        for (const LayoutChoice& k : got) {
          EXPECT_NO_THROW(sim::engine_config(name, k, view_of(shape), ConfigFormat::python))
              << name << " " << to_string(k);
          EXPECT_EQ(k.head_policy, HeadPolicy::balanced) << name;
        }
        for (const sim::Refusal& r : refused)
          if (r.reason.starts_with("engine ")) {
            EXPECT_NE(r.reason.find(std::string(name)), std::string::npos);
          }
      }
    }
  }
}

TEST(EngineProfiles, TheRulesRefuseWhatEachEngineCannotSplit) {
  const AttentionShape odd_heads = make_shape({4096}, 25, 5);
  const AttentionShape odd_seq = make_shape({4097}, 32, 8, MaskKind::causal);
  // 25 heads do not split over 8 Ulysses ranks: classic Ulysses is out everywhere, UAA stays
  // for the engines with Ulysses Anything.
  for (std::string_view name : sim::engine_names()) {
    const auto got = sim::enumerate_candidates(odd_heads, {8, 8}, nullptr, engine(name));
    for (const LayoutChoice& k : got) EXPECT_NE(k.strategy, Strategy::ulysses) << name;
  }
  const auto diffusers = sim::enumerate_candidates(odd_heads, {8, 8}, nullptr, engine("diffusers"));
  EXPECT_TRUE(std::any_of(diffusers.begin(), diffusers.end(), [](auto& k) { return k.strategy == Strategy::uaa; }));
  // Megatron cuts every sequence into 2 x CP chunks: 4097 tokens run nowhere on 8 ranks.
  EXPECT_TRUE(sim::enumerate_candidates(odd_seq, {8, 8}, nullptr, engine("megatron")).empty());
  EXPECT_TRUE(sim::enumerate_candidates(odd_seq, {8, 8}, nullptr, engine("prime-rl")).empty());
  // prime-rl shards causal attention only.
  EXPECT_TRUE(sim::enumerate_candidates(make_shape({4096}, 32, 8), {8, 8}, nullptr, engine("prime-rl")).empty());
}

TEST(EngineProfiles, AllgatherKvIsNeverPrintedAsARing) {
  const AttentionShape shape = make_shape({4096}, 32, 8, MaskKind::causal);
  const LayoutChoice ag{Strategy::allgather_kv, 1, 8};
  EXPECT_NE(sim::engine_config("megatron", ag, view_of(shape), ConfigFormat::args).find("--cp-comm-type all_gather"),
            std::string::npos);
  EXPECT_NE(sim::engine_config("ring-flash-attn", ag, view_of(shape), ConfigFormat::python).find("llama3"),
            std::string::npos);
  EXPECT_EQ(sim::engine_config("diffusers", ag, view_of(shape), ConfigFormat::python),
            "ContextParallelConfig(ring_degree=8)");
  EXPECT_EQ(sim::engine_config("diffusers", {Strategy::uaa, 8, 1}, view_of(make_shape({4097}, 25, 5)),
                               ConfigFormat::python),
            "ContextParallelConfig(ulysses_degree=8, ulysses_anything=True)");
  EXPECT_EQ(sim::engine_config("megatron", {Strategy::hybrid, 4, 2}, view_of(shape), ConfigFormat::args),
            "--context-parallel-size 8 --cp-comm-type a2a+p2p --hierarchical-context-parallel-sizes 4 2");
  // A layout the engine cannot express is an Error naming the engine, not a wrong config.
  EXPECT_THROW(sim::engine_config("megatron", {Strategy::uaa, 8, 1}, view_of(shape), ConfigFormat::args), Error);
  EXPECT_THROW(sim::engine_config("cache-dit", {Strategy::hybrid, 4, 2}, view_of(shape), ConfigFormat::args), Error);
}

TEST(Constraints, FlagsSelectOnlyTheirLayoutsAndContradictionsAreErrors) {
  const AttentionShape shape = make_shape({4096}, 32, 8, MaskKind::causal);
  Constraints c;
  c.ulysses = 2;
  for (const LayoutChoice& k : sim::enumerate_candidates(shape, {8, 4}, nullptr, c)) EXPECT_EQ(k.ulysses, 2);
  c = {};
  c.strategies = sim::parse_strategy_list("ring,hybrid");
  c.order = RankOrder::ring_inner;
  for (const LayoutChoice& k : sim::enumerate_candidates(shape, {8, 4}, nullptr, c)) {
    EXPECT_TRUE(k.strategy == Strategy::ring || k.strategy == Strategy::hybrid);
    EXPECT_EQ(k.order, RankOrder::ring_inner);
  }
  EXPECT_THROW(sim::parse_strategy_list("ring,spiral"), Error);
  Constraints uaa_only;
  uaa_only.strategies = {Strategy::uaa};
  EXPECT_THROW(sim::apply_engine(uaa_only, "megatron"), Error);  // megatron has no UAA
  EXPECT_THROW(engine("vllm"), Error);
}

db::Fingerprint cpu_fp(int64_t world) { return db::local_hardware_fingerprint("gloo", world, world); }

db::MeasurementRow row(LayoutChoice c, double median) {
  db::MeasurementRow r;
  r.candidate = c;
  r.median_s = r.min_s = r.max_s = median;
  r.iterations = 1;
  return r;
}

TEST(EngineLookup, AnswersTheBestExpressibleMeasurementElseTheSimulatorsBestExpressible) {
  testing::TempDir dir;
  const std::string path = dir.file("tune.db");
  const AttentionShape shape = make_shape({4096}, 24, 8);
  const AttentionShape other = make_shape({8192}, 16, 16);
  {
    db::Store store = db::Store::open(path);
    // The stored best (hybrid) is not something diffusers can run; Ulysses is second.
    store.record_shape(cpu_fp(8), shape,
                       {row({Strategy::hybrid, 4, 2}, 1e-3), row({Strategy::ulysses, 8, 1}, 2e-3),
                        row({Strategy::ring, 1, 8}, 3e-3)});
    // Nothing diffusers can run was measured here.
    store.record_shape(cpu_fp(8), other, {row({Strategy::hybrid, 2, 4}, 1e-3)});
  }
  const Constraints c = engine("diffusers");
  const db::Filter filter = [&](const LayoutChoice& k, const ShapeView& v) { return c.allows(k, v); };
  const db::Lookup plain = db::Lookup::open(path, cpu_fp(8));
  EXPECT_EQ(plain.query(shape)->choice.strategy, Strategy::hybrid);

  const db::Lookup lookup = db::Lookup::open(
      path, cpu_fp(8), db::simulator_fallback(sim::load_hardware("cpu-gloo"), {8, 8}, {}, c), filter);
  const std::optional<db::Answer> answer = lookup.query(shape);
  ASSERT_TRUE(answer);
  EXPECT_EQ(answer->choice.strategy, Strategy::ulysses);
  EXPECT_EQ(answer->source, db::Source::exact);
  EXPECT_DOUBLE_EQ(answer->time_s, 2e-3);

  const std::optional<db::Answer> simulated = lookup.query(other);
  ASSERT_TRUE(simulated);
  EXPECT_EQ(simulated->source, db::Source::simulated);
  EXPECT_TRUE(c.allows(simulated->choice, view_of(other))) << to_string(simulated->choice);
  // And for many shapes of the family: whatever the source, always expressible.
  for (int64_t seq : {1000, 4096, 4097, 6000, 100000}) {
    const AttentionShape s = make_shape({seq}, 24, 8);
    if (const auto a = lookup.query(s)) {
      EXPECT_TRUE(c.allows(a->choice, view_of(s))) << seq << " " << to_string(a->choice);
    }
  }
}

TEST(LookupAbi, LocalFingerprintMatchesWhatTuneRecordsAndMissesNameTheClosest) {
  testing::TempDir dir;
  const std::string path = dir.file("tune.db");
  db::Fingerprint recorded = cpu_fp(4);
  recorded.library_versions = "gloo 0.5.0; host Some CPU";
  recorded.cptune_version = "0.1.0";
  { db::Store::open(path).record_shape(recorded, make_shape({4096}, 8, 8), {row({Strategy::ulysses, 4, 1}, 1e-3)}); }

  EXPECT_EQ(db::local_device_model("gloo"), "cpu");
  int64_t seq = 4096;
  cptune_shape shape = {sizeof shape, 1, &seq, 1, 8, 8, 64, 64, "bf16", "full"};
  cptune_choice choice{};
  choice.struct_size = sizeof choice;
  cptune_lookup* lookup = nullptr;
  ASSERT_EQ(cptune_lookup_open_local(path.c_str(), "gloo", 4, 4, nullptr, nullptr, &lookup), CPTUNE_LOOKUP_OK)
      << cptune_lookup_last_error();
  EXPECT_EQ(cptune_lookup_query(lookup, &shape, &choice), CPTUNE_LOOKUP_OK);
  EXPECT_STREQ(choice.strategy, "ulysses");
  cptune_lookup_close(lookup);

  // World 8 was never measured: not found, and the message names the closest fingerprint.
  ASSERT_EQ(cptune_lookup_open_local(path.c_str(), "gloo", 8, 8, nullptr, nullptr, &lookup), CPTUNE_LOOKUP_OK);
  EXPECT_EQ(cptune_lookup_query(lookup, &shape, &choice), CPTUNE_LOOKUP_NOT_FOUND);
  const std::string message = cptune_lookup_last_error();
  EXPECT_NE(message.find("gloo cpu P=8"), std::string::npos) << message;
  EXPECT_NE(message.find("closest it holds is gloo cpu P=4"), std::string::npos) << message;
  cptune_lookup_close(lookup);

  size_t needed = 0;
  EXPECT_EQ(cptune_lookup_list_fingerprints(path.c_str(), nullptr, 0, &needed), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  std::string text(needed, '\0');
  ASSERT_EQ(cptune_lookup_list_fingerprints(path.c_str(), text.data(), text.size(), &needed), CPTUNE_LOOKUP_OK);
  EXPECT_NE(text.find("gloo cpu P=4 G=4 nodes=1 shapes=1 (gloo 0.5.0; host Some CPU; cptune 0.1.0)"),
            std::string::npos)
      << text;

  char config[256];
  choice = cptune_choice{};
  choice.struct_size = sizeof choice;
  std::snprintf(choice.strategy, sizeof choice.strategy, "allgather-kv");
  choice.ulysses = 1;
  choice.ring = 4;
  std::snprintf(choice.rank_order, sizeof choice.rank_order, "ulysses-inner");
  std::snprintf(choice.head_policy, sizeof choice.head_policy, "balanced");
  seq = 4096;
  shape.mask = "causal";
  ASSERT_EQ(cptune_lookup_engine_config("megatron", &shape, &choice, "args", config, sizeof config, &needed),
            CPTUNE_LOOKUP_OK)
      << cptune_lookup_last_error();
  EXPECT_STREQ(config, "--context-parallel-size 4 --cp-comm-type all_gather");
  EXPECT_EQ(cptune_lookup_engine_config("sglang", &shape, &choice, "args", config, sizeof config, &needed),
            CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(cptune_lookup_last_error()).find("sglang"), std::string::npos);
}

}  // namespace
}  // namespace cptune
