#pragma once
// The executor: runs one Layout for real on every rank of a Comm (Gloo: CPU ranks and host
// buffers; NCCL: one GPU per rank, device buffers and the CUDA kernel, see device.h),
// optionally verifies the output rows (and a backward's dQ, dK, dV) against independent
// double-precision references (reference.h, reference_bwd.h), and times every phase (slowest rank, median of N after W warm-ups; GPU phases end with a stream sync).
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "backends/exec/phase_timer.h"
#include "backends/exec/tensor_gen.h"
#include "backends/exec/verify_output.h"
#include "core/layout.h"

namespace cptune::backends {

class Comm;
class Device;

struct ExecutorOptions {
  int warmups = 1;
  int iterations = 5;
  bool verify = false;
  // Output rows (query token x head, every sample) verify checks. 0: every row when the shape
  // has at most kVerifyEveryRowPairs visible (query, key, head) triples over all samples, else
  // kVerifySampledRows sampled rows. N > 0: N sampled rows (every row when there are at most N).
  // Samples are seeded by `seed`, spread over the ranks by their share of the rows, and include
  // the first and last token of every run a rank holds, so every rank and sequence is checked.
  int64_t verify_rows = 0;
  // A barrier on every rank before each phase starts: each phase is timed alone, with no rank
  // still busy in the previous one (clean per-phase attribution for calibration and validation;
  // the barriers add their own time to the iteration). Off by default: engines overlap phases.
  bool phase_barriers = false;
  uint64_t seed = 1;
  MetadataChannel metadata = MetadataChannel::cpu;
  // Where buffers live and kernels run, owned by the caller: the GPU of an NCCL world
  // (make_cuda_device). Null: the host, which only a Gloo world can use.
  Device* device = nullptr;
  // Called after every round (each layout once, warm-ups included) with the rounds done and
  // the rounds in all; for progress reports. Not part of the arguments ranks must agree on.
  std::function<void(int done, int total)> on_round;
  // Q, K, V given whole (shape-checked by the caller) instead of generated from the seed;
  // verification then checks against attention over these. Not owned.
  const GivenInputs* inputs = nullptr;
  // Every rank gets RunResult::output, the whole O (collective: all ranks pass the same), and
  // with a backward pass grad_q, grad_k, grad_v.
  bool collect_output = false;
  // What is run and timed: the forward (phases gather..o), the backward alone (its forward runs
  // untimed first: the backward needs O and the log-sum-exp), or both, as the phase plan has them.
  Pass pass = Pass::forward;
};

// Errors of one checked tensor over every rank (tolerances per element: reference*.cc).
struct ErrorStats {
  double max_abs_err = 0;  // largest |x - x_ref|
  double tolerance = 0;    // largest per-element tolerance
  double worst_ratio = 0;  // largest |x - x_ref| / its tolerance; passes when <= 1
  int64_t rows = 0;        // rows (token x head) compared
  bool passed() const { return worst_ratio <= 1; }
};

struct RunResult {
  std::vector<PhaseStats> phases;  // slowest rank per iteration; median, min, max
  Spread time;                     // the whole pass timed (ExecutorOptions::pass), slowest rank
  std::vector<double> samples;     // that time for every timed iteration, in order
  int iterations = 0;
  // With verify, over every checked element of every rank (tolerances per element, reference.cc):
  std::optional<double> max_abs_err;  // largest |O - O_ref|
  double tolerance = 0;               // largest per-element tolerance (max_abs_err may reach it)
  double worst_ratio = 0;             // largest |O - O_ref| / its tolerance; passes when <= 1
  int64_t verified_rows = 0;          // output rows (token x head) compared
  // With verify and a backward pass: dQ, dK, dV against the backward reference (reference_bwd.h).
  std::optional<ErrorStats> grad_q_err, grad_k_err, grad_v_err;
  bool verified() const {
    for (const auto* g : {&grad_q_err, &grad_k_err, &grad_v_err})
      if (g->has_value() && !(*g)->passed()) return false;
    return max_abs_err && worst_ratio <= 1;
  }
  // With collect_output: O as fp32 [batch][total tokens][q heads][v head dim], sequences in
  // order, the dtype's rounding applied.
  std::vector<float> output;
  // With collect_output and a backward pass, laid out like output: dQ [..][q heads][D],
  // dK [..][kv heads][D], dV [..][kv heads][Dv].
  std::vector<float> grad_q, grad_k, grad_v;
};


// Every rank of `world` calls this with the same layout and options. Throws Error when the
// ranks disagree on them, when a peer fails or times out, or when the device cannot run the
// shape (the CUDA kernel: bf16 / fp16, head dims multiples of 8 up to 128).
RunResult execute(const Layout& layout, Comm& world, const ExecutorOptions& options);

// Runs several layouts of the same world side by side: iteration i runs every layout once,
// starting with a different one each time, so drift and noise of a shared machine hit all of
// them alike. Used by the tuner to compare candidates and by the benchmarks.
std::vector<RunResult> execute_interleaved(std::span<const Layout> layouts, Comm& world,
                                           const ExecutorOptions& options);

}  // namespace cptune::backends
