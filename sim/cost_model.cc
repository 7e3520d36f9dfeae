#include "sim/cost_model.h"

#include <algorithm>

#include <fmt/format.h>

#include "core/error.h"

namespace cptune::sim {
namespace {

double over(int64_t bytes, double bytes_per_s) { return double(bytes) / bytes_per_s; }

// The outermost level with a nonzero count: where a group's widest pair of ranks meets.
size_t widest_level(const LevelBytes& counts, size_t levels) {
  size_t widest = 0;
  for (size_t i = 0; i < levels; ++i)
    if (counts[i] > 0) widest = i;
  return widest;
}

// The most loaded uplink of a phase: bytes over its bandwidth after oversubscription, plus, for a
// ring hop (with_latency), the latency of the level the crossing messages meet at.
double uplink_s(const LevelBytes& uplink, const Hardware& hw, bool with_latency) {
  double worst = 0;
  for (size_t i = 0; i + 1 < level_count(hw); ++i) {
    const double bw = uplink_bandwidth(hw, i);
    if (bw > 0 && uplink[i] > 0)
      worst = std::max(worst, (with_latency ? level_link(hw, i + 1).alpha_s : 0.0) + over(uplink[i], bw));
  }
  return worst;
}

double slowest_exchange_s(const std::vector<ExchangeLoad>& loads, const LevelBytes& uplink, const Hardware& hw) {
  const double shared = uplink_s(uplink, hw, false);
  double worst = 0;
  for (const ExchangeLoad& e : loads) worst = std::max(worst, exchange_time_s(e, hw, shared));
  return worst;
}

double gather_s(const std::vector<ExchangeLoad>& loads, const LevelBytes& uplink, const Hardware& hw,
                MetadataChannel channel) {
  const double shared = uplink_s(uplink, hw, false);
  double worst = 0;
  for (const ExchangeLoad& e : loads) worst = std::max(worst, gather_time_s(e, hw, channel, shared));
  return worst;
}

// Per level, the time its busiest link is busy in one phase (the rank paths there, and the
// uplinks of the instances below that the level's traffic crosses): for the per-level report.
void add_level_times(Prediction& out, const std::vector<ExchangeLoad>& loads, const LevelBytes& uplink,
                     const Hardware& hw, double times) {
  for (size_t i = 0; i < out.levels; ++i) {
    double busy = i > 0 && uplink_bandwidth(hw, i - 1) > 0 ? over(uplink[i - 1], uplink_bandwidth(hw, i - 1)) : 0.0;
    for (const ExchangeLoad& e : loads) busy = std::max(busy, over(e.bytes[i], level_bandwidth(hw, i)));
    out.level_s[i] += times * busy;
  }
}

void add_hop_level_times(Prediction& out, const LevelBytes& bytes, const LevelBytes& uplink, const Hardware& hw,
                         double times) {
  for (size_t i = 0; i < out.levels; ++i) {
    double busy = over(bytes[i], level_bandwidth(hw, i));
    if (i > 0 && uplink_bandwidth(hw, i - 1) > 0) busy = std::max(busy, over(uplink[i - 1], uplink_bandwidth(hw, i - 1)));
    out.level_s[i] += times * busy;
  }
}

// The slowest rank's attention call at its own shape, or the busiest node's when its ranks
// share compute units.
double compute_s(const AttentionCall& call, const NodeWork& node, double factor, const Hardware& hw, DType dtype) {
  return factor * std::max(attention_time_s(call, dtype, hw), node_attention_time_s(node, dtype, hw));
}

// A ring step's compute: the attention kernel on the block held (one call at the block's size)
// and, after the first step, the merge kernel, each with its launch; slowed by the NCCL kernels
// running beside it when the step sends; nothing on a rank whose block the mask hides entirely.
double step_compute_s(const PreparedLayout& p, const RingStepLoad& s, double factor, const Hardware& hw, bool sends) {
  if (s.flops == 0) return 0;
  const double kernels = compute_s(ring_step_call(p, s), s.node, factor, hw, p.dtype) +
                         (s.merge_bytes > 0 ? over(s.merge_bytes, hw.memory_bandwidth_bytes_per_s) : 0.0);
  return hw.kernel_launch_s * (s.merge_bytes > 0 ? 2 : 1) + (sends ? hw.comm_compute_slowdown : 1.0) * kernels;
}

// Ring attention, bulk-synchronous: step k computes against the block it holds while sending
// that block on, so a step lasts max(hop, compute + merge) of its slowest rank, plus the part
// of the shorter one that does not overlap (ring_step_time_s).
double ring_forward_s(const PreparedLayout& p, const Hardware& hw) {
  const double shared = uplink_s(p.ring_uplink, hw, true);
  double total = 0;
  for (const RingStepLoad& s : p.ring_steps) {
    const bool sends = s.bytes != LevelBytes{};
    const double compute = step_compute_s(p, s, 1.0, hw, sends);
    const double hop = hop_time_s(s.bytes, hw, sends ? shared : 0.0);
    total += double(s.repeat) * ring_step_time_s(hop, compute, hw);
  }
  return total;
}

// Backward ring: each step sends the K,V block and the dK,dV accumulated for it (two messages,
// the second in fp32) while computing backward_compute_factor times the forward; after the last
// step every dK,dV block takes one more hop home, which nothing overlaps.
double ring_backward_s(const PreparedLayout& p, const Hardware& hw) {
  const double shared = uplink_s(p.ring_uplink, hw, true), grad_shared = uplink_s(p.kv_grad(p.ring_uplink), hw, true);
  double total = 0;
  for (const RingStepLoad& s : p.ring_steps) {
    const bool sends = s.bytes != LevelBytes{};
    const double compute = step_compute_s(p, s, hw.backward_compute_factor, hw, sends);
    const double hops = hop_time_s(s.bytes, hw, sends ? shared : 0.0) +
                        hop_time_s(p.kv_grad(s.bytes), hw, sends ? grad_shared : 0.0);
    total += double(s.repeat) * ring_step_time_s(hops, compute, hw);
  }
  return total + hop_time_s(p.ring_return_bytes, hw, grad_shared);
}

// All-gather as NCCL's ring runs it: R-1 steps, each forwarding one shard to the neighbour.
// The layout counts a direct exchange (each shard once per peer); a ring instead pushes all
// R-1 shards through every hop, the NIC included when the ring spans nodes, so a step is as
// slow as its slower link class. The reduce-scatter of dK,dV in the backward mirrors it.
// With an all_gather rate measured for the ring's widest level (nccl-tests all_gather_perf), a
// step is that rate's alpha and bandwidth for one block instead. `grads`: the reduce-scatter,
// whose blocks are dK,dV in fp32.
double allgather_s(const PreparedLayout& p, const Hardware& hw, bool grads) {
  if (p.allgather_steps == 0) return 0;
  const int64_t block_bytes = grads ? p.kv_grad(p.allgather_block_bytes) : p.allgather_block_bytes;
  LevelBytes block{};
  for (size_t i = 0; i < kMaxLevels; ++i) block[i] = p.allgather_hops[i] ? block_bytes : 0;
  const double shared = uplink_s(grads ? p.kv_grad(p.allgather_uplink) : p.allgather_uplink, hw, true);
  if (const LinkClass* rate = collective_rate(hw, widest_level(block, level_count(hw)), Collective::all_gather)) {
    const double step = std::max(shared, rate->alpha_s + over(block_bytes, rate->bandwidth_bytes_per_s));
    return double(p.allgather_steps) * (hw.operation_latency_s + step);
  }
  return double(p.allgather_steps) * hop_time_s(block, hw, shared);
}

// One attention call: the engine's overhead, the kernel (or the ring's steps) and its launch.
double attention_s(const PreparedLayout& p, const Hardware& hw, Pass pass) {
  const double factor = pass == Pass::forward ? 1.0 : hw.backward_compute_factor;
  const double work = p.has_ring() ? (pass == Pass::forward ? ring_forward_s(p, hw) : ring_backward_s(p, hw))
                                   : compute_s(whole_call(p), p.attention_node, factor, hw, p.dtype) +
                                         (p.max_flops > 0 ? hw.kernel_launch_s : 0.0);
  return hw.call_overhead_s + work;
}

void add_levels(LevelBytes& total, const LevelBytes& b, int64_t times = 1) {
  for (size_t i = 0; i < kMaxLevels; ++i) total[i] += times * b[i];
}

void add_bytes(Prediction& out, const ClassBytes& b, int64_t times = 1) {
  out.bytes_intra += times * b.intra;
  out.bytes_inter += times * b.inter;
}

// Each phase's time times the share of its work that is padding: token-proportional traffic
// carries padding_fraction of padding, attention computes flops - useful_flops of it.
double padding_waste_s(const PreparedLayout& p, const Prediction& out) {
  const double compute_waste = p.max_flops > 0 ? 1.0 - double(p.useful_flops_of_max) / double(p.max_flops) : 0.0;
  double traffic = 0;
  for (Phase ph : {Phase::qkv, Phase::allgather, Phase::o, Phase::grad_o, Phase::grad_qkv, Phase::reduce_scatter})
    traffic += out.phase(ph);
  return traffic * p.padding_fraction + (out.phase(Phase::attention) + out.phase(Phase::attention_bwd)) * compute_waste;
}

}  // namespace

// All-to-all-v, as NCCL runs it (one group of send/recv, a pair per peer): every peer costs
// its link's alpha, since the proxy posts them one after another; NVLink and the NIC are
// separate engines and all transfers run at once, so intra and inter bytes overlap and the
// slower class sets the time. The local pack and unpack copies run before and after it.
// With a topology: every peer costs the alpha of the level it is met at; the bytes to the peers
// of each level go over the rank's own path there, all paths at once, and the rank's injection
// port (when the paths share one) and the phase's most loaded uplink may be slower still.
// With a rate measured for the collective at the group's widest level (nccl-tests alltoall_perf
// over such a group), every peer costs its alpha and all the rank's bytes its bandwidth: the
// measurement already holds the paths, the host bounce and the injection port.
double exchange_time_s(const ExchangeLoad& e, const Hardware& hw, double shared_s) {
  return collective_exchange_s(e, hw, shared_s, Collective::alltoall);
}

double collective_exchange_s(const ExchangeLoad& e, const Hardware& hw, double shared_s, Collective collective) {
  const size_t levels = level_count(hw);
  int64_t peers = 0, bytes = 0;
  for (size_t i = 0; i < levels; ++i) peers += e.peers[i], bytes += e.bytes[i];
  double t = peers > 0 ? hw.operation_latency_s : 0.0;
  double bytes_s = shared_s;
  if (const LinkClass* rate = collective_rate(hw, widest_level(e.peers, levels), collective)) {
    t += double(peers) * rate->alpha_s;
    bytes_s = std::max(bytes_s, over(bytes, rate->bandwidth_bytes_per_s));
  } else {
    for (size_t i = 0; i < levels; ++i) t += double(e.peers[i]) * level_link(hw, i).alpha_s;
    for (size_t i = 0; i < levels; ++i) bytes_s = std::max(bytes_s, over(e.bytes[i], level_bandwidth(hw, i)));
    if (hw.injection_bytes_per_s > 0) bytes_s = std::max(bytes_s, over(e.injection_bytes, hw.injection_bytes_per_s));
  }
  const double kernels = e.copy_bytes > 0 ? 2 * hw.kernel_launch_s : 0.0;  // pack and unpack
  return t + bytes_s + over(e.copy_bytes, hw.memory_bandwidth_bytes_per_s) + kernels;
}

// UAA's lengths. CPU channel: a Gloo gather whose exposed latency per peer is the hardware's
// host_gather_alpha_s. Device: an all-gather on the device links, then the device-to-host copy
// and sync the all-to-all-v needs to size its buffers: a pipeline drain (host_sync_s).
double gather_time_s(const ExchangeLoad& e, const Hardware& hw, MetadataChannel channel, double shared_s) {
  const size_t levels = level_count(hw);
  double bytes_s = shared_s;
  int64_t peers = 0;
  for (size_t i = 0; i < levels; ++i) {
    bytes_s = std::max(bytes_s, over(e.bytes[i], level_bandwidth(hw, i)));
    peers += e.peers[i];
  }
  return channel == MetadataChannel::cpu
             ? (peers > 0 ? hw.operation_latency_s : 0.0) + double(peers) * hw.host_gather_alpha_s + bytes_s
             : collective_exchange_s(e, hw, shared_s, Collective::all_gather) + host_sync_s(hw, kLaunchesAfterLengthsSync);
}

// A sync empties the queue the CPU had filled ahead of the GPU: the GPU waits the round trip
// (device_sync_s: the copy to the host and the stream synchronize), then for the CPU to issue
// everything behind the sync up to the next kernel long enough to hide launches: each of those
// launches (kernel_launch_s) and the engine's own host work around the call (call_overhead_s),
// which without a sync runs while the GPU still works on earlier kernels.
double host_sync_s(const Hardware& hw, int64_t launches_behind) {
  return hw.device_sync_s + double(launches_behind) * hw.kernel_launch_s + hw.call_overhead_s;
}

// One message to the ring neighbour; the slowest rank's hop may be met at any level, at the
// level's sendrecv rate where one was measured (nccl-tests sendrecv_perf), else its path's.
double hop_time_s(const LevelBytes& bytes, const Hardware& hw, double shared_s) {
  double t = 0;
  for (size_t i = 0; i < level_count(hw); ++i) {
    if (bytes[i] == 0) continue;
    const LinkClass* rate = collective_rate(hw, i, Collective::sendrecv);
    t = std::max(t, rate ? rate->alpha_s + over(bytes[i], rate->bandwidth_bytes_per_s)
                         : level_link(hw, i).alpha_s + over(bytes[i], level_bandwidth(hw, i)));
  }
  if (t > 0) t = std::max(t, shared_s);
  return t > 0 ? hw.operation_latency_s + t : 0.0;
}

double ring_step_time_s(double hop_s, double compute_s, const Hardware& hw) {
  return std::max(hop_s, compute_s) + hw.overlap_exposed_fraction * std::min(hop_s, compute_s);
}

double attention_time_s(int64_t flops, DType dtype, const Hardware& hw) {
  return double(flops) / hw.attention_flops_per_s.of(dtype);
}

double attention_time_s(const AttentionCall& call, DType dtype, const Hardware& hw) {
  return attention_call_s(call, hw.attention_kernel, hw.attention_flops_per_s.of(dtype));
}

// The calls a layout issues, at their own size: one over the rank's whole sequence (no ring), or
// one per ring step over the block it holds (query rows: the largest shard).
AttentionCall whole_call(const PreparedLayout& p) {
  return {p.attention_query_rows, p.attention_batch_heads, p.call_head_dim, p.max_flops};
}

AttentionCall ring_step_call(const PreparedLayout& p, const RingStepLoad& s) {
  return {p.ring_query_rows, p.attention_batch_heads, p.call_head_dim, s.flops};
}

// Processor sharing, as an OS scheduler shares cores among busy processes: while m ranks still
// compute, each gets min(1, units / m) of a unit, so a rank that finishes early (an idle ring
// step, fewer heads) hands its share to the rest. Ranks sorted by work finish in that order.
double node_attention_time_s(const NodeWork& node, DType dtype, const Hardware& hw) {
  if (hw.compute_units_per_node <= 0 || node.flops_ranks.empty()) return 0;
  int64_t busy = 0;
  for (const auto& [flops, ranks] : node.flops_ranks) busy += ranks;
  double t = 0, done_flops = 0;
  for (const auto& [flops, ranks] : node.flops_ranks) {
    const double share = std::min(1.0, hw.compute_units_per_node / double(busy));
    t += (double(flops) - done_flops) / (share * hw.attention_flops_per_s.of(dtype));
    done_flops = double(flops);
    busy -= ranks;
  }
  return t;
}

std::string_view report_name(Pass p) { return p == Pass::forward_backward ? "fwd-bwd" : to_string(p); }

// Per level: bytes sent there, and the time its busiest link is busy, phase by phase.
void add_level_report(Prediction& out, const PreparedLayout& p, const Hardware& hw, Pass pass) {
  const int64_t forward = has_forward(pass) ? 1 : 0, backward = has_backward(pass) ? 1 : 0;
  for (const LevelBytes& b : {p.gather_levels, p.qkv_levels, p.allgather_levels, p.ring_levels, p.o_levels})
    add_levels(out.level_bytes, b, forward);
  add_levels(out.level_bytes, p.o_levels, backward);
  add_levels(out.level_bytes, p.qkv_levels, backward);
  add_levels(out.level_bytes, p.kv_grad(p.allgather_levels), backward);
  add_levels(out.level_bytes, p.ring_return_levels, backward);
  add_levels(out.level_bytes, p.ring_levels, backward);           // K,V again
  add_levels(out.level_bytes, p.kv_grad(p.ring_levels), backward);  // dK,dV along the same hops
  const double both = double(forward + backward);
  add_level_times(out, p.gather, p.gather_uplink, hw, double(forward));
  add_level_times(out, p.qkv, p.qkv_uplink, hw, both);
  add_level_times(out, p.o, p.o_uplink, hw, both);
  for (const RingStepLoad& s : p.ring_steps) {
    add_hop_level_times(out, s.bytes, p.ring_uplink, hw, double(s.repeat) * both);
    if (backward) add_hop_level_times(out, p.kv_grad(s.bytes), p.kv_grad(p.ring_uplink), hw, double(s.repeat));
  }
  if (backward) add_hop_level_times(out, p.ring_return_bytes, p.kv_grad(p.ring_uplink), hw, 1.0);
  if (p.allgather_steps > 0) {
    LevelBytes block{};
    for (size_t i = 0; i < kMaxLevels; ++i) block[i] = p.allgather_hops[i] ? p.allgather_block_bytes : 0;
    add_hop_level_times(out, block, p.allgather_uplink, hw, double(p.allgather_steps) * double(forward));
    if (backward)
      add_hop_level_times(out, p.kv_grad(block), p.kv_grad(p.allgather_uplink), hw, double(p.allgather_steps));
  }
}

Prediction predict(const PreparedLayout& p, const Hardware& hw, const PredictOptions& options) {
  if (p.topology.levels() != level_count(hw))
    throw Error(fmt::format("layout prepared for {} topology levels, hardware '{}' has {}; prepare it with "
                            "topology_of(hardware, ...)",
                            p.topology.levels(), hw.name, level_count(hw)));
  Prediction out;
  out.levels = p.topology.levels();
  const double gather = gather_s(p.gather, p.gather_uplink, hw, options.metadata);
  const double qkv = slowest_exchange_s(p.qkv, p.qkv_uplink, hw), o = slowest_exchange_s(p.o, p.o_uplink, hw);
  const double allgather = allgather_s(p, hw, false);
  if (has_forward(options.pass)) {
    out.phase(Phase::gather) = gather;
    out.phase(Phase::qkv) = qkv;
    out.phase(Phase::allgather) = allgather;
    out.phase(Phase::attention) = attention_s(p, hw, Pass::forward);
    out.phase(Phase::o) = o;
    for (const ClassBytes& b : {p.gather_total, p.qkv_total, p.allgather_total, p.ring_total, p.o_total}) add_bytes(out, b);
  }
  out.peak_bytes = p.peak_bytes;
  add_level_report(out, p, hw, options.pass);

  if (has_backward(options.pass)) {
    // dO and dQ,dK,dV are the transposes of O's and Q,K,V's exchanges: the same per-rank
    // max(sent, received), so the same loads. Q,K,V,O and the log-sum-exp stay from the forward.
    out.phase(Phase::grad_o) = o;
    out.phase(Phase::attention_bwd) = attention_s(p, hw, Pass::backward);
    out.phase(Phase::grad_qkv) = qkv;
    out.phase(Phase::reduce_scatter) = allgather_s(p, hw, true);
    for (const ClassBytes& b : {p.o_total, p.qkv_total, p.kv_grad(p.allgather_total), p.ring_return_total}) add_bytes(out, b);
    add_bytes(out, p.ring_total);           // K,V again
    add_bytes(out, p.kv_grad(p.ring_total));  // and dK,dV along the same hops
    // Gradients mirror the forward's buffers one for one (dQ,dK,dV,dO and their exchanges).
    out.peak_bytes = 2 * p.peak_bytes;
  }
  for (double t : out.phase_s) out.total_s += t;
  out.fits = out.peak_bytes <= hw.device_memory_bytes;
  out.padding_waste_s = padding_waste_s(p, out);
  return out;
}

Prediction predict(const Layout& layout, const Hardware& hw, const PredictOptions& options) {
  const Topology topology = topology_of(hw, layout.cluster().ranks_per_node, layout.world());
  return predict(prepare(layout, topology), hw, options);
}

}  // namespace cptune::sim
