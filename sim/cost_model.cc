#include "sim/cost_model.h"

#include <algorithm>

#include "core/error.h"

namespace cptune::sim {
namespace {

double over(int64_t bytes, double bytes_per_s) { return double(bytes) / bytes_per_s; }

double slowest_exchange_s(const std::vector<ExchangeLoad>& loads, const Hardware& hw) {
  double worst = 0;
  for (const ExchangeLoad& e : loads) worst = std::max(worst, exchange_time_s(e, hw));
  return worst;
}

double gather_s(const std::vector<ExchangeLoad>& loads, const Hardware& hw, MetadataChannel channel) {
  double worst = 0;
  for (const ExchangeLoad& e : loads) worst = std::max(worst, gather_time_s(e, hw, channel));
  return worst;
}

// The slowest rank's attention, or the busiest node's when its ranks share compute units.
double compute_s(int64_t max_flops, const NodeWork& node, double factor, const Hardware& hw, DType dtype) {
  return factor * std::max(attention_time_s(max_flops, dtype, hw), node_attention_time_s(node, dtype, hw));
}

// Ring attention, bulk-synchronous: step k computes against the block it holds while sending
// that block on, so a step lasts max(hop, compute + merge) of its slowest rank, plus the part
// of the shorter one that does not overlap (ring_step_time_s).
double ring_forward_s(const PreparedLayout& p, const Hardware& hw) {
  double total = 0;
  for (const RingStepLoad& s : p.ring_steps) {
    const double compute = compute_s(s.flops, s.node, 1.0, hw, p.dtype) + over(s.merge_bytes, hw.memory_bandwidth_bytes_per_s);
    total += double(s.repeat) * ring_step_time_s(hop_time_s(s.intra_bytes, s.inter_bytes, hw), compute, hw);
  }
  return total;
}

// Backward ring: each step sends the K,V block and the dK,dV accumulated for it (two messages
// of the same size) while computing 2.5x the forward; after the last step every dK,dV block
// takes one more hop home, which nothing overlaps.
double ring_backward_s(const PreparedLayout& p, const Hardware& hw) {
  double total = 0;
  for (const RingStepLoad& s : p.ring_steps) {
    const double compute = compute_s(s.flops, s.node, kBackwardComputeFactor, hw, p.dtype) +
                           over(s.merge_bytes, hw.memory_bandwidth_bytes_per_s);
    total += double(s.repeat) * ring_step_time_s(2 * hop_time_s(s.intra_bytes, s.inter_bytes, hw), compute, hw);
  }
  return total + hop_time_s(p.ring_return_intra_bytes, p.ring_return_inter_bytes, hw);
}

// All-gather as NCCL's ring runs it: R-1 steps, each forwarding one shard to the neighbour.
// The layout counts a direct exchange (each shard once per peer); a ring instead pushes all
// R-1 shards through every hop, the NIC included when the ring spans nodes, so a step is as
// slow as its slower link class. The reduce-scatter of dK,dV in the backward mirrors it.
double allgather_s(const PreparedLayout& p, const Hardware& hw) {
  if (p.allgather_steps == 0) return 0;
  const int64_t intra = p.allgather_intra ? p.allgather_block_bytes : 0;
  const int64_t inter = p.allgather_inter ? p.allgather_block_bytes : 0;
  return double(p.allgather_steps) * hop_time_s(intra, inter, hw);
}

double attention_s(const PreparedLayout& p, const Hardware& hw, Pass pass) {
  if (pass == Pass::forward)
    return p.has_ring() ? ring_forward_s(p, hw) : compute_s(p.max_flops, p.attention_node, 1.0, hw, p.dtype);
  return p.has_ring() ? ring_backward_s(p, hw)
                      : compute_s(p.max_flops, p.attention_node, kBackwardComputeFactor, hw, p.dtype);
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
double exchange_time_s(const ExchangeLoad& e, const Hardware& hw) {
  const double start = e.intra_peers + e.inter_peers > 0 ? hw.operation_latency_s : 0.0;
  return start + double(e.intra_peers) * hw.intra.alpha_s + double(e.inter_peers) * hw.inter.alpha_s +
         std::max(over(e.intra_bytes, hw.intra.bandwidth_bytes_per_s), over(e.inter_bytes, hw.inter.bandwidth_bytes_per_s)) +
         over(e.copy_bytes, hw.memory_bandwidth_bytes_per_s);
}

// UAA's lengths. CPU channel: a Gloo gather whose exposed latency per peer is the hardware's
// host_gather_alpha_s. Device: an all-gather on the device links, then the device-to-host copy
// and sync the all-to-all-v needs to size its buffers (the stream drains meanwhile).
double gather_time_s(const ExchangeLoad& e, const Hardware& hw, MetadataChannel channel) {
  const double bytes_s =
      std::max(over(e.intra_bytes, hw.intra.bandwidth_bytes_per_s), over(e.inter_bytes, hw.inter.bandwidth_bytes_per_s));
  const int64_t peers = e.intra_peers + e.inter_peers;
  return channel == MetadataChannel::cpu
             ? (peers > 0 ? hw.operation_latency_s : 0.0) + double(peers) * hw.host_gather_alpha_s + bytes_s
             : exchange_time_s(e, hw) + hw.device_sync_s;
}

// One message to the ring neighbour; the slowest rank's hop may be on either link class.
double hop_time_s(int64_t intra_bytes, int64_t inter_bytes, const Hardware& hw) {
  double t = 0;
  if (intra_bytes > 0) t = hw.intra.alpha_s + over(intra_bytes, hw.intra.bandwidth_bytes_per_s);
  if (inter_bytes > 0) t = std::max(t, hw.inter.alpha_s + over(inter_bytes, hw.inter.bandwidth_bytes_per_s));
  return t > 0 ? hw.operation_latency_s + t : 0.0;
}

double ring_step_time_s(double hop_s, double compute_s, const Hardware& hw) {
  return std::max(hop_s, compute_s) + hw.overlap_exposed_fraction * std::min(hop_s, compute_s);
}

double attention_time_s(int64_t flops, DType dtype, const Hardware& hw) {
  return double(flops) / hw.attention_flops_per_s.of(dtype);
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

std::string_view to_string(Pass p) { return p == Pass::forward ? "fwd" : "fwd-bwd"; }

Pass parse_pass(std::string_view s) {
  if (s == "fwd") return Pass::forward;
  if (s == "fwd-bwd") return Pass::forward_backward;
  throw Error("unknown pass '" + std::string(s) + "'; choose fwd or fwd-bwd");
}

Prediction predict(const PreparedLayout& p, const Hardware& hw, const PredictOptions& options) {
  Prediction out;
  out.phase(Phase::gather) = gather_s(p.gather, hw, options.metadata);
  out.phase(Phase::qkv) = slowest_exchange_s(p.qkv, hw);
  out.phase(Phase::allgather) = allgather_s(p, hw);
  out.phase(Phase::attention) = attention_s(p, hw, Pass::forward);
  out.phase(Phase::o) = slowest_exchange_s(p.o, hw);
  for (const ClassBytes& b : {p.gather_total, p.qkv_total, p.allgather_total, p.ring_total, p.o_total}) add_bytes(out, b);
  out.peak_bytes = p.peak_bytes;

  if (options.pass == Pass::forward_backward) {
    // dO and dQ,dK,dV are the transposes of O's and Q,K,V's exchanges: the same per-rank
    // max(sent, received), so the same loads. Q,K,V,O and the log-sum-exp stay from the forward.
    out.phase(Phase::grad_o) = out.phase(Phase::o);
    out.phase(Phase::attention_bwd) = attention_s(p, hw, Pass::forward_backward);
    out.phase(Phase::grad_qkv) = out.phase(Phase::qkv);
    out.phase(Phase::reduce_scatter) = out.phase(Phase::allgather);
    for (const ClassBytes& b : {p.o_total, p.qkv_total, p.allgather_total, p.ring_return_total}) add_bytes(out, b);
    add_bytes(out, p.ring_total, 2);  // K,V again and dK,dV along the same hops
    // Gradients mirror the forward's buffers one for one (dQ,dK,dV,dO and their exchanges).
    out.peak_bytes = 2 * p.peak_bytes;
  }
  for (double t : out.phase_s) out.total_s += t;
  out.fits = out.peak_bytes <= hw.device_memory_bytes;
  out.padding_waste_s = padding_waste_s(p, out);
  return out;
}

Prediction predict(const Layout& layout, const Hardware& hw, const PredictOptions& options) {
  return predict(prepare(layout), hw, options);
}

}  // namespace cptune::sim
