#pragma once
// Calibration from nccl-tests (github.com/NVIDIA/nccl-tests) output: alltoall_perf, sendrecv_perf
// and all_gather_perf logs parsed into their size sweeps, each fitted by least squares to
// time = latency + bytes / bandwidth, and the fitted link written into the level of a hardware
// description that the run crossed. Pure functions: text in, numbers out.
//
// nccl-tests' definitions (doc/PERFORMANCE.md; src/alltoall.cc, all_gather.cc, sendrecv.cc
// GetBw): `size` is the per-rank buffer the row prints, in bytes (alltoall: the whole send
// buffer, count x n elements; all_gather: the whole output buffer, count x n elements;
// sendrecv: what one rank sends), and
//   algbw = size / time
//   alltoall:   busbw = algbw * (n - 1) / n   (a rank keeps 1/n of its buffer)
//   all_gather: busbw = algbw * (n - 1) / n   (a rank already holds its own 1/n)
//   sendrecv:   busbw = algbw
// so the bytes one rank moves over its links are size x busbw / algbw, and the bandwidth fitted
// against those bytes is the busbw the large sizes approach.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "sim/hardware.h"

namespace cptune::tuner {

enum class NcclTestKind { alltoall, sendrecv, all_gather };
std::string_view to_string(NcclTestKind k);
// "alltoall", "alltoall_perf", "sendrecv", "all_gather", "allgather", ... Throws Error otherwise.
NcclTestKind parse_nccl_test_kind(std::string_view s);

struct NcclTestsRow {
  int line = 0;           // 1-based line in the file
  int64_t size_bytes = 0;  // the `size` column
  double time_us = 0;     // out-of-place time
  double algbw_gbs = 0, busbw_gbs = 0;
};

struct NcclTestsRun {
  std::string file;
  NcclTestKind kind = NcclTestKind::alltoall;
  int64_t world = 0;  // rank lines
  int64_t hosts = 0;  // distinct host names among them
  std::vector<std::string> devices;  // per rank, as printed ("NVIDIA H100 80GB HBM3")
  std::vector<NcclTestsRow> rows;    // size > 0, in file order

  int64_t ranks_per_host() const { return hosts > 0 ? world / hosts : 0; }
  // size x busbw / algbw: (n-1)/n for alltoall and all_gather, 1 for sendrecv.
  double wire_fraction() const;
  // Messages one operation's latency covers: n - 1 peers (alltoall) or ring steps (all_gather), 1.
  int64_t messages() const;
};

// Parses one nccl-tests log. The kind comes from `kind` when given, else from the
// "# Collective test starting: NAME" line, else from the file name. Throws Error naming the
// file and line of anything it cannot read (no rank lines, a row with too few columns, a row
// whose #wrong is not 0, no rows at all).
NcclTestsRun parse_nccl_tests(std::string_view text, const std::string& file, std::optional<NcclTestKind> kind);

// time_us = intercept_us + wire_bytes / bandwidth, fitted by least squares on relative residuals
// (each row weighs alike, from 8-byte latency rows to multi-GB bandwidth rows).
struct LinkFit {
  double intercept_s = 0;           // one operation's fixed time
  double alpha_s = 0;               // intercept / messages(): per peer or ring step, as the model charges it
  double bandwidth_bytes_per_s = 0;  // per rank and direction: the busbw the sweep approaches
  double median_abs_residual = 0;   // |fit - measured| / measured over the rows
  size_t rows = 0;
};
// Throws Error naming the file when fewer than 2 distinct sizes are left or the slope is not positive.
LinkFit fit_link(const NcclTestsRun& run);

// Where a run's traffic went in `hw`: the smallest level within the node holding the run's ranks
// (one host), or the first level above the node holding them (several hosts).
size_t crossed_level(const sim::Hardware& hw, const NcclTestsRun& run);

// `base` with the crossed levels' alpha and bandwidth replaced (the row-weighted mean over the
// runs crossing one level; doubled where the level bounces through host memory, since the model
// halves it there), intra/inter following the node level and the one above, and source lines
// naming each file, its rows and the parameters they set. Throws Error when no run is given.
sim::Hardware apply_nccl_tests(const sim::Hardware& base, std::span<const NcclTestsRun> runs);

}  // namespace cptune::tuner
