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

// Bounds on what a log may hold: nccl-tests prints lines of a few hundred bytes, one per rank.
inline constexpr size_t kMaxNcclTestsLineBytes = 64 << 10;
inline constexpr int64_t kMaxNcclTestsRanks = int64_t(1) << 20;
// The fitted bytes term must be at least this share of the largest size's time.
inline constexpr double kMinBandwidthShare = 0.2;

// Parses one nccl-tests log. The kind comes from `kind` when given, else from the
// "# Collective test starting: NAME" line, else from the file name. Throws Error naming the
// file and line of anything it cannot read (no rank lines, a row with too few columns, a row
// whose #wrong is not 0, a time that is not a positive finite number, a negative or non-finite
// algbw or busbw, a rank listed twice or missing, a line over kMaxNcclTestsLineBytes, no rows).
NcclTestsRun parse_nccl_tests(std::string_view text, const std::string& file, std::optional<NcclTestKind> kind);
// The file at `path` read by core/read_file's rules (a regular file, at most 64 MiB), parsed.
NcclTestsRun read_nccl_tests(const std::string& path, std::optional<NcclTestKind> kind);

// time_us = intercept_us + wire_bytes / bandwidth, fitted by least squares on relative residuals
// (each row weighs alike, from 8-byte latency rows to multi-GB bandwidth rows).
struct LinkFit {
  double intercept_s = 0;           // one operation's fixed time
  double alpha_s = 0;               // intercept / messages(): per peer or ring step, as the model charges it
  double bandwidth_bytes_per_s = 0;  // per rank and direction: the busbw the sweep approaches
  double median_abs_residual = 0;   // |fit - measured| / measured over the rows
  size_t rows = 0;
};
// Throws Error naming the file when fewer than 2 distinct sizes are left, the time does not grow
// with size, or the sweep never becomes bandwidth-bound (kMinBandwidthShare).
LinkFit fit_link(const NcclTestsRun& run);

// Where a run's traffic went in `hw`: the smallest level within the node holding the run's ranks
// (one host), or the first level above the node holding them (several hosts).
size_t crossed_level(const sim::Hardware& hw, const NcclTestsRun& run);

// `base` with each run's collective rate written into its own entry of the level it crossed
// (sim::Level::collective; the row-weighted mean over the runs of one collective and level, as
// measured: no host-bounce or injection correction, the measurement holds them), the level's own
// link kept for the collectives not given, and source lines naming each file, its rows and the
// entry they set. A two-level base becomes its two levels. Throws Error when no run is given.
sim::Hardware apply_nccl_tests(const sim::Hardware& base, std::span<const NcclTestsRun> runs);

}  // namespace cptune::tuner
