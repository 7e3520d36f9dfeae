#pragma once
// What the store keeps, as plain structs in the vocabulary of DESIGN.md: the fingerprint that
// scopes every row, the shape measured, the candidate layout, and one measurement of it.
#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "core/types.h"

namespace cptune::db {

// The hardware and software a measurement was taken on. A lookup never mixes fingerprints.
struct Fingerprint {
  std::string backend;       // "gloo", "nccl"
  std::string device_model;  // "cpu", "NVIDIA H100 80GB HBM3"
  int64_t world = 1;         // P
  int64_t ranks_per_node = 1;  // G
  int64_t nodes = 1;
  std::string library_versions;  // "gloo 0.5.0; nccl 2.28.9"
  std::string cptune_version;

  bool operator==(const Fingerprint&) const = default;
};

// One attention shape as stored: AttentionShape without what a layout adds.
struct ShapeKey {
  int64_t batch = 1;
  std::vector<int64_t> seq_lens;  // tokens; several for a packed (varlen) batch
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t v_head_dim = 0;
  DType dtype = DType::bf16;
  Mask mask;

  bool operator==(const ShapeKey& o) const;
};

// A ShapeKey that borrows its sequence lengths: what a query passes without allocating.
struct ShapeView {
  int64_t batch = 1;
  std::span<const int64_t> seq_lens;
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t v_head_dim = 0;
  DType dtype = DType::bf16;
  Mask mask;
};

// Shapes of one family differ only in their sequence lengths; the lookup's "nearest" answer
// comes from the same family (the world is fixed by the fingerprint).
struct ShapeFamily {
  int64_t batch = 1;
  int64_t q_heads = 0;
  int64_t kv_heads = 0;
  int64_t head_dim = 0;
  int64_t v_head_dim = 0;
  DType dtype = DType::bf16;
  Mask mask;

  bool operator==(const ShapeFamily& o) const;
};

// The layout a measurement ran: strategy, U x R, rank order, head policy.
struct CandidateKey {
  Strategy strategy = Strategy::uaa;
  int64_t ulysses = 1;
  int64_t ring = 1;
  RankOrder order = RankOrder::ulysses_inner;
  HeadPolicy head_policy = HeadPolicy::balanced;

  bool operator==(const CandidateKey&) const = default;
};

// One candidate measured on one shape. Times in seconds, the slowest rank's, over iterations.
struct MeasurementRow {
  CandidateKey candidate;
  double median_s = 0;
  double min_s = 0;
  double max_s = 0;
  int64_t iterations = 0;
  std::map<std::string, double> phase_medians_s;  // "qkv_all_to_all" -> median seconds
  std::optional<double> verify_max_abs_error;     // nullopt: the run was not verified
  std::optional<double> predicted_s;              // the simulator's time, when it ranked the candidate
  std::string profile;                            // hardware profile that ranked it ("h100-node", "fitted")
  std::string measured_at;                        // ISO 8601 UTC; empty: the store writes "now"

  bool operator==(const MeasurementRow&) const = default;
};

// The fastest candidate of one shape under one fingerprint (a row of the view `best`).
struct BestRow {
  int64_t fingerprint_id = 0;
  ShapeKey shape;
  CandidateKey candidate;
  double median_s = 0;
  int64_t measurements = 0;  // measurements of this shape under this fingerprint, the winner's included
};

ShapeKey shape_key(const AttentionShape& shape);
AttentionShape attention_shape(const ShapeKey& key);
ShapeView view_of(const ShapeKey& key);
ShapeKey key_of(const ShapeView& view);
ShapeFamily family_of(const ShapeView& view);
int64_t total_tokens(const ShapeView& view);

// Sequence lengths as the store spells them: "77,4097". parse throws Error naming the text.
std::string seq_lens_text(std::span<const int64_t> seq_lens);
std::vector<int64_t> parse_seq_lens(const std::string& text);

// "bf16 S=77,4097 B=1 Hq=32 Hkv=8 D=128 Dv=128 causal" for messages and tables.
std::string describe(const ShapeKey& key);
std::string describe(const CandidateKey& candidate);  // "hybrid-uaa U=2 R=2 ulysses-inner balanced"
std::string describe(const Fingerprint& fp);          // "gloo cpu P=4 G=4 nodes=1"

}  // namespace cptune::db
