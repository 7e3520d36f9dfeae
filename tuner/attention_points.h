#pragma once
// Attention kernel rates by shape from a CSV of measured or published points (one call each:
// device, kernel, pass, mask, seqlen, batch, heads, head_dim, tflops, source), for fitting
// sim::AttentionKernel (sim/attention_rate.h) the way `cptune calibrate --attention-points`
// does: a GPU probe's timings and the presets' published FlashAttention / cuDNN curves alike.
//
// TFLOP/s are counted as FlashAttention's benchmarks count them: 4 x seqlen^2 x head_dim x heads
// x batch per forward, halved under a causal mask, 3.5x that for forward + backward. A
// forward + backward point becomes the forward call the cost model prices (it charges the
// backward 2.5x the forward at the same rate): seconds = forward FLOPs / rate.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "sim/attention_rate.h"

namespace cptune::tuner {

struct AttentionPointRow {
  int line = 0;
  std::string device, kernel, pass, mask, source;
  int64_t seqlen = 0, batch = 0, heads = 0, head_dim = 0;
  double tflops = 0;
};

// Throws Error naming the file and line of a row it cannot read (columns, numbers, a pass other
// than fwd / fwd-bwd, a mask other than full / causal, a value out of range).
std::vector<AttentionPointRow> parse_attention_points(std::string_view text, const std::string& file);

// The rows of one device (and one kernel, when given) as points for sim::fit_attention_kernel.
// Throws Error when none match, listing the devices and kernels the file has.
std::vector<sim::AttentionPoint> attention_points_of(const std::vector<AttentionPointRow>& rows, const std::string& device,
                                                     const std::optional<std::string>& kernel);

}  // namespace cptune::tuner
