#include "tuner/probes.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>

#include <fmt/format.h>

#include "backends/kernels/attention_cpu.h"
#include "backends/comm/comm.h"
#include "backends/kernels/dtype_convert.h"
#include "backends/exec/phase_timer.h"
#include "core/layout.h"
#include "sim/cost_model.h"
#include "core/format.h"

namespace cptune::tuner {
namespace {

using backends::Comm;
using Bytes = std::vector<std::byte>;

using Clock = std::chrono::steady_clock;

double seconds_since_epoch(Clock::time_point t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }

// A probe ready to run: its buffers live in the closures, so every probe of a kind can be
// built first and then run round-robin.
struct PendingProbe {
  Probe probe;
  std::function<void()> run;
  std::function<void()> before = [] {};  // untimed preparation of each iteration
};

// Messages run back to back within one timed iteration, as nccl-tests times a collective: the
// barrier that starts an iteration releases ranks a scheduler slice apart on busy cores, and
// that skew, which no run of the executor has between its operations, is then shared by many.
constexpr int kMessagesPerIteration = 10;

// Runs probes interleaved, as execute_interleaved runs candidates: iteration i runs every probe
// once, starting with a different one, so a burst of other work on a shared machine hits all of
// them alike. On one host the steady clock is shared by every process, so a probe's time is its
// makespan, from the first rank's start to the last rank's end: that counts a rank the
// scheduler starts late because the cores are busy, as the executor's collectives would. Across
// hosts clocks differ, and the slowest rank's own duration stands in for it.
class ProbeRunner {
 public:
  explicit ProbeRunner(Comm& world) : world_(world), one_host_(on_one_host(world)) {}

  void run(std::vector<PendingProbe>& probes, int repeat, int warmups, int iterations, bool fastest,
           std::vector<Probe>& out) {
    std::vector<std::vector<double>> samples(probes.size());
    for (int i = 0; i < warmups + iterations; ++i)
      for (size_t j = 0; j < probes.size(); ++j) {
        const size_t k = (j + static_cast<size_t>(i)) % probes.size();
        const double t = time_once(probes[k], repeat) / repeat;
        if (i >= warmups) samples[k].push_back(t);
      }
    for (size_t k = 0; k < probes.size(); ++k) {
      const backends::Spread spread = backends::spread_of(samples[k]);
      probes[k].probe.measured_s = fastest ? spread.min_s : spread.median_s;
      out.push_back(probes[k].probe);
    }
  }

 private:
  double time_once(PendingProbe& p, int repeat) {
    p.before();
    world_.barrier();
    const Clock::time_point start = Clock::now();
    for (int r = 0; r < repeat; ++r) p.run();
    const double mine[2] = {seconds_since_epoch(start), seconds_since_epoch(Clock::now())};
    std::vector<double> all(static_cast<size_t>(2 * world_.size()));
    world_.allgather_host(mine, sizeof mine, all.data());
    double first_start = all[0], last_end = all[1], longest = 0;
    for (size_t r = 0; r < size_t(world_.size()); ++r) {
      first_start = std::min(first_start, all[2 * r]);
      last_end = std::max(last_end, all[2 * r + 1]);
      longest = std::max(longest, all[2 * r + 1] - all[2 * r]);
    }
    return one_host_ ? last_end - first_start : longest;
  }

  static bool on_one_host(Comm& world) {
    char name[256] = {};
    gethostname(name, sizeof name - 1);
    const uint64_t mine = std::hash<std::string>{}(name);
    std::vector<uint64_t> all(static_cast<size_t>(world.size()));
    world.allgather_host(&mine, sizeof mine, all.data());
    return std::all_of(all.begin(), all.end(), [&](uint64_t h) { return h == all[0]; });
  }

