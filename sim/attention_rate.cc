#include "sim/attention_rate.h"

#include <algorithm>
#include <cmath>

#include <fmt/format.h>

#include "core/error.h"

namespace cptune::sim {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The per-FLOP rate at head dim D relative to D = 128: small heads spend more of a tile on
// softmax and memory traffic per multiply-add (FlashAttention-2 paper, Fig. 4-7: D 64 below 128).
double head_dim_factor(int64_t head_dim, double d0) {
  if (d0 <= 0) return 1.0;
  const double d = double(head_dim);
  return (d / (d + d0)) / (128.0 / (128.0 + d0));
}

// The call's time without call_s, per unit of 1 / flops_per_s: waves x one tile's FLOPs-worth.
double wave_flops(const AttentionCall& c, const AttentionKernel& k, double d0, double keys_overhead) {
  const double keys = double(c.flops) / (4.0 * double(c.head_dim) * double(c.batch_heads) * double(c.query_rows));
  const double tile_flops = 4.0 * double(c.head_dim) * double(k.tile_rows) * (keys + keys_overhead);
  return double(attention_waves(c, k)) * double(k.units) * tile_flops / head_dim_factor(c.head_dim, d0);
}

bool empty(const AttentionCall& c) { return c.flops <= 0 || c.query_rows <= 0 || c.batch_heads <= 0 || c.head_dim <= 0; }

// Weighted least squares of t = call + x * inv_rate (weights 1/t^2), call >= 0, inv_rate > 0.
struct LineFit {
  double call = 0, inv_rate = 0, cost = INFINITY;
};
// With fixed_call >= 0 only the slope is fitted: t - call = x * inv_rate.
LineFit fit_line(std::span<const double> x, std::span<const AttentionPoint> points, double fixed_call) {
  double s00 = 0, s01 = 0, s11 = 0, r0 = 0, r1 = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double t = points[i].seconds, w = 1 / (t * t);
    s00 += w, s01 += w * x[i], s11 += w * x[i] * x[i], r0 += w * t, r1 += w * x[i] * t;
  }
  LineFit f;
  const double det = s00 * s11 - s01 * s01;
  if (fixed_call >= 0) {
    f.call = fixed_call;
    f.inv_rate = (r1 - fixed_call * s01) / s11;
  } else {
    f.call = det > 0 ? (r0 * s11 - r1 * s01) / det : 0;
    f.inv_rate = det > 0 ? (s00 * r1 - s01 * r0) / det : 0;
    if (f.call < 0 || !(f.inv_rate > 0)) f.call = 0, f.inv_rate = r1 / s11;  // through the origin
  }
  if (!(f.inv_rate > 0)) return f;
  f.cost = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double rel = (f.call + x[i] * f.inv_rate - points[i].seconds) / points[i].seconds;
    f.cost += rel * rel;
  }
  return f;
}

}  // namespace

int64_t attention_tiles(const AttentionCall& c, const AttentionKernel& k) {
  return c.batch_heads * ceil_div(c.query_rows, std::max<int64_t>(k.tile_rows, 1));
}

int64_t attention_waves(const AttentionCall& c, const AttentionKernel& k) {
  return ceil_div(attention_tiles(c, k), std::max<int64_t>(k.units, 1));
}

double attention_call_s(const AttentionCall& c, const AttentionKernel& k, double flops_per_s) {
  if (c.flops <= 0) return 0;
  if (!k.modelled() || empty(c)) return double(c.flops) / flops_per_s;
  return k.call_s + wave_flops(c, k, k.head_dim_overhead, k.tile_keys_overhead) / flops_per_s;
}

AttentionFit fit_attention_kernel(std::span<const AttentionPoint> points, const AttentionKernel& start, bool fix_call_s) {
  if (points.size() < 3) throw Error(fmt::format("an attention kernel fit needs at least 3 points, got {}", points.size()));
  if (!start.modelled() || start.tile_rows < 1)
    throw Error(fmt::format("an attention kernel fit needs the device's units and tile rows, got {} and {}", start.units,
                            start.tile_rows));
  for (const AttentionPoint& p : points)
    if (!(p.seconds > 0) || !std::isfinite(p.seconds) || empty(p.call))
      throw Error(fmt::format("attention point '{}' has time {} s and {} FLOPs; both must be positive", p.source, p.seconds,
                              p.call.flops));
  // For fixed tile and head-dim overheads the time is linear in (call_s, 1 / rate): a grid over
  // the two overheads, each cell a closed-form weighted line fit; the best cell wins.
  AttentionFit best;
  double best_cost = INFINITY;
  std::vector<double> x(points.size());
  for (int i = 0; i <= 48; ++i) {
    const double keys_overhead = i == 0 ? 0.0 : 4.0 * std::pow(2.0, (i - 1) / 4.0);  // 4 .. 16k keys
    for (int j = 0; j <= 24; ++j) {
      const double d0 = j == 0 ? 0.0 : 4.0 * std::pow(2.0, (j - 1) / 3.0);  // 4 .. 1k
      for (size_t p = 0; p < points.size(); ++p) x[p] = wave_flops(points[p].call, start, d0, keys_overhead);
      const LineFit f = fit_line(x, points, fix_call_s ? start.call_s : -1.0);
      if (f.cost < best_cost) {
        best_cost = f.cost;
        best.kernel = start;
        best.kernel.tile_keys_overhead = keys_overhead;
        best.kernel.head_dim_overhead = d0;
        best.kernel.call_s = f.call;
        best.flops_per_s = 1 / f.inv_rate;
      }
    }
  }
  if (!std::isfinite(best_cost)) throw Error("attention kernel fit: the times do not grow with the work; no rate to fit");
  std::vector<double> residuals;
  for (const AttentionPoint& p : points)
    residuals.push_back(std::fabs(attention_call_s(p.call, best.kernel, best.flops_per_s) - p.seconds) / p.seconds);
  best.max_abs_residual = *std::max_element(residuals.begin(), residuals.end());
  std::nth_element(residuals.begin(), residuals.begin() + residuals.size() / 2, residuals.end());
  best.median_abs_residual = residuals[residuals.size() / 2];
  return best;
}

}  // namespace cptune::sim
