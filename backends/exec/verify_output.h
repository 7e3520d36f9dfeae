#pragma once
// The verify motion: a rank's output rows, downloaded from its device, against the independent
// double-precision reference (reference.h), every row or a seeded sample; and the collection of
// every rank's rows into whole tensors (--out).
#include <cstdint>
#include <span>
#include <vector>

#include "backends/exec/rank_context.h"
#include "backends/exec/reference.h"

namespace cptune::backends {

class Comm;

// verify_rows = 0: every row up to this many visible (query, key, head) triples, else this many
// sampled rows.
inline constexpr int64_t kVerifyEveryRowPairs = int64_t{1} << 25;
inline constexpr int64_t kVerifySampledRows = 4096;

// What the checks read of ExecutorOptions (executor.h).
struct VerifyOptions {
  int64_t rows = 0;  // ExecutorOptions::verify_rows
  uint64_t seed = 1;
  const GivenInputs* inputs = nullptr;
};

// My real O rows (o_out: device memory, [batch][my input tokens][q heads][Dv]) against the
// reference: every row when ExecutorOptions::verify_rows allows, else a seeded sample that
// includes the first and last token of every run I hold.
RowCheck verify_output(const RankContext& ctx, const std::byte* o_out, const VerifyOptions& options);

// My real dQ, dK, dV rows (token side, storage dtype, on the device: dq [batch][my input tokens]
// [q heads][D], dk [..][kv heads][D], dv [..][kv heads][Dv]) against the backward reference
// (reference_bwd.h), rows chosen as verify_output chooses O's. storage_sums: how many times a
// partial sum was rounded to the storage dtype on its way (BackwardReferenceOptions).
struct TokenGradients {
  const std::byte* dq;
  const std::byte* dk;
  const std::byte* dv;
};
struct GradientChecks {
  RowCheck dq, dk, dv;
};
GradientChecks verify_gradients(const RankContext& ctx, const TokenGradients& grads, const VerifyOptions& options,
                                int64_t storage_sums);

// A token-side tensor [batch][my input tokens][heads][dim] of storage dtype on the device, as
// fp32, padding rows dropped: [batch][my real tokens][heads][dim].
std::vector<float> real_rows(const RankContext& ctx, const std::byte* tensor, int64_t heads, int64_t dim);
// Every rank's real_rows placed in the whole tensor [batch][total tokens][heads][dim] by the
// layout's token runs (collective).
std::vector<float> gather_rows(const Layout& layout, std::span<const float> mine, int64_t row_elems, Comm& world);

// Every rank's RowCheck merged (collective, host channel).
RowCheck merge_checks(const RowCheck& mine, Comm& world);

}  // namespace cptune::backends