  Comm& world_;
  bool one_host_;
};

// Groups of consecutive ranks, like Ulysses groups in ulysses-inner order: the world, and
// pairs when the world splits into them.
std::vector<std::shared_ptr<Comm>> ulysses_like_groups(Comm& world) {
  std::vector<std::shared_ptr<Comm>> out;
  std::vector<int> sizes{world.size()};
  if (world.size() > 2 && world.size() % 2 == 0) sizes.push_back(2);
  for (int g : sizes) out.push_back(world.split(world.rank() / g, world.rank()));
  return out;
}

void add_alltoallv(const std::shared_ptr<Comm>& group, const ProbePlan& plan, std::vector<PendingProbe>& out) {
  const int g = group->size();
  for (int64_t bytes : plan.alltoallv_bytes) {
    // No block to itself: the model prices the self part as a local copy, probed apart.
    auto counts = std::make_shared<std::vector<int64_t>>(static_cast<size_t>(g), bytes);
    (*counts)[static_cast<size_t>(group->rank())] = 0;
    auto send = std::make_shared<Bytes>(static_cast<size_t>(bytes * (g - 1)), std::byte{1});
    auto recv = std::make_shared<Bytes>(send->size());
    PendingProbe p;
    p.probe.kind = ProbeKind::alltoallv;
    p.probe.label = fmt::format("alltoallv group {}, {} per peer", g, human_bytes(double(bytes)));
    p.probe.exchange.peers[0] = g - 1;
    p.probe.exchange.bytes[0] = bytes * (g - 1);
    p.run = [=] { group->alltoallv(send->data(), *counts, recv->data(), *counts); };
    out.push_back(std::move(p));
  }
}

void add_gather(const std::shared_ptr<Comm>& group, std::vector<PendingProbe>& out) {
  const int g = group->size();
  // One sequence's lengths, as UAA's metadata step gathers them (two int64 per sequence).
  const int64_t bytes = 2 * int64_t(sizeof(int64_t));
  auto mine = std::make_shared<std::vector<int64_t>>(std::vector<int64_t>{1, 2});
  auto all = std::make_shared<std::vector<int64_t>>(static_cast<size_t>(2 * g));
  PendingProbe p;
  p.probe.kind = ProbeKind::gather;
  p.probe.label = fmt::format("gather of sequence lengths, group {}", g);
  p.probe.exchange.peers[0] = g - 1;
  p.probe.exchange.bytes[0] = bytes * (g - 1);
  p.run = [=] { group->allgather_host(mine->data(), bytes, all->data()); };
  out.push_back(std::move(p));
}

// Every rank sends to the next and receives from the previous at once, as a ring step does.
void add_ring(Comm& world, const ProbePlan& plan, std::vector<PendingProbe>& out) {
  const int P = world.size();
  const int next = (world.rank() + 1) % P, prev = (world.rank() + P - 1) % P;
  auto tag = std::make_shared<int>(0);  // every transfer its own tag, shared by all sizes
  for (int64_t bytes : plan.ring_bytes) {
    auto send = std::make_shared<Bytes>(static_cast<size_t>(bytes), std::byte{2});
    auto recv = std::make_shared<Bytes>(send->size());
    PendingProbe p;
    p.probe.kind = ProbeKind::ring_hop;
    p.probe.label = fmt::format("ring hop over {} ranks, {}", P, human_bytes(double(bytes)));
    p.probe.hop_bytes = bytes;
    p.run = [=, &world] {
      auto s = world.isend(send->data(), bytes, next, *tag);
      auto r = world.irecv(recv->data(), bytes, prev, *tag);
      s->wait();
      r->wait();
      ++*tag;
    };
    out.push_back(std::move(p));
  }
}

// A pack as the executor does it: rows of a few heads picked out of wider token rows.
void add_copy(const ProbePlan& plan, std::vector<PendingProbe>& out) {
  constexpr int64_t kRowBytes = 256, kStride = 2 * kRowBytes;
  for (int64_t bytes : plan.copy_bytes) {
    const int64_t rows = std::max<int64_t>(1, bytes / kRowBytes);
    auto src = std::make_shared<Bytes>(static_cast<size_t>(rows * kStride), std::byte{3});
    auto dst = std::make_shared<Bytes>(static_cast<size_t>(rows * kRowBytes));
    PendingProbe p;
    p.probe.kind = ProbeKind::copy;
    p.probe.label = fmt::format("pack copy, {} in {} B rows", human_bytes(double(rows * kRowBytes)), kRowBytes);
    p.probe.exchange.copy_bytes = 2 * rows * kRowBytes;  // read once, written once
    p.run = [=] {
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(dst->data() + r * kRowBytes, src->data() + r * kStride, static_cast<size_t>(kRowBytes));
    };
    out.push_back(std::move(p));
  }
}

Bytes random_tensor(int64_t elems, DType dtype, uint64_t seed) {
  std::vector<float> values(static_cast<size_t>(elems));
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (float& v : values) {  // xorshift: any values in [-1, 1) do; attention time does not depend on them
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    v = float(double(x >> 11) / double(1ull << 53) * 2.0 - 1.0);
  }
  Bytes out(static_cast<size_t>(elems * dtype_bytes(dtype)));
  backends::from_float(values.data(), dtype, out.data(), elems);
  return out;
}

// Tensors and state of one attention probe, kept alive by its closures.
struct AttentionInputs {
  Bytes q, k, v;
  std::vector<backends::StoredRun> runs;
  std::vector<int64_t> lens;  // one sequence of all the tokens (a block mask cuts it)
  backends::AttentionParams params;
  backends::AttentionState state;
  AttentionInputs(const AttentionProbeSpec& a, uint64_t seed)
      : q(random_tensor(a.tokens * a.q_heads * a.head_dim, a.dtype, seed)),
        k(random_tensor(a.tokens * a.kv_heads * a.head_dim, a.dtype, seed + 1)),
        v(random_tensor(a.tokens * a.kv_heads * a.head_dim, a.dtype, seed + 2)),
        runs{{0, 0, a.tokens, 0}},
        lens{a.tokens},
        state(a.tokens, a.q_heads, a.head_dim) {
    params.mask = a.mask;
    params.seq_lens = lens;
    params.heads = {0, 0, a.q_heads / a.kv_heads};
  }
  backends::Queries queries(const AttentionProbeSpec& a) const {
    return {{q.data(), a.dtype, a.tokens, a.q_heads, a.head_dim}, runs};
  }
  backends::KvBlock block(const AttentionProbeSpec& a) const {
    return {{k.data(), a.dtype, a.tokens, a.kv_heads, a.head_dim}, {v.data(), a.dtype, a.tokens, a.kv_heads, a.head_dim}, runs};
  }
  void attend(const AttentionProbeSpec& a) { backends::attend(queries(a), block(a), params, state); }
};

// Hop and attention at once, as RankExecution::attend_ring runs a step: post the transfers,
// compute, then wait for them.
void add_ring_steps(Comm& world, const ProbePlan& plan, std::vector<PendingProbe>& out) {
  const int P = world.size();
  const int next = (world.rank() + 1) % P, prev = (world.rank() + P - 1) % P;
  auto tag = std::make_shared<int>(1 << 20);  // apart from the ring-hop probes' tags
  for (const RingStepProbeSpec& step : plan.ring_steps) {
    const AttentionProbeSpec& a = step.attention;
    auto in = std::make_shared<AttentionInputs>(a, plan.seed);
    auto send = std::make_shared<Bytes>(static_cast<size_t>(step.bytes), std::byte{4});
    auto recv = std::make_shared<Bytes>(send->size());
    PendingProbe p;
    p.probe.kind = ProbeKind::ring_step;
    p.probe.label = fmt::format("ring step: attention {} tokens, {} heads, D {} + hop {}", a.tokens, a.q_heads,
                                a.head_dim, human_bytes(double(step.bytes)));
    p.probe.hop_bytes = step.bytes;
    p.probe.flops = mask_pairs(a.mask, a.tokens, 0, a.tokens, 0, a.tokens) * 2 * (2 * a.head_dim) * a.q_heads;
    p.probe.node.flops_ranks = {{p.probe.flops, P}};
    p.probe.dtype = a.dtype;
    p.before = [in] { in->state.clear(); };
    p.run = [=, &world] {
      auto s = world.isend(send->data(), step.bytes, next, *tag);
      auto r = world.irecv(recv->data(), step.bytes, prev, *tag);
      in->attend(a);
      s->wait();
      r->wait();
      ++*tag;
    };
    out.push_back(std::move(p));
  }
}

// An attention probe's load on `active` ranks of the world (the others wait), in the Layout's
// forward FLOPs: a backward probe is priced as backward_compute_factor times them.
Probe attention_load(const Comm& world, const AttentionProbeSpec& a, ProbeKind kind, int active) {
  const int64_t T = a.tokens, D = a.head_dim;
  Probe probe;
  probe.kind = kind;
  probe.label = fmt::format("attention{} {} tokens, {}/{} heads, D {}, {}, {}, {} of {} ranks",
                            kind == ProbeKind::attention_bwd ? " backward" : "", T, a.q_heads, a.kv_heads, D,
                            to_string(a.mask), to_string(a.dtype), active, world.size());
  probe.flops = mask_pairs(a.mask, T, 0, T, 0, T) * 2 * (D + D) * a.q_heads;
  probe.node.flops_ranks = {{probe.flops, active}};
  probe.dtype = a.dtype;
  return probe;
}

int active_ranks(const Comm& world, const AttentionProbeSpec& a) {
  return a.active_ranks > 0 ? std::min(a.active_ranks, world.size()) : world.size();
}

void add_attention(Comm& world, const ProbePlan& plan, std::vector<PendingProbe>& out) {
  for (const AttentionProbeSpec& a : plan.attention) {
    const int active = active_ranks(world, a);
    const bool computes = world.rank() < active;
    auto in = std::make_shared<AttentionInputs>(a, plan.seed);
    PendingProbe p;
    p.probe = attention_load(world, a, ProbeKind::attention, active);
    p.before = [in] { in->state.clear(); };
    p.run = [in, computes, a] {
      if (computes) in->attend(a);
    };
    out.push_back(std::move(p));
  }
}

// The forward's O and LSE and a dO of one probe, made once (untimed); each iteration zeroes the
// gradients, computes D and runs the backward, as the executor's attention-bwd phase does.
struct BackwardProbeInputs {
  AttentionInputs forward;
  Bytes d_out;
  std::vector<float> delta;
  backends::GradBuffer dq, dk, dv;
  BackwardProbeInputs(const AttentionProbeSpec& a, uint64_t seed)
      : forward(a, seed),
        d_out(random_tensor(a.tokens * a.q_heads * a.head_dim, a.dtype, seed + 3)),
        delta(static_cast<size_t>(a.tokens * a.q_heads)),
        dq(a.tokens, a.q_heads, a.head_dim),
        dk(a.tokens, a.kv_heads, a.head_dim),
        dv(a.tokens, a.kv_heads, a.head_dim) {
    forward.attend(a);
  }
  void clear() {
    dq.clear();
    dk.clear();
    dv.clear();
  }
  void attend_backward(const AttentionProbeSpec& a) {
    const backends::TensorView d_out_view{d_out.data(), a.dtype, a.tokens, a.q_heads, a.head_dim};
    backends::compute_delta(backends::output_view(forward.state), d_out_view, forward.runs, delta);
    backends::attend_backward(forward.queries(a), forward.block(a), forward.params,
                              {d_out_view, forward.state.lse(), delta}, {dq.view()}, {dk.view(), dv.view()});
  }
};

void add_attention_backward(Comm& world, const ProbePlan& plan, std::vector<PendingProbe>& out) {
  for (const AttentionProbeSpec& a : plan.attention_backward) {
    const int active = active_ranks(world, a);
    const bool computes = world.rank() < active;
    auto in = std::make_shared<BackwardProbeInputs>(a, plan.seed);
    PendingProbe p;
    p.probe = attention_load(world, a, ProbeKind::attention_bwd, active);
    p.before = [in] { in->clear(); };
    p.run = [in, computes, a] {
      if (computes) in->attend_backward(a);
    };
    out.push_back(std::move(p));
  }
}

// The slowest rank's attention, or the node's when its ranks share compute units (as predict()).
double compute_s(const Probe& probe, const sim::Hardware& hw) {
  return std::max(sim::attention_time_s(probe.flops, probe.dtype, hw),
                  sim::node_attention_time_s(probe.node, probe.dtype, hw));
}

}  // namespace

std::string_view to_string(ProbeKind kind) {
  switch (kind) {
    case ProbeKind::alltoallv: return "alltoallv";
    case ProbeKind::ring_hop: return "ring-hop";
    case ProbeKind::ring_step: return "ring-step";
    case ProbeKind::attention: return "attention";
    case ProbeKind::copy: return "copy";
    case ProbeKind::gather: return "gather";
    case ProbeKind::attention_bwd: return "attention-bwd";
  }
  return "?";
}

double predict_probe(const Probe& probe, const sim::Hardware& hw) {
  switch (probe.kind) {
    case ProbeKind::alltoallv:
    case ProbeKind::copy: return sim::exchange_time_s(probe.exchange, hw);
    case ProbeKind::gather: return sim::gather_time_s(probe.exchange, hw, MetadataChannel::cpu);
    case ProbeKind::ring_hop: return sim::hop_time_s(sim::LevelBytes{probe.hop_bytes}, hw);
    case ProbeKind::attention: return compute_s(probe, hw);
    case ProbeKind::attention_bwd: return hw.backward_compute_factor * compute_s(probe, hw);
    case ProbeKind::ring_step: return sim::ring_step_time_s(sim::hop_time_s(sim::LevelBytes{probe.hop_bytes}, hw), compute_s(probe, hw), hw);
  }
  return 0;
}

std::vector<AttentionProbeSpec> default_attention_probes() {
  std::vector<AttentionProbeSpec> out;
  const Mask full{MaskKind::full, 0}, causal{MaskKind::causal, 0};
  for (int64_t tokens : {256, 768, 1536})
    for (int64_t dim : {64, 128})
      for (Mask mask : {full, causal}) out.push_back({tokens, 2, 2, dim, mask, DType::bf16, 0});
  out.push_back({1024, 4, 1, 64, causal, DType::bf16, 0});  // GQA: one KV head read by four Q heads
  for (DType dtype : {DType::fp16, DType::fp32})
    for (int64_t dim : {64, 128}) out.push_back({768, 2, 2, dim, full, dtype, 0});
  for (int active : {1, 2, 3, 0}) out.push_back({1024, 2, 2, 64, full, DType::bf16, active});
  return out;
}

std::vector<AttentionProbeSpec> default_attention_backward_probes() {
  std::vector<AttentionProbeSpec> out;
  const Mask full{MaskKind::full, 0}, causal{MaskKind::causal, 0};
  for (int64_t tokens : {768, 1536})
    for (Mask mask : {full, causal}) out.push_back({tokens, 2, 2, 64, mask, DType::bf16, 0});
  out.push_back({1024, 4, 1, 128, causal, DType::bf16, 0});  // GQA, D 128
  return out;
}

std::vector<RingStepProbeSpec> default_ring_step_probes() {
  const Mask full{MaskKind::full, 0};
  std::vector<RingStepProbeSpec> out;
  for (auto [tokens, bytes] : {std::pair<int64_t, int64_t>{256, 64 << 10}, {256, 1 << 20}, {512, 2 << 20}, {768, 512 << 10}})
    out.push_back({{tokens, 2, 2, 64, full, DType::bf16, 0}, bytes});
  return out;
}

ProbePlan ProbePlan::scaled(double factor) const {
  ProbePlan p = *this;
  auto scale = [&](int64_t n, int64_t least) { return std::max<int64_t>(least, int64_t(std::llround(double(n) * factor))); };
  for (auto* list : {&p.alltoallv_bytes, &p.ring_bytes, &p.copy_bytes})
    for (int64_t& n : *list) n = scale(n, 1);
  for (auto* list : {&p.attention, &p.attention_backward})
    for (AttentionProbeSpec& a : *list) a.tokens = scale(a.tokens, 16);
  for (RingStepProbeSpec& r : p.ring_steps) {
    r.attention.tokens = scale(r.attention.tokens, 16);
    r.bytes = scale(r.bytes, 1);
  }
  return p;
}

std::vector<Probe> measure_probes(Comm& world, const ProbePlan& plan) {
  ProbeRunner runner(world);
  std::vector<PendingProbe> messages, compute;
  for (const std::shared_ptr<Comm>& group : ulysses_like_groups(world)) {
    add_gather(group, messages);
    add_alltoallv(group, plan, messages);
  }
  add_ring(world, plan, messages);
  add_copy(plan, messages);
  add_attention(world, plan, compute);
  add_ring_steps(world, plan, compute);
  add_attention_backward(world, plan, compute);
  std::vector<Probe> out;
  // Messages and copies take milliseconds and scatter with the scheduler: many per iteration.
  runner.run(messages, kMessagesPerIteration, plan.warmups, plan.comm_iterations, plan.fastest, out);
  runner.run(compute, 1, plan.warmups, plan.iterations, plan.fastest, out);
  return out;
}

}  // namespace cptune::tuner
