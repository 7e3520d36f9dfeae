#include "backends/exec/executor.h"

#include <memory>
#include <optional>
#include <string>

#include "backends/comm/comm.h"
#include "backends/exec/device.h"
#include "backends/exec/kv_allgather.h"
#include "backends/exec/rank_context.h"
#include "backends/exec/ring_rotation.h"
#include "backends/exec/ulysses_exchange.h"
#include "backends/exec/verify_output.h"
#include "backends/kernels/dtype_convert.h"
#include "core/error.h"
#include "core/layout_json.h"

namespace cptune::backends {
namespace {

using Bytes = std::vector<std::byte>;

uint64_t fnv1a(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

// The phases of the layout's forward pass, in order, and how its attention moves K,V.
struct Plan {
  std::vector<Phase> phases;
  bool ring = false;  // attention rotates K,V around the ring group
};

Plan plan_of(const Layout& L) {
  Plan plan;
  const Strategy st = L.strategy();
  if (gathers_lengths(st) && L.ulysses() > 1) plan.phases.push_back(Phase::gather);
  if (L.ulysses() > 1) plan.phases.push_back(Phase::qkv);
  plan.phases.push_back(st == Strategy::allgather_kv && L.ring() > 1 ? Phase::allgather : Phase::attention);
  plan.phases.push_back(Phase::o);
  plan.ring = rotates_kv(st) && L.ring() > 1;
  return plan;
}

// One rank's state for one layout (its groups, buffers and motions) and the order it runs the
// plan's phases in; the motions themselves live in their own files.
class RankExecution {
 public:
  RankExecution(const Layout& layout, Comm& world, Device& device, const ExecutorOptions& options);
  void iterate(PhaseTimer& timer);
  RowCheck verify() const { return verify_output(c_, o_out_.data(), options_); }
  std::vector<float> output_rows() const { return real_rows(c_, o_out_.data(), c_.shape.q_heads, c_.v_head_dim); }

 private:
  void join_groups();
  void allocate_buffers();
  void make_inputs();
  void run_phase(Phase phase);
  void attend_block(std::byte* kv, int64_t tokens, std::span<const StoredRun> runs);
  bool exchanges() const { return c_.layout.ulysses() > 1; }
  std::byte* q_shard() const { return exchanges() ? q_attn_.data() : q_in_.data(); }
  std::byte* kv_shard() const { return exchanges() ? kv_attn_.data() : kv_in_.data(); }
  std::byte* o_shard() const { return exchanges() ? o_attn_.data() : o_out_.data(); }
  // V of my input tokens, every KV head: after their K in kv_in_.
  std::byte* v_in() const { return kv_in_.data() + c_.batch * c_.in_tokens * c_.shape.kv_heads * c_.head_dim * c_.elem_bytes; }

  Comm& world_;
  ExecutorOptions options_;
  RankContext c_;
  Plan plan_;
  Comm* ulysses_group_ = nullptr;  // the world itself when U == P; unused when U == 1
  Comm* ring_group_ = nullptr;     // the world itself when R == P; unused when R == 1
  std::unique_ptr<Comm> owned_ulysses_, owned_ring_;
  AttentionParams params_;
  std::vector<int64_t> kernel_lens_;  // params_.seq_lens: length by kernel sequence id
  std::vector<StoredRun> q_runs_, kv_runs_;  // my shard's kernel runs

  DeviceBuffer q_in_, kv_in_, o_out_;       // inputs [Q] and [K | V] of my tokens, all heads; output
  DeviceBuffer q_attn_, kv_attn_, o_attn_;  // after the all-to-all: my shard, my heads
  std::optional<UlyssesExchange> ulysses_;
  std::optional<RingRotation> ring_;
  std::optional<KvAllGather> allgather_;
  std::unique_ptr<DeviceAttention> attention_;
};

// Lengths by kernel sequence id (kernel_runs): a sample's padding runs take their sequence's
// length, so block masks cut real and padding rows alike (padding is the last block).
std::vector<int64_t> kernel_lens(std::span<const int64_t> seq_lens, int64_t batch) {
  std::vector<int64_t> out;
  for (int64_t b = 0; b < batch; ++b)
    for (int copy = 0; copy < 2; ++copy) out.insert(out.end(), seq_lens.begin(), seq_lens.end());
  return out;
}

RankExecution::RankExecution(const Layout& layout, Comm& world, Device& device, const ExecutorOptions& options)
    : world_(world), options_(options), c_(layout, world.rank(), device), plan_(plan_of(layout)) {
  if (world.size() != layout.world())
    throw Error("the layout is for world " + std::to_string(layout.world()) + " but " + std::to_string(world.size()) +
                " ranks joined");
  join_groups();
  params_.mask = c_.shape.mask;
  params_.heads = HeadMap::of_rank(c_.me, c_.shape);
  kernel_lens_ = kernel_lens(c_.shape.seq_lens, c_.batch);
  params_.seq_lens = kernel_lens_;
  q_runs_ = kernel_runs(layout.shard_runs(c_.me.r), c_.batch, c_.nseq);
  kv_runs_ = q_runs_;
  if (exchanges()) ulysses_.emplace(c_, *ulysses_group_, options.metadata);
  for (Phase phase : plan_.phases)
    if (phase == Phase::allgather) allgather_.emplace(c_, *ring_group_);
  if (plan_.ring) ring_.emplace(c_, *ring_group_);
  allocate_buffers();
  attention_ = device.attention(c_.batch * c_.shard_tokens, c_.q_heads(), c_.v_head_dim);
  make_inputs();
}

// Ulysses and ring groups. A group that spans the world is the world (its member order is the
// rank order), and a group of one is never used: only real sub-groups cost a split, which on
// NCCL is a new communicator.
void RankExecution::join_groups() {
  const int64_t U = c_.layout.ulysses(), R = c_.layout.ring(), P = c_.layout.world();
  if (U == P) {
    ulysses_group_ = &world_;
  } else if (U > 1) {
    owned_ulysses_ = world_.split(static_cast<int>(c_.me.r), static_cast<int>(c_.me.u));
    ulysses_group_ = owned_ulysses_.get();
  }
  if (R == P) {
    ring_group_ = &world_;
  } else if (R > 1) {
    owned_ring_ = world_.split(static_cast<int>(c_.me.u), static_cast<int>(c_.me.r));
    ring_group_ = owned_ring_.get();
  }
}

void RankExecution::allocate_buffers() {
  const AttentionShape& s = c_.shape;
  const int64_t B = c_.batch, eb = c_.elem_bytes, t_in = c_.in_tokens, t_shard = c_.shard_tokens;
  q_in_ = c_.device.allocate(B * t_in * s.q_heads * c_.head_dim * eb);
  kv_in_ = c_.device.allocate(c_.layout.kv_block_bytes(t_in, s.kv_heads));
  o_out_ = c_.device.allocate(B * t_in * s.q_heads * c_.v_head_dim * eb);
  if (exchanges()) {
    q_attn_ = c_.device.allocate(B * t_shard * c_.q_heads() * c_.head_dim * eb);
    kv_attn_ = c_.device.allocate(c_.layout.kv_block_bytes(t_shard, c_.kv_heads()));
    o_attn_ = c_.device.allocate(B * t_shard * c_.q_heads() * c_.v_head_dim * eb);
  }
}

void RankExecution::make_inputs() {
  const AttentionShape& s = c_.shape;
  const HeadRange all_q{0, s.q_heads}, all_kv{0, s.kv_heads};
  Bytes stored;
  auto make = [&](Tensor t, HeadRange heads, int64_t dim, std::byte* out) {
    std::vector<float> values(static_cast<size_t>(c_.batch * c_.in_tokens * heads.count() * dim));
    fill_input(values, options_.seed, t, c_.me.input_runs, c_.batch, heads, dim, options_.inputs);
    stored.resize(values.size() * static_cast<size_t>(c_.elem_bytes));
    from_float(values.data(), s.dtype, stored.data(), static_cast<int64_t>(values.size()));
    c_.device.upload(out, stored.data(), static_cast<int64_t>(stored.size()));
  };
  make(Tensor::q, all_q, c_.head_dim, q_in_.data());
  make(Tensor::k, all_kv, c_.head_dim, kv_in_.data());
  make(Tensor::v, all_kv, c_.v_head_dim, v_in());
  c_.device.synchronize();  // `stored` is reused and freed: the uploads must have read it
}

// Attention of my shard's queries against a K,V block of `tokens` stored rows per sample.
void RankExecution::attend_block(std::byte* kv, int64_t tokens, std::span<const StoredRun> runs) {
  const DType dt = c_.shape.dtype;
  const int64_t rows = c_.batch * tokens;
  const Queries queries{{q_shard(), dt, c_.batch * c_.shard_tokens, c_.q_heads(), c_.head_dim}, q_runs_};
  const KvBlock block{{kv, dt, rows, c_.kv_heads(), c_.head_dim},
                      {c_.v_of(kv, tokens).data, dt, rows, c_.kv_heads(), c_.v_head_dim}, runs};
  attention_->attend(queries, block, params_);
}

// One phase of the plan: which motion moves what.
void RankExecution::run_phase(Phase phase) {
  const AttendBlock attend = [this](std::byte* kv, int64_t tokens, std::span<const StoredRun> runs) {
    attend_block(kv, tokens, runs);
  };
  switch (phase) {
    case Phase::gather:
      ulysses_->exchange_lengths();
      break;
    case Phase::qkv: {
      const UlyssesExchange::Part parts[] = {{Tensor::q, q_in_.data(), q_attn_.data()},
                                             {Tensor::k, kv_in_.data(), kv_attn_.data()},
                                             {Tensor::v, v_in(), c_.v_of(kv_attn_.data(), c_.shard_tokens).data}};
      ulysses_->to_heads(parts);
      break;
    }
    case Phase::allgather:
      allgather_->attend(kv_shard(), attend);
      break;
    case Phase::attention:
      if (ring_)
        ring_->attend(kv_shard(), attend);
      else
        attend(kv_shard(), c_.shard_tokens, kv_runs_);
      break;
    case Phase::o: {
      // With U == 1 attention stores O straight into o_out_ (same tokens, all heads): nothing moves.
      attention_->store_output(c_.shape.dtype, o_shard(), c_.batch * c_.shard_tokens * c_.q_heads() * c_.v_head_dim * c_.elem_bytes);
      const UlyssesExchange::Part parts[] = {{Tensor::o, o_out_.data(), o_attn_.data()}};
      if (ulysses_) ulysses_->to_tokens(parts);
      break;
    }
    default:
      throw Error("the executor has no motion for phase " + std::string(to_string(phase)));
  }
}

// Every phase ends with a device synchronize: on a GPU the host timer then measures the work,
// not the time to enqueue it.
void RankExecution::iterate(PhaseTimer& timer) {
  attention_->clear();
  c_.device.synchronize();
  timer.begin_iteration();
  for (Phase phase : plan_.phases) {
    if (options_.phase_barriers) world_.barrier();
    timer.start(phase);
    run_phase(phase);
    c_.device.synchronize();
    timer.stop(phase);
  }
  timer.end_iteration(world_);
}

void check_same_arguments(const Layout& layout, const ExecutorOptions& options, Comm& world) {
  const std::string text = to_json(layout.shape()).dump() + to_string(layout.choice()) + "/" +
                           std::to_string(layout.cluster().ranks_per_node) + " " + std::to_string(options.warmups) + " " + std::to_string(options.iterations) + " " +
                           std::to_string(options.verify) + " " + std::to_string(options.seed) + " " +
                           std::to_string(static_cast<int>(options.metadata)) + " " + std::to_string(options.phase_barriers) + " " +
                           world.backend();
  const uint64_t mine = fnv1a(text);
  std::vector<uint64_t> all(static_cast<size_t>(world.size()));
  world.allgather_host(&mine, sizeof(mine), all.data());
  for (int r = 0; r < world.size(); ++r)
    if (all[r] != all[0])
      throw Error("rank " + std::to_string(r) + " was started with different arguments than rank 0 (argument hash " +
                  std::to_string(all[r]) + " vs " + std::to_string(all[0]) + "); start every rank with the same command");
}

}  // namespace

RunResult execute(const Layout& layout, Comm& world, const ExecutorOptions& options) {
  return execute_interleaved(std::span<const Layout>(&layout, 1), world, options).front();
}

std::vector<RunResult> execute_interleaved(std::span<const Layout> layouts, Comm& world, const ExecutorOptions& options) {
  if (options.iterations < 1) throw Error("iterations " + std::to_string(options.iterations) + " must be at least 1");
  if (options.warmups < 0) throw Error("warm-ups " + std::to_string(options.warmups) + " must not be negative");
  std::unique_ptr<Device> host;
  if (options.device == nullptr) {
    if (world.backend() != "gloo")
      throw Error("the executor needs the device of a '" + world.backend() +
                  "' world (ExecutorOptions::device); only a Gloo world runs on the host");
    host = make_host_device();
  }
  Device* const device = options.device ? options.device : host.get();
  std::vector<std::unique_ptr<RankExecution>> runs;
  std::vector<PhaseTimer> timers;
  for (const Layout& layout : layouts) {
    check_same_arguments(layout, options, world);
    runs.push_back(std::make_unique<RankExecution>(layout, world, *device, options));
    timers.emplace_back();
  }
  const size_t n = runs.size();
  PhaseTimer warm;
  const int rounds = options.warmups + options.iterations;
  for (int i = 0; i < options.warmups; ++i) {
    for (auto& run : runs) run->iterate(warm);
    if (options.on_round) options.on_round(i + 1, rounds);
  }
  for (int i = 0; i < options.iterations; ++i) {
    for (size_t j = 0; j < n; ++j) {
      const size_t k = (j + static_cast<size_t>(i)) % n;
      runs[k]->iterate(timers[k]);
    }
    if (options.on_round) options.on_round(options.warmups + i + 1, rounds);
  }

  std::vector<RunResult> results(n);
  for (size_t k = 0; k < n; ++k) {
    RunResult& result = results[k];
    result.phases = timers[k].phase_stats();
    result.time = timers[k].total();
    result.samples = timers[k].totals();
    result.iterations = options.iterations;
    if (options.verify) {
      const RowCheck total = merge_checks(runs[k]->verify(), world);
      result.max_abs_err = total.max_abs_err;
      result.tolerance = total.max_tolerance;
      result.worst_ratio = total.worst_ratio;
      result.verified_rows = total.rows;
    }
    if (options.collect_output) {
      const AttentionShape& s = layouts[k].shape();
      result.output = gather_rows(layouts[k], runs[k]->output_rows(), s.q_heads * s.v_head_dim, world);
    }
  }
  return results;
}

}  // namespace cptune::backends
