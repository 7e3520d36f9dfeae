#pragma once
// Calibration probes: micro-measurements of the operations the executor is built from (one
// all-to-all-v, one ring hop, one attention call, one pack/unpack copy, one gather of sequence
// lengths), each run with the real Comm and kernel on every rank at once, as in a real run.
// Each probe carries its load in the cost model's own terms, so predict_probe() prices it
// with exactly the term that prices the same operation inside a layout.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/types.h"
#include "sim/hardware.h"
#include "sim/prepared_layout.h"

namespace cptune::backends {
class Comm;
}

namespace cptune::tuner {

// attention_bwd: one attention backward call (D = rowsum(dO o O) and attend_backward), priced
// as backward_compute_factor times the same call's forward.
enum class ProbeKind { alltoallv, ring_hop, attention, ring_step, copy, gather, attention_bwd };
inline constexpr ProbeKind kAllProbeKinds[] = {ProbeKind::alltoallv, ProbeKind::ring_hop, ProbeKind::attention,
                                               ProbeKind::ring_step, ProbeKind::copy,     ProbeKind::gather,
                                               ProbeKind::attention_bwd};
// "alltoallv", "ring-hop", "attention", "ring-step", "copy", "gather", "attention-bwd"
std::string_view to_string(ProbeKind kind);

struct Probe {
  ProbeKind kind = ProbeKind::alltoallv;
  std::string label;            // what ran, e.g. "alltoallv group 4, 64 KiB per peer"
  sim::ExchangeLoad exchange;   // alltoallv, copy, gather: one rank's load
  int64_t hop_bytes = 0;        // ring_hop, ring_step: bytes each rank sends to its neighbour
  int64_t flops = 0;            // attention, ring_step, attention_bwd: forward FLOPs of one rank, as the Layout counts them
  sim::NodeWork node;           // attention, ring_step, attention_bwd: every computing rank's FLOPs (one node)
  DType dtype = DType::bf16;    // attention, ring_step, attention_bwd
  double measured_s = 0;        // first rank's start to last rank's end: median (or min) over iterations
};

// The cost model's time for the probe on `hw`.
double predict_probe(const Probe& probe, const sim::Hardware& hw);

// One attention call: `tokens` queries against the same `tokens` keys of one sequence, on
// `active_ranks` ranks at once while the others wait (0: every rank), so the fit sees how
// ranks share the node's compute units.
struct AttentionProbeSpec {
  int64_t tokens = 0;
  int64_t q_heads = 2, kv_heads = 2;
  int64_t head_dim = 64;  // D = Dv
  Mask mask;
  DType dtype = DType::bf16;
  int active_ranks = 0;
};

// A ring step: every rank attends while its K,V block travels to the next rank, so the fit sees
// how much of the shorter of the two the other hides.
struct RingStepProbeSpec {
  AttentionProbeSpec attention;
  int64_t bytes = 0;
};

// bf16 (the default dtype) over tokens x head dim x {full, causal} on every rank; fp16 and
// fp32 on fewer; one size on 1, 2, ... ranks at once.
std::vector<AttentionProbeSpec> default_attention_probes();

// The backward of a few forward probes' shapes (bf16, every rank): what backward_compute_factor needs.
std::vector<AttentionProbeSpec> default_attention_backward_probes();

// Hop and compute of comparable length, hop shorter and longer: what the overlap term needs.
std::vector<RingStepProbeSpec> default_ring_step_probes();

// What to measure. Sizes are per message (alltoallv: per peer; ring: per hop); copies are
// row by row, as the executor packs. The default is a minute or so on 4 ranks of 2 cores.
struct ProbePlan {
  std::vector<int64_t> alltoallv_bytes{1 << 10, 16 << 10, 128 << 10, 512 << 10, 2 << 20};
  std::vector<int64_t> ring_bytes{4 << 10, 64 << 10, 512 << 10, 2 << 20, 8 << 20};
  std::vector<int64_t> copy_bytes{256 << 10, 2 << 20, 16 << 20};
  std::vector<AttentionProbeSpec> attention = default_attention_probes();
  std::vector<RingStepProbeSpec> ring_steps = default_ring_step_probes();
  std::vector<AttentionProbeSpec> attention_backward = default_attention_backward_probes();
  int warmups = 1;
  int iterations = 5;        // attention, forward and backward, and ring steps
  int comm_iterations = 7;   // messages, copies, gathers: each iteration 10 back to back
  // What a probe's time is over its iterations: the median (the default), or the minimum, the
  // least disturbed run on a machine shared with other work.
  bool fastest = false;
  uint64_t seed = 1;

  // Every size scaled by `factor` (at least one byte, 16 tokens): tests use small plans.
  ProbePlan scaled(double factor) const;
};

// Runs every probe of the plan; every rank of `world` calls it and gets the same probes back.
// Ulysses-like groups: the whole world, and groups of 2 when the world splits into them (the
// hybrids' U = 2), so the fit sees per-peer latency apart from bandwidth.
std::vector<Probe> measure_probes(backends::Comm& world, const ProbePlan& plan);

}  // namespace cptune::tuner
