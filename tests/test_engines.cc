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

TEST(EngineProfiles, AnEngineGetsExactlyTheLayoutsItsRulesAllow) {
  for (std::string_view name : sim::engine_names()) {
    const Constraints c = engine(name);
    for (const AttentionShape& shape : shapes()) {
      for (Cluster cluster : {Cluster{3, 3}, Cluster{4, 4}, Cluster{8, 8}, Cluster{8, 4}, Cluster{16, 8}}) {
        const std::vector<LayoutChoice> all = sim::enumerate_candidates(shape, cluster);
        std::vector<sim::Refusal> refused;
        const std::vector<LayoutChoice> got = sim::enumerate_candidates(shape, cluster, &refused, c);
        // Every layout cptune builds that the rules allow is offered; more may be, where the
        // engine pads heads that cptune's own layout would refuse (its wire shape builds).
        for (const LayoutChoice& k : all)
          if (c.allows(k, view_of(shape)))
            EXPECT_NE(std::find(got.begin(), got.end(), k), got.end()) << name << " " << to_string(k);
        for (const LayoutChoice& k : got) {
          EXPECT_TRUE(c.allows(k, view_of(shape))) << name << " " << to_string(k);
          EXPECT_NO_THROW(sim::engine_config(name, k, view_of(shape), ConfigFormat::python))
              << name << " " << to_string(k);
          EXPECT_EQ(k.head_policy, HeadPolicy::balanced) << name;
        }
        // A refusal names the engine and the source of its rule (a repository @commit or a wheel).
        for (const sim::Refusal& r : refused)
          if (r.reason.starts_with("engine ")) {
            EXPECT_NE(r.reason.find(std::string(name)), std::string::npos) << r.reason;
            EXPECT_TRUE(r.reason.find(" @") != std::string::npos || r.reason.find("PyPI") != std::string::npos)
                << r.reason;
          }
      }
    }
  }
}

TEST(EngineProfiles, TheRulesRefuseWhatEachEngineCannotSplit) {
  const AttentionShape odd_heads = make_shape({4096}, 25, 5);
  const AttentionShape odd_seq = make_shape({4097}, 32, 8, MaskKind::causal);
  // 25 heads do not split over 8 Ulysses ranks, and no engine's pad rule takes 7 pad heads for 4
  // per rank: classic Ulysses is out everywhere.
  for (std::string_view name : sim::engine_names()) {
    const auto got = sim::enumerate_candidates(odd_heads, {8, 8}, nullptr, engine(name));
    for (const LayoutChoice& k : got) EXPECT_NE(k.strategy, Strategy::ulysses) << name;
  }
  // vLLM-Omni's advanced_uaa pads K/V heads to a multiple of U (ulysses.py _UlyssesHeadPlan): any heads.
  const auto omni = sim::enumerate_candidates(odd_heads, {8, 8}, nullptr, engine("vllm-omni"));
  EXPECT_TRUE(std::any_of(omni.begin(), omni.end(), [](auto& k) { return k.strategy == Strategy::uaa; }));
  // diffusers refuses GQA inside its context-parallel attention (attention_dispatch.py), so UAA too.
  const auto diffusers = sim::enumerate_candidates(odd_heads, {8, 8}, nullptr, engine("diffusers"));
  EXPECT_TRUE(diffusers.empty());
  // Megatron cuts every sequence into 2 x CP chunks: 4097 tokens run nowhere on 8 ranks.
  EXPECT_TRUE(sim::enumerate_candidates(odd_seq, {8, 8}, nullptr, engine("megatron")).empty());
  EXPECT_TRUE(sim::enumerate_candidates(odd_seq, {8, 8}, nullptr, engine("prime-rl")).empty());
  // prime-rl shards causal attention only.
  EXPECT_TRUE(sim::enumerate_candidates(make_shape({4096}, 32, 8), {8, 8}, nullptr, engine("prime-rl")).empty());
}

