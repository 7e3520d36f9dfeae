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
#include "core/strategy.h"

namespace cptune::backends {
namespace {

using Bytes = std::vector<std::byte>;

uint64_t fnv1a(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : text) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Lengths by kernel sequence id (kernel_runs): a sample's padding runs take their sequence's
// length, so block masks cut real and padding rows alike (padding is the last block).
std::vector<int64_t> kernel_lens(std::span<const int64_t> seq_lens, int64_t batch) {
  std::vector<int64_t> out;
  for (int64_t b = 0; b < batch; ++b)
    for (int copy = 0; copy < 2; ++copy) out.insert(out.end(), seq_lens.begin(), seq_lens.end());
  return out;
}

// One tensor where the token owners hold it (every head of my input tokens) and where the head
// owners do (my heads of my shard); with U == 1 both are the same buffer.
struct Tensors {
  DeviceBuffer tokens, heads;
};

// One rank's state for one layout (its groups, buffers and motions) and the order it runs the
// phase plan in (core/strategy.h); the motions live in their own files.
class RankExecution {
 public:
  RankExecution(const Layout& layout, Comm& world, Device& device, const ExecutorOptions& options);
  void iterate(PhaseTimer& timer);
  RowCheck verify() const { return verify_output(c_, o_.tokens.data(), verify_options()); }
  GradientChecks verify_backward() const {
    // dK, dV of a KV head several head owners share are rounded once more: their parts travel
    // home in the storage dtype.
    return verify_gradients(c_, {dq_.tokens.data(), dkv_.tokens.data(), dv_tokens()}, verify_options(),
                            ulysses_ && ulysses_->shares_kv_heads() ? 1 : 0);
  }
  std::vector<float> rows_of(Payload p) const;
  VerifyOptions verify_options() const { return {options_.verify_rows, options_.seed, options_.inputs}; }  // my real rows of O, dQ, dK or dV, fp32

 private:
  void join_groups();
  void allocate_buffers();
  void make_inputs();
  void run_step(const PhaseStep& step);
  void attend_forward(const PhaseStep& step);
  void attend_backward(const PhaseStep& step);
  void reduce_scatter();
  void store_output();
  UlyssesExchange::Part part_of(Payload p) const;
  // Where the head owners' tensors are: the all-to-all's destination, or my input with U == 1.
  std::byte* shard(const Tensors& t) const { return t.heads.data() ? t.heads.data() : t.tokens.data(); }
  std::byte* dv_tokens() const { return dkv_.tokens.data() + kv_split(c_.in_tokens, c_.shape.kv_heads); }
  int64_t kv_split(int64_t tokens, int64_t kv_heads) const {  // bytes of K before V in a [K | V] block
    return c_.batch * tokens * kv_heads * c_.head_dim * c_.elem_bytes;
  }
  void store_kv_grads(const std::byte* grads);  // fp32 dK, dV of my shard to the storage dtype

  Comm& world_;
  ExecutorOptions options_;
  RankContext c_;
  PhasePlan forward_, backward_;  // backward_ empty for a forward pass
  Comm* ulysses_group_ = nullptr;  // the world itself when U == P; unused when U == 1
  Comm* ring_group_ = nullptr;     // the world itself when R == P; unused when R == 1
  std::unique_ptr<Comm> owned_ulysses_, owned_ring_;
  AttentionParams params_;
  std::vector<int64_t> kernel_lens_;         // params_.seq_lens: length by kernel sequence id
  std::vector<StoredRun> q_runs_;            // my shard's kernel runs (queries, and local K,V)

