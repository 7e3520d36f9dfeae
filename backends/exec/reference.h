#pragma once
// The reference of --verify: attention written from its definition, in double precision, one
// output row at a time. It shares nothing with the kernels (no key window, no runs, no tiles,
// no HeadMap): query (sample b, sequence s, position i, head h) reads KV head h / (Hq / Hkv)
// and every key j of sequence s with Mask::sees(i, j) (core/types.h, the definition), from the
// inputs tensor_gen.h generates, rounded to the storage dtype as the kernels receive them.
//
// Each output element also gets a tolerance: how far an fp32 kernel that stores O in the
// storage dtype may honestly land from the exact value (formula in reference.cc).
#include <cstdint>
#include <span>
#include <vector>

#include "backends/exec/tensor_gen.h"
#include "core/types.h"

namespace cptune::backends {

// One query row to check: global coordinates, independent of any layout.
struct RowId {
  int64_t sample = 0, seq = 0, pos = 0, head = 0;
};

class Reference {
 public:
  // `given`: Q, K, V the user passed (cptune run --inputs) instead of the generated ones; not owned.
  // probabilities_in_storage: the kernel rounds each probability p_j to the storage dtype before
  // P V (tensor-core kernels); the tolerance then allows that rounding too.
  Reference(const AttentionShape& shape, uint64_t seed, const GivenInputs* given = nullptr,
            bool probabilities_in_storage = false);

  // out[d] = the exact O of the row, tol[d] = the allowed |O_stored - out[d]|; both Dv long.
  // Rows that share (sample, KV head) reuse one generated K,V: ask for them together.
  void row(const RowId& id, std::span<double> out, std::span<double> tol);

 private:
  void load_kv(int64_t sample, int64_t kv_head);

  AttentionShape shape_;
  uint64_t seed_;
  const GivenInputs* given_;
  bool probabilities_in_storage_;
  std::vector<int64_t> seq_begin_;     // first token of each sequence in the packed K,V below
  int64_t loaded_sample_ = -1, loaded_kv_ = -1;
  std::vector<double> k_, v_;          // [token][D], [token][Dv] of one (sample, KV head)
  std::vector<double> scores_;
};

// The result of comparing rows with the reference.
struct RowCheck {
  double max_abs_err = 0;    // largest |O - O_ref|
  double max_tolerance = 0;  // largest per-element tolerance checked
  double worst_ratio = 0;    // largest |O - O_ref| / tolerance (+inf for a NaN); <= 1 passes
  int64_t rows = 0;
  void add(double err, double tol);
  void merge(const RowCheck& other);
};

}  // namespace cptune::backends
