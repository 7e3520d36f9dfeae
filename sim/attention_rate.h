#pragma once
// sim::AttentionKernel: the time of one attention kernel call as a function of its shape, not
// of its FLOPs alone. A flash-attention kernel splits a call into work tiles of `tile_rows`
// query rows of one (batch, head) and runs them in waves over the device's `units` (SMs); each
// tile streams every key it sees and also pays a fixed part (loading its Q, writing O and the
// log-sum-exp) worth `tile_keys_overhead` keys; the call pays `call_s` on top (prologue, tail,
// the scheduler). So a ring's P calls on S/P x S/P blocks run below the rate of one call over S
// keys: fewer keys per tile, a last wave partly empty, P fixed costs. At long sequences the rate
// tends to Hardware::attention_flops_per_s (the asymptote the presets quote).
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace cptune::sim {

struct AttentionKernel {
  int64_t units = 0;              // SMs (GPU) or 1 (a CPU rank's own core); 0: no shape model
  int64_t tile_rows = 128;        // query rows of one work tile
  double tile_keys_overhead = 0;  // a tile's fixed work, in keys' worth of its streaming work
  double head_dim_overhead = 0;   // d0: per-FLOP rate x D / (D + d0), normalised to 1 at D = 128
  double call_s = 0;              // fixed time of one call beyond its launch
  bool operator==(const AttentionKernel&) const = default;
  bool modelled() const { return units > 0; }
};

// One kernel call, as the executor issues it: `query_rows` rows of each of `batch` x `heads`
// (batch, head) pairs, `flops` forward FLOPs in all (4 x rows x keys seen x D per pair, the mask
// applied), head dim D.
struct AttentionCall {
  int64_t query_rows = 0;
  int64_t batch_heads = 0;  // batch x query heads of the call
  int64_t head_dim = 128;
  int64_t flops = 0;
};

// Seconds of one call on a kernel whose long-sequence rate is `flops_per_s` (all units busy).
// Without a shape model (units == 0): flops / flops_per_s, as before.
double attention_call_s(const AttentionCall& call, const AttentionKernel& kernel, double flops_per_s);

// Work tiles of a call and the waves they take: ceil(batch_heads x ceil(rows / tile_rows) / units).
int64_t attention_tiles(const AttentionCall& call, const AttentionKernel& kernel);
int64_t attention_waves(const AttentionCall& call, const AttentionKernel& kernel);

// A measured or published point: one call's shape and its time.
struct AttentionPoint {
  AttentionCall call;
  double seconds = 0;
  std::string source;  // where the number comes from (paper and table, a probe, docs/gpu.md)
};

// Fits tile_keys_overhead, head_dim_overhead, call_s and the long-sequence rate to `points` by
// least squares on relative residuals (units and tile_rows kept from `start`: they are the
// device's and the kernel's, read from its datasheet and source). Returns the kernel and the rate.
struct AttentionFit {
  AttentionKernel kernel;
  double flops_per_s = 0;
  double median_abs_residual = 0;  // |predicted - measured| / measured over the points
  double max_abs_residual = 0;
};
// fix_call_s: keep start.call_s (benchmarks that hold batch x seqlen fixed, as FlashAttention's
// do, cannot tell a call's fixed cost from a tile's). Throws Error when fewer than 3 points are
// given or a point's time or FLOPs are not positive.
AttentionFit fit_attention_kernel(std::span<const AttentionPoint> points, const AttentionKernel& start, bool fix_call_s = false);

}  // namespace cptune::sim