  Tensors q_, kv_, o_;          // Q, [K | V], O
  Tensors do_, dq_, dkv_;       // the backward's dO, dQ, [dK | dV]
  DeviceBuffer local_grads_;    // fp32 dK, dV of my shard when attention is local
  std::optional<UlyssesExchange> ulysses_;
  std::optional<RingRotation> ring_;
  std::optional<KvAllGather> allgather_;
  std::unique_ptr<DeviceAttention> attention_;
};

RankExecution::RankExecution(const Layout& layout, Comm& world, Device& device, const ExecutorOptions& options)
    : world_(world),
      options_(options),
      c_(layout, world.rank(), device),
      forward_(phase_plan(layout.choice(), Pass::forward)) {
  if (world.size() != layout.world())
    throw Error("the layout is for world " + std::to_string(layout.world()) + " but " + std::to_string(world.size()) +
                " ranks joined");
  if (has_backward(options.pass)) backward_ = phase_plan(layout.choice(), Pass::backward);
  join_groups();
  params_.mask = c_.shape.mask;
  params_.heads = HeadMap::of_rank(c_.me, c_.shape);
  kernel_lens_ = kernel_lens(c_.shape.seq_lens, c_.batch);
  params_.seq_lens = kernel_lens_;
  q_runs_ = kernel_runs(layout.shard_runs(c_.me.r), c_.batch, c_.nseq);
  // The motions the plan calls, each made once.
  const bool backward = backward_.size() > 0;
  for (const PhasePlan* plan : {&forward_, &backward_})
    for (const PhaseStep& step : *plan) {
      if (step.group == Group::ulysses && !ulysses_) ulysses_.emplace(c_, *ulysses_group_, options.metadata, backward);
      if (step.motion == Motion::kv_allgather && !allgather_) allgather_.emplace(c_, *ring_group_, backward);
      if (step.motion == Motion::ring && !ring_) ring_.emplace(c_, *ring_group_, backward);
    }
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
  const int64_t D = c_.head_dim, Dv = c_.v_head_dim;
  Device& dev = c_.device;
  const bool exchanges = ulysses_.has_value();
  auto make = [&](Tensors& t, int64_t token_bytes, int64_t head_bytes) {
    t.tokens = dev.allocate(token_bytes);
    if (exchanges) t.heads = dev.allocate(head_bytes);
  };
  const int64_t q_bytes = B * t_in * s.q_heads * D * eb, q_shard = B * t_shard * c_.q_heads() * D * eb;
  const int64_t o_bytes = B * t_in * s.q_heads * Dv * eb, o_shard = B * t_shard * c_.q_heads() * Dv * eb;
  const int64_t kv_bytes = c_.layout.kv_block_bytes(t_in, s.kv_heads);
  const int64_t kv_shard = c_.layout.kv_block_bytes(t_shard, c_.kv_heads());
  make(q_, q_bytes, q_shard);
  make(kv_, kv_bytes, kv_shard);
  make(o_, o_bytes, o_shard);
  if (backward_.size() == 0) return;
  make(do_, o_bytes, o_shard);
  make(dq_, q_bytes, q_shard);
  make(dkv_, kv_bytes, kv_shard);
  if (!ring_ && !allgather_)
    local_grads_ = dev.allocate(kv_shard / eb * static_cast<int64_t>(sizeof(float)));
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
    c_.device.synchronize();  // `stored` is reused and freed: the upload must have read it
  };
  make(Tensor::q, all_q, c_.head_dim, q_.tokens.data());
  make(Tensor::k, all_kv, c_.head_dim, kv_.tokens.data());
  make(Tensor::v, all_kv, c_.v_head_dim, kv_.tokens.data() + kv_split(c_.in_tokens, s.kv_heads));
  if (do_.tokens.data()) make(kGradOutput, all_q, c_.v_head_dim, do_.tokens.data());
}

UlyssesExchange::Part RankExecution::part_of(Payload p) const {
  const int64_t in_v = kv_split(c_.in_tokens, c_.shape.kv_heads), shard_v = kv_split(c_.shard_tokens, c_.kv_heads());
  switch (p) {
    case Payload::q: return {Tensor::q, q_.tokens.data(), q_.heads.data()};
    case Payload::k: return {Tensor::k, kv_.tokens.data(), kv_.heads.data()};
    case Payload::v: return {Tensor::v, kv_.tokens.data() + in_v, kv_.heads.data() + shard_v};
    case Payload::o: return {Tensor::o, o_.tokens.data(), o_.heads.data()};
    case Payload::grad_o: return {Tensor::o, do_.tokens.data(), do_.heads.data()};
    case Payload::grad_q: return {Tensor::q, dq_.tokens.data(), dq_.heads.data()};
    case Payload::grad_k: return {Tensor::k, dkv_.tokens.data(), dkv_.heads.data(), true};
    case Payload::grad_v: return {Tensor::v, dkv_.tokens.data() + in_v, dkv_.heads.data() + shard_v, true};
    case Payload::lengths: break;
  }
  throw Error("the Ulysses exchange moves no tensor for the lengths (executor bug)");
}

// One phase of the plan: which motion moves what.
void RankExecution::run_step(const PhaseStep& step) {
  std::vector<UlyssesExchange::Part> parts;
  for (Payload p : step.moves)
    if (p != Payload::lengths) parts.push_back(part_of(p));
  switch (step.motion) {
    case Motion::lengths_allgather:
      return ulysses_->exchange_lengths();
    case Motion::seq_to_heads:
      return ulysses_->to_heads(parts);
    case Motion::heads_to_seq:
      if (step.carries(Payload::o)) store_output();
      return ulysses_->to_tokens(parts);
    case Motion::kv_allgather:
      return allgather_->gather(shard(kv_));
    case Motion::none:
    case Motion::ring:
      return step.phase == Phase::attention_bwd ? attend_backward(step) : attend_forward(step);
    case Motion::reduce_scatter:
      return reduce_scatter();
  }
}

void RankExecution::attend_forward(const PhaseStep& step) {
  const DType dt = c_.shape.dtype;
  const Queries queries{{shard(q_), dt, c_.batch * c_.shard_tokens, c_.q_heads(), c_.head_dim}, q_runs_};
  const AttendBlock attend = [&](std::byte* kv, int64_t tokens, std::span<const StoredRun> runs) {
    const int64_t rows = c_.batch * tokens;
    const KvBlock block{{kv, dt, rows, c_.kv_heads(), c_.head_dim},
                        {kv + kv_split(tokens, c_.kv_heads()), dt, rows, c_.kv_heads(), c_.v_head_dim}, runs};
    attention_->attend(queries, block, params_);
  };
  if (step.motion == Motion::ring)
    ring_->attend(shard(kv_), attend);
  else if (allgather_)
    allgather_->attend(attend);  // the shards the allgather phase gathered
  else
    attend(shard(kv_), c_.shard_tokens, q_runs_);
}

// O leaves the kernel state in phase o, where the plan sends it home, or alone when it stays
// (U == 1: the plan has no o; the store is still timed as o, as the simulator's o is 0 there).
void RankExecution::store_output() {
  const int64_t o_bytes = c_.batch * c_.shard_tokens * c_.q_heads() * c_.v_head_dim * c_.elem_bytes;
  attention_->store_output(c_.shape.dtype, shard(o_), o_bytes);
}

void RankExecution::attend_backward(const PhaseStep& step) {
  const DType dt = c_.shape.dtype;
  const int64_t q_rows = c_.batch * c_.shard_tokens;
  attention_->begin_backward({shard(do_), dt, q_rows, c_.q_heads(), c_.v_head_dim}, q_runs_, c_.head_dim);
  const Queries queries{{shard(q_), dt, q_rows, c_.q_heads(), c_.head_dim}, q_runs_};
  const AttendBlockBackward attend = [&](std::byte* kv, int64_t tokens, std::span<const StoredRun> runs,
                                         std::byte* grads) {
    const int64_t rows = c_.batch * tokens, hkv = c_.kv_heads();
    const KvBlock block{{kv, dt, rows, hkv, c_.head_dim}, {kv + kv_split(tokens, hkv), dt, rows, hkv, c_.v_head_dim}, runs};
    float* dk = reinterpret_cast<float*>(grads);
    attention_->attend_backward(queries, block, params_,
                                {{dk, rows, hkv, c_.head_dim}, {dk + rows * hkv * c_.head_dim, rows, hkv, c_.v_head_dim}});
  };
  if (step.motion == Motion::ring) {
    store_kv_grads(ring_->attend_backward(shard(kv_), attend));
  } else if (allgather_) {
    allgather_->attend_backward(attend);  // dK, dV go home in the reduce-scatter
  } else {
    c_.device.zero(local_grads_.data(), local_grads_.bytes());
    attend(shard(kv_), c_.shard_tokens, q_runs_, local_grads_.data());
    store_kv_grads(local_grads_.data());
  }
  attention_->store_grad_q(dt, shard(dq_), q_rows * c_.q_heads() * c_.head_dim * c_.elem_bytes);
}

void RankExecution::reduce_scatter() { store_kv_grads(allgather_->reduce_scatter()); }

void RankExecution::store_kv_grads(const std::byte* grads) {
  const int64_t elems = c_.layout.kv_block_bytes(c_.shard_tokens, c_.kv_heads()) / c_.elem_bytes;
  c_.device.store_floats(grads, elems, c_.shape.dtype, shard(dkv_));
}

// Every phase ends with a device synchronize: on a GPU the host timer then measures the work,
// not the time to enqueue it. A backward pass alone runs its forward untimed first.
void RankExecution::iterate(PhaseTimer& timer) {
  attention_->clear();
  c_.device.synchronize();
  const bool times_forward = has_forward(options_.pass);
  if (!times_forward) {
    for (const PhaseStep& step : forward_) run_step(step);
    if (!forward_.has(Phase::o)) store_output();
    c_.device.synchronize();
  }
  timer.begin_iteration();
  for (const PhasePlan* plan : {&forward_, &backward_}) {
    if (plan == &forward_ && !times_forward) continue;
    for (const PhaseStep& step : *plan) {
      if (options_.phase_barriers) world_.barrier();
      timer.start(step.phase);
      run_step(step);
      c_.device.synchronize();
      timer.stop(step.phase);
    }
    if (plan == &forward_ && !forward_.has(Phase::o)) {
      if (options_.phase_barriers) world_.barrier();
      timer.start(Phase::o);
      store_output();
      c_.device.synchronize();
      timer.stop(Phase::o);
    }
  }
  timer.end_iteration(world_);
}

std::vector<float> RankExecution::rows_of(Payload p) const {
  const AttentionShape& s = c_.shape;
  switch (p) {
    case Payload::o: return real_rows(c_, o_.tokens.data(), s.q_heads, c_.v_head_dim);
    case Payload::grad_q: return real_rows(c_, dq_.tokens.data(), s.q_heads, c_.head_dim);
    case Payload::grad_k: return real_rows(c_, dkv_.tokens.data(), s.kv_heads, c_.head_dim);
    case Payload::grad_v: return real_rows(c_, dv_tokens(), s.kv_heads, c_.v_head_dim);
    default: throw Error("no rows to collect for that payload (executor bug)");
  }
}

void check_same_arguments(const Layout& layout, const ExecutorOptions& options, Comm& world) {
  const std::string text = to_json(layout.shape()).dump() + to_string(layout.choice()) + "/" +
                           std::to_string(layout.cluster().ranks_per_node) + " " + std::to_string(options.warmups) + " " + std::to_string(options.iterations) + " " +
                           std::to_string(options.verify) + " " + std::to_string(options.seed) + " " +
                           std::to_string(static_cast<int>(options.metadata)) + " " + std::to_string(options.phase_barriers) + " " +
                           std::string(to_string(options.pass)) + " " + world.backend();
  const uint64_t mine = fnv1a(text);
  std::vector<uint64_t> all(static_cast<size_t>(world.size()));
  world.allgather_host(&mine, sizeof(mine), all.data());
  for (int r = 0; r < world.size(); ++r)
    if (all[r] != all[0])
      throw Error("rank " + std::to_string(r) + " was started with different arguments than rank 0 (argument hash " +
                  std::to_string(all[r]) + " vs " + std::to_string(all[0]) + "); start every rank with the same command");
}

ErrorStats stats_of(const RowCheck& c) { return {c.max_abs_err, c.max_tolerance, c.worst_ratio, c.rows}; }

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
      if (has_backward(options.pass)) {
        const GradientChecks grads = runs[k]->verify_backward();
        result.grad_q_err = stats_of(merge_checks(grads.dq, world));
        result.grad_k_err = stats_of(merge_checks(grads.dk, world));
        result.grad_v_err = stats_of(merge_checks(grads.dv, world));
      }
    }
    if (options.collect_output) {
      const AttentionShape& s = layouts[k].shape();
      const Layout& L = layouts[k];
      result.output = gather_rows(L, runs[k]->rows_of(Payload::o), s.q_heads * s.v_head_dim, world);
      if (has_backward(options.pass)) {
        result.grad_q = gather_rows(L, runs[k]->rows_of(Payload::grad_q), s.q_heads * s.head_dim, world);
        result.grad_k = gather_rows(L, runs[k]->rows_of(Payload::grad_k), s.kv_heads * s.head_dim, world);
        result.grad_v = gather_rows(L, runs[k]->rows_of(Payload::grad_v), s.kv_heads * s.v_head_dim, world);
      }
    }
  }
  return results;
}

}  // namespace cptune::backends