TEST(EngineProfiles, AllgatherKvIsNeverPrintedAsARing) {
  const AttentionShape shape = make_shape({4096}, 32, 8, MaskKind::causal);
  const AttentionShape mha = make_shape({4096}, 32, 32);
  const LayoutChoice ag{Strategy::allgather_kv, 1, 8};
  EXPECT_NE(sim::engine_config("megatron", ag, view_of(shape), ConfigFormat::args).find("--cp-comm-type all_gather"),
            std::string::npos);
  EXPECT_NE(sim::engine_config("ring-flash-attn", ag, view_of(shape), ConfigFormat::python).find("llama3"),
            std::string::npos);
  EXPECT_EQ(sim::engine_config("diffusers", ag, view_of(mha), ConfigFormat::python),
            "ContextParallelConfig(ring_degree=8)");
  EXPECT_EQ(sim::engine_config("diffusers", {Strategy::uaa, 8, 1}, view_of(make_shape({4097}, 30, 30)),
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
  // MHA: diffusers refuses GQA (attention_dispatch.py).
  const AttentionShape shape = make_shape({4096}, 24, 24);
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
    const AttentionShape s = make_shape({seq}, 24, 24);
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


TEST(LookupAbi, OpensWithoutADatabaseAndNamesTheRuleOnAMiss) {
  int64_t seq = 4096;
  cptune_shape shape = {sizeof shape, 1, &seq, 1, 24, 24, 64, 64, "bf16", "full"};
  cptune_choice choice{};
  choice.struct_size = sizeof choice;
  // cptune_lookup_open on no database: the simulator's pick on the preset the fingerprint names.
  const cptune_fingerprint fp = {sizeof fp, "gloo", "cpu", 4, 4, 1, nullptr, nullptr};
  for (const char* none : {static_cast<const char*>(nullptr), CPTUNE_LOOKUP_NO_DATABASE}) {
    cptune_lookup* lookup = nullptr;
    ASSERT_EQ(cptune_lookup_open(none, &fp, &lookup), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
    EXPECT_EQ(cptune_lookup_shapes(lookup), 0u);
    ASSERT_EQ(cptune_lookup_query(lookup, &shape, &choice), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
    EXPECT_EQ(choice.source, CPTUNE_LOOKUP_SOURCE_SIMULATED);
    cptune_lookup_close(lookup);
  }
  // A named database that does not exist stays an error.
  cptune_lookup* lookup = nullptr;
  EXPECT_EQ(cptune_lookup_open("/nonexistent/tune.db", &fp, &lookup), CPTUNE_LOOKUP_ERROR_DATABASE);
  EXPECT_EQ(lookup, nullptr);
  // An engine on a CPU fingerprint without hardware: refused, naming what to give.
  EXPECT_EQ(cptune_lookup_open_local(nullptr, "gloo", 8, 8, nullptr, "diffusers", &lookup),
            CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(cptune_lookup_last_error()).find("GPU question"), std::string::npos) << cptune_lookup_last_error();
  ASSERT_EQ(cptune_lookup_open_local(nullptr, "gloo", 8, 8, "h100-sxm", "diffusers", &lookup), CPTUNE_LOOKUP_OK)
      << cptune_lookup_last_error();
  ASSERT_EQ(cptune_lookup_query(lookup, &shape, &choice), CPTUNE_LOOKUP_OK) << cptune_lookup_last_error();
  EXPECT_EQ(choice.source, CPTUNE_LOOKUP_SOURCE_SIMULATED);
  shape.mask = "causal";  // diffusers raises on is_causal: the miss names that rule and its source
  EXPECT_EQ(cptune_lookup_query(lookup, &shape, &choice), CPTUNE_LOOKUP_NOT_FOUND);
  const std::string why = cptune_lookup_last_error();
  EXPECT_NE(why.find("is_causal"), std::string::npos) << why;
  EXPECT_NE(why.find("huggingface/diffusers @58eb52c"), std::string::npos) << why;
  cptune_lookup_close(lookup);
}

TEST(LookupAbi, ListsTheEnginesOnceAndRefusesBadDegrees) {
  size_t needed = 0;
  EXPECT_EQ(cptune_lookup_engines(nullptr, 0, &needed), CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT);
  std::string text(needed, '\0');
  ASSERT_EQ(cptune_lookup_engines(text.data(), text.size(), &needed), CPTUNE_LOOKUP_OK);
  std::string want;
  for (std::string_view name : sim::engine_names()) want += std::string(name) + "\n";
  EXPECT_EQ(std::string(text.c_str()), want);
  // engine_config divided by U and R once: U or R below 1 is an argument error, not a crash.
  int64_t seq = 4096;
  cptune_shape shape = {sizeof shape, 1, &seq, 1, 32, 8, 64, 64, "bf16", "causal"};
  cptune_choice choice{};
  choice.struct_size = sizeof choice;
  std::snprintf(choice.strategy, sizeof choice.strategy, "ulysses");
  std::snprintf(choice.rank_order, sizeof choice.rank_order, "ulysses-inner");
  std::snprintf(choice.head_policy, sizeof choice.head_policy, "balanced");
  char config[256];
  for (auto [u, r] : {std::pair<int64_t, int64_t>{0, 1}, {1, 0}, {-4, 1}, {8, -1}}) {
    choice.ulysses = u;
    choice.ring = r;
    for (std::string_view name : sim::engine_names())
      EXPECT_EQ(cptune_lookup_engine_config(std::string(name).c_str(), &shape, &choice, "args", config, sizeof config,
                                            &needed),
                CPTUNE_LOOKUP_ERROR_INVALID_ARGUMENT)
          << name << " U=" << u << " R=" << r;
  }
}

// One row per rule of every profile: (engine, layout, shape) -> allowed ("") or refused with the
// rule's words. Each refusal cites the engine's code (sim/engines/<engine>.cc names file and commit).
struct RuleCase {
  std::string_view engine;
  LayoutChoice choice;
  AttentionShape shape;
  std::string_view refused;  // "" allowed, else a phrase of the refusal
};

AttentionShape masked(std::vector<int64_t> seqs, int64_t heads, int64_t kv_heads, std::string_view mask) {
  AttentionShape s = make_shape(std::move(seqs), heads, kv_heads);
  s.mask = parse_mask(mask);
  return s;
}

std::vector<RuleCase> rule_cases() {
  using St = Strategy;
  const LayoutChoice uly8{St::ulysses, 8, 1}, uaa8{St::uaa, 8, 1}, ring8{St::ring, 1, 8}, zz8{St::ring_zigzag, 1, 8},
      ag8{St::allgather_kv, 1, 8}, hyb42{St::hybrid, 4, 2}, hyb24{St::hybrid, 2, 4};
  const LayoutChoice hyb42_ring_inner{St::hybrid, 4, 2, RankOrder::ring_inner};
  return {
      // sglang: layers/usp.py, distributed/sp_shard.py
      {"sglang", uly8, masked({4096}, 24, 8, "causal"), ""},
      {"sglang", ring8, masked({4096}, 24, 8, "full"), ""},
      {"sglang", ring8, masked({4096}, 24, 8, "causal"), "ignores the per-step is_causal"},
      {"sglang", hyb42, masked({4096}, 32, 8, "full"), ""},
      {"sglang", uly8, masked({4096}, 25, 5, "full"), "query heads do not split"},
      {"sglang", uly8, masked({4097}, 32, 8, "full"), "not a multiple of 8"},
      {"sglang", uly8, masked({4096}, 32, 8, "sliding:512"), "sliding masks are not run"},
      {"sglang", uly8, masked({77, 4099}, 32, 8, "full"), "packed sequences"},
      // diffusers: attention_dispatch.py, _modeling_parallel.py
      {"diffusers", uly8, masked({4096}, 32, 32, "full"), ""},
      {"diffusers", uly8, masked({4096}, 32, 32, "causal"), "raises on is_causal"},
      {"diffusers", uly8, masked({4096}, 32, 8, "full"), "GQA"},
      {"diffusers", uly8, masked({4097}, 32, 32, "full"), "not a multiple of 8"},
      {"diffusers", uaa8, masked({4097}, 25, 25, "full"), "pad 7 heads"},
      {"diffusers", {St::uaa, 3, 1}, masked({4097}, 25, 25, "full"), ""},
      {"diffusers", {St::uaa, 3, 1}, masked({4097}, 4, 4, "full"), "pad 2 heads"},  // pad = per rank: refused
      {"diffusers", ag8, masked({4097}, 32, 32, "full"), ""},
      {"diffusers", ag8, masked({4096}, 32, 32, "star:8"), "block masks are not run"},
      {"diffusers", ag8, masked({77, 4099}, 32, 32, "full"), "packed sequences"},
      // cache-dit: register.py, _distributed_primitives.py
      {"cache-dit", {St::ulysses, 3, 1}, masked({4095}, 25, 25, "full"), ""},
      {"cache-dit", uly8, masked({4096}, 3, 3, "full"), "pad 5 heads"},
      {"cache-dit", ring8, masked({4096}, 32, 32, "full"), ""},
      {"cache-dit", hyb24, masked({4096}, 32, 32, "full"), ""},
      {"cache-dit", hyb24, masked({4096}, 32, 32, "causal"), "raises on is_causal"},
      {"cache-dit", uaa8, masked({4097}, 32, 32, "full"), ""},
      {"cache-dit", uaa8, masked({4097}, 32, 8, "full"), "GQA"},
      // vllm-omni: factory.py, ulysses.py, ring.py
      {"vllm-omni", uaa8, masked({4097}, 25, 5, "full"), ""},
      {"vllm-omni", uly8, masked({4096}, 25, 5, "full"), "query heads do not split"},
      {"vllm-omni", ag8, masked({4096}, 32, 8, "causal"), "all-gather K/V raises on causal"},
      {"vllm-omni", ag8, masked({4096}, 32, 8, "full"), ""},
      {"vllm-omni", ring8, masked({4096}, 32, 8, "causal"), ""},
      {"vllm-omni", hyb42, masked({4096}, 32, 8, "causal"), "causal hybrid is zigzag"},
      {"vllm-omni", uly8, masked({4096}, 32, 8, "sliding:512"), "sliding masks are not run"},
      // xdit: attn_layer.py, args.py
      {"xdit", hyb42, masked({4096}, 32, 8, "full"), ""},
      {"xdit", hyb42, masked({4096}, 32, 8, "causal"), "basic ring only"},
      {"xdit", uly8, masked({4096}, 25, 5, "full"), "query heads do not split"},
      {"xdit", ring8, masked({4097}, 32, 8, "full"), "not a multiple of 8"},
      // yunchang: zigzag_ring_flash_attn.py, attn_layer.py, extract_local.py
      {"yunchang", zz8, masked({4096}, 32, 8, "full"), "zigzag asserts causal"},
      {"yunchang", zz8, masked({4096}, 32, 8, "causal"), ""},
      {"yunchang", zz8, masked({4104}, 32, 8, "causal"), "not a multiple of 16"},
      {"yunchang", hyb42_ring_inner, masked({4096}, 32, 8, "causal"), ""},
      {"yunchang", ring8, masked({4096}, 32, 8, "sliding:512"), "each block on its own"},
      {"yunchang", uly8, masked({4096}, 32, 8, "sliding:512"), ""},
      {"yunchang", uly8, masked({4096}, 32, 8, "star:8"), "block masks are not run"},
      // megatron: transformer_config.py, TE context_parallel.py
      {"megatron", zz8, masked({4096}, 32, 8, "sliding:512"), "a2a or all_gather"},
      {"megatron", hyb42, masked({4096}, 32, 8, "sliding:512"), "a2a or all_gather"},
      {"megatron", uly8, masked({4096}, 32, 8, "sliding:512"), ""},
      {"megatron", ag8, masked({4096}, 32, 8, "sliding:512"), ""},
      {"megatron", zz8, masked({4097}, 32, 8, "causal"), "not a multiple of 16"},
      {"megatron", zz8, masked({4096}, 32, 8, "star:8"), "block masks are not run"},
      {"megatron", uly8, masked({4096}, 32, 4, "causal"), "key/value heads do not split"},
      // torch-cp: _attention.py, _load_balancer.py
      {"torch-cp", zz8, masked({4096}, 32, 32, "full"), "requires is_causal=True"},
      {"torch-cp", zz8, masked({4096}, 32, 32, "causal"), ""},
      {"torch-cp", zz8, masked({4104}, 32, 32, "causal"), "not a multiple of 16"},
      {"torch-cp", ag8, masked({4096}, 32, 32, "causal"), ""},
      {"torch-cp", ring8, masked({4100}, 32, 32, "full"), "not a multiple of 8"},
      {"torch-cp", ring8, masked({4096}, 32, 8, "full"), "GQA"},
      {"torch-cp", ring8, masked({4096}, 32, 32, "sliding:512"), "attn_bias is not supported"},
      // prime-rl: attn.py, ulysses_attn.py, utils/cp.py
      {"prime-rl", ag8, masked({77, 4099}, 32, 8, "causal"), ""},
      {"prime-rl", ag8, masked({77, 4100}, 32, 8, "causal"), "packed tokens are not a multiple of 8"},
      {"prime-rl", ag8, masked({4096}, 32, 8, "full"), "the ring attention is causal"},
      {"prime-rl", ag8, masked({4096}, 32, 8, "sliding:512"), ""},
      {"prime-rl", uly8, masked({4096}, 32, 4, "causal"), ""},
      {"prime-rl", uly8, masked({4096}, 24, 3, "causal"), "neither split over nor divide"},
      {"prime-rl", uly8, masked({4096}, 32, 8, "sliding:512"), "asserts is_causal"},
      // ring-flash-attn: zigzag_ring_flash_attn.py, llama3_flash_attn_varlen.py, README.md
      {"ring-flash-attn", zz8, masked({4096}, 32, 8, "full"), "zigzag asserts causal"},
      {"ring-flash-attn", zz8, masked({4096}, 32, 8, "causal"), ""},
      {"ring-flash-attn", ring8, masked({4096}, 32, 8, "sliding:512"), "window_size is not supported"},
      {"ring-flash-attn", ag8, masked({77, 4099}, 32, 8, "causal"), ""},
      {"ring-flash-attn", ring8, masked({77, 4099}, 32, 8, "causal"), "packed sequences"},
      {"ring-flash-attn", ag8, masked({4096}, 32, 8, "star:8"), "block masks are not run"},
  };
}

TEST(EngineRules, EachRuleOfEachProfileAllowsOrRefusesWithItsReason) {
  for (const RuleCase& rc : rule_cases()) {
    const std::string why = engine(rc.engine).refusal(rc.choice, view_of(rc.shape));
    const std::string where = std::string(rc.engine) + " " + to_string(rc.choice) + " on " + to_string(rc.shape);
    if (rc.refused.empty()) {
      EXPECT_EQ(why, "") << where;
      EXPECT_NO_THROW(sim::engine_config(rc.engine, rc.choice, view_of(rc.shape), ConfigFormat::python)) << where;
    } else {
      EXPECT_NE(why.find(rc.refused), std::string::npos) << where << ": " << why;
      EXPECT_THROW(sim::engine_config(rc.engine, rc.choice, view_of(rc.shape), ConfigFormat::args), Error) << where;
    }
  }
  // Every profile is covered by the table.
  for (std::string_view name : sim::engine_names()) {
    const auto cases = rule_cases();
    EXPECT_TRUE(std::any_of(cases.begin(), cases.end(), [&](const RuleCase& rc) { return rc.engine == name; })) << name;
  }
}

TEST(EngineRules, ForwardOnlyLayoutsAreRefusedWhenABackwardPassIsAsked) {
  const AttentionShape mha = masked({4096}, 32, 32, "full");
  const AttentionShape odd = masked({4097}, 32, 32, "full");
  // Inference engines have no backward anywhere; diffusers only in its anything-modes.
  for (std::string_view name : {"sglang", "cache-dit", "vllm-omni", "xdit"})
    EXPECT_NE(sim::engine_forward_only(name, {Strategy::ulysses, 8, 1}, view_of(mha)), "") << name;
  for (std::string_view name : {"megatron", "prime-rl", "torch-cp", "ring-flash-attn", "yunchang"})
    EXPECT_EQ(sim::engine_forward_only(name, {Strategy::allgather_kv, 1, 8}, view_of(mha)), "") << name;
  EXPECT_EQ(sim::engine_forward_only("diffusers", {Strategy::ulysses, 8, 1}, view_of(mha)), "");
  EXPECT_NE(sim::engine_forward_only("diffusers", {Strategy::uaa, 8, 1}, view_of(mha)), "");
  EXPECT_EQ(sim::engine_forward_only("diffusers", {Strategy::allgather_kv, 1, 8}, view_of(mha)), "");
  EXPECT_NE(sim::engine_forward_only("diffusers", {Strategy::allgather_kv, 1, 8}, view_of(odd)), "");  // ring_anything
  Constraints c = engine("diffusers");
  c.backward = true;
  for (const LayoutChoice& k : sim::enumerate_candidates(odd, {8, 8}, nullptr, c)) {
    EXPECT_NE(k.strategy, Strategy::uaa);
    EXPECT_FALSE(k.strategy == Strategy::allgather_kv);
  }
  EXPECT_NE(c.refusal({Strategy::uaa, 8, 1}, view_of(odd)).find("forward only"), std::string::npos);
}

TEST(EngineConfigs, PrintTheEnginesOwnClassesFlagsAndInputSteps) {
  const AttentionShape causal = masked({4096}, 32, 8, "causal");
  const AttentionShape mha = masked({4097}, 32, 32, "full");
  auto py = [](std::string_view e, LayoutChoice c, const AttentionShape& s) {
    return sim::engine_config(e, c, view_of(s), ConfigFormat::python);
  };
  auto args = [](std::string_view e, LayoutChoice c, const AttentionShape& s) {
    return sim::engine_config(e, c, view_of(s), ConfigFormat::args);
  };
  EXPECT_EQ(py("cache-dit", {Strategy::uaa, 8, 1}, mha), "ParallelismConfig(ulysses_size=8, ulysses_anything=True)");
  EXPECT_EQ(py("cache-dit", {Strategy::hybrid, 2, 4}, masked({4096}, 32, 32, "full")),
            "ParallelismConfig(ulysses_size=2, ring_size=4)");
  EXPECT_EQ(py("diffusers", {Strategy::allgather_kv, 1, 8}, mha), "ContextParallelConfig(ring_degree=8, ring_anything=True)");
  EXPECT_EQ(args("sglang", {Strategy::hybrid, 4, 2}, masked({4096}, 32, 8, "full")),
            "--model-path MODEL_PATH --num-gpus 8 --ulysses-degree 4 --ring-degree 2");
  EXPECT_NE(py("megatron", {Strategy::ring_zigzag, 1, 8}, causal)
                .find("TransformerConfig(num_layers=NUM_LAYERS, hidden_size=HIDDEN_SIZE, num_attention_heads=32, "
                      "num_query_groups=8, context_parallel_size=8, cp_comm_type=\"p2p\")"),
            std::string::npos);
  EXPECT_EQ(args("prime-rl", {Strategy::allgather_kv, 1, 8}, causal), "--model.cp 8 --model.cp-style ring");
  EXPECT_EQ(py("prime-rl", {Strategy::ulysses, 8, 1}, causal), "[model]\ncp = 8\ncp_style = \"ulysses\"");
  EXPECT_EQ(py("vllm-omni", {Strategy::uaa, 8, 1}, masked({4097}, 25, 5, "full")),
            "DiffusionParallelConfig(ulysses_degree=8, ulysses_mode=\"advanced_uaa\")");
  EXPECT_EQ(args("vllm-omni", {Strategy::hybrid, 4, 2}, masked({4096}, 32, 8, "full")), "--ulysses-degree 4 --ring-degree 2");
  // Input-side steps: zigzag reordering and llama3's cu_seqlens preparation are part of the answer.
  EXPECT_NE(py("yunchang", {Strategy::ring_zigzag, 1, 8}, causal).find("EXTRACT_FUNC_DICT[\"zigzag\"]"), std::string::npos);
  EXPECT_NE(py("ring-flash-attn", {Strategy::ring_zigzag, 1, 8}, causal).find("x.chunk(16, dim=1)[15 - rank]"),
            std::string::npos);
  EXPECT_NE(py("ring-flash-attn", {Strategy::allgather_kv, 1, 8}, causal).find("llama3_flash_attn_prepare_cu_seqlens("),
            std::string::npos);
  EXPECT_NE(py("torch-cp", {Strategy::ring_zigzag, 1, 8}, masked({4096}, 32, 32, "causal"))
                .find("set_rotate_method(\"alltoall\"); _cp_options.enable_load_balance = True"),
            std::string::npos);
  EXPECT_NE(py("torch-cp", {Strategy::allgather_kv, 1, 8}, masked({4096}, 32, 32, "causal"))
                .find("set_rotate_method(\"allgather\"); _cp_options.enable_load_balance = False"),
            std::string::npos);
  EXPECT_NE(py("yunchang", {Strategy::hybrid, 4, 2, RankOrder::ring_inner}, causal).find("use_ulysses_low=False"),
            std::string::npos);
}

TEST(EngineConfigs, BadDegreesAreErrorsNotCrashes) {
  const AttentionShape s = masked({4096}, 32, 8, "causal");
  for (std::string_view name : sim::engine_names())
    for (LayoutChoice c : {LayoutChoice{Strategy::ulysses, 0, 1}, LayoutChoice{Strategy::ring, 1, 0},
                           LayoutChoice{Strategy::ring, 1, -3}, LayoutChoice{Strategy::hybrid, -2, -4},
                           LayoutChoice{Strategy::ulysses, 4, 2}, LayoutChoice{Strategy::ring, int64_t(1) << 40, 1 << 30}})
      EXPECT_THROW(sim::engine_config(name, c, view_of(s), ConfigFormat::args), Error) << name << " " << to_string(c);
}

TEST(EngineWire, PaddedHeadsArePricedAsTheEngineMovesThem) {
  // diffusers' UAA pads 25 heads to 27 on 3 ranks and sends and computes the pad heads: the
  // simulator prices the 27-head layout for it, more than cptune's own 25-head UAA.
  const sim::Hardware hw = sim::load_hardware("h100-sxm");
  const AttentionShape odd = masked({4095}, 25, 25, "full");
  const AttentionShape padded = masked({4095}, 27, 27, "full");
  auto uaa_time = [&](const AttentionShape& s, const Constraints& c) {
    for (const sim::RankedCandidate& rc : sim::rank_candidates(s, {3, 3}, hw, {}, c).candidates)
      if (rc.candidate.strategy == Strategy::uaa) return rc.prediction.total_s;
    return -1.0;
  };
  const double engine_s = uaa_time(odd, engine("diffusers"));
  EXPECT_GT(engine_s, 0);
  EXPECT_DOUBLE_EQ(engine_s, uaa_time(padded, Constraints{}));
  EXPECT_GT(engine_s, uaa_time(odd, Constraints{}));
}

}  // namespace
}  // namespace cptune
