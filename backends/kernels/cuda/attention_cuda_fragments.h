#pragma once
// Where each lane of the CUDA attention kernel reads and writes in its shared-memory tiles, and
// which accumulator element is which (row, key) -- the index arithmetic of attention_cuda.cu,
// kept apart so a host test can replay it against the PTX definitions of ldmatrix and
// mma.m16n8k16 without a GPU (tests/test_attention_cuda.cc, "fragment" tests).
//
// A tile holds rows of kDim 16-bit elements as 16-byte chunks; chunk c of row r is stored at
// chunk position c ^ (r & 7), so the 8 rows one ldmatrix matrix reads fall in 8 different
// bank groups.
#include <cstdint>

#ifdef __CUDACC__
#define CPTUNE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define CPTUNE_HOST_DEVICE inline
#endif

namespace cptune::backends::fragments {

inline constexpr int kWarpRows = 16;  // query rows per warp: one m16 tile

// Element offset of chunk `chunk` of row `row` in a tile of kDim-element rows.
CPTUNE_HOST_DEVICE constexpr int swizzled(int row, int chunk, int dim) { return row * dim + ((chunk ^ (row & 7)) << 3); }

// A row and chunk of a tile, for one lane.
struct Spot {
  int row;
  int chunk;
};

// ldmatrix.x4 address of each lane at k-step 0 (lanes 8m..8m+7 address the rows of matrix m).
// Q, the A operand of S = Q K^T: matrices rows 0-7 | 8-15 x dims 0-7, then x dims 8-15.
CPTUNE_HOST_DEVICE constexpr Spot q_spot(int warp, int lane) { return {warp * kWarpRows + lane % 16, lane / 16}; }
// K, the B operand of two n-tiles: keys 0-7 x dims 0-7 | 8-15, then keys 8-15 x the same.
CPTUNE_HOST_DEVICE constexpr Spot k_spot(int lane) { return {lane % 8 + (lane / 16) * 8, (lane / 8) % 2}; }
// V (read with .trans), the B operand of two dv n-tiles: keys 0-7 | 8-15 x dims 0-7, then 8-15.
CPTUNE_HOST_DEVICE constexpr Spot v_spot(int lane) { return {lane % 16, lane / 16}; }

// Byte address of k-step `step` (chunks 2 step, 2 step + 1) from the step-0 address of a lane:
// (2 step + c) ^ (row & 7) = 2 step ^ (c ^ (row & 7)), and rows start on multiples of
// 2 kDim >= 128 bytes, so the step only flips address bits 5 and up, below the row's bits.
CPTUNE_HOST_DEVICE constexpr uint32_t at_step(uint32_t base, int step) {
  return base ^ (static_cast<uint32_t>(step) << 5);
}

// Accumulator element e (0..3) of an m16n8 tile held by `lane`: its row and column.
CPTUNE_HOST_DEVICE constexpr int acc_row(int lane, int e) { return lane / 4 + (e / 2) * 8; }
CPTUNE_HOST_DEVICE constexpr int acc_col(int lane, int e) { return (lane % 4) * 2 + e % 2; }

// The P operand of O += P V for keys 16 kk .. 16 kk + 15: A register r packs the scores
// s[p_tile(kk, r)][p_elem(r)] (low half) and [p_elem(r) + 1] (high half). The m16n8
// accumulators of n-tiles 2 kk and 2 kk + 1 are exactly the m16k16 A layout.
CPTUNE_HOST_DEVICE constexpr int p_tile(int kk, int r) { return 2 * kk + r / 2; }
CPTUNE_HOST_DEVICE constexpr int p_elem(int r) { return (r % 2) * 2; }

// cp.async loading of a tile by `threads` threads: a thread keeps one chunk column and takes
// every (threads / chunks)-th row from its first.
CPTUNE_HOST_DEVICE constexpr Spot load_spot(int thread, int dim) { return {thread / (dim / 8), thread % (dim / 8)}; }
CPTUNE_HOST_DEVICE constexpr int load_row_step(int threads, int dim) { return threads / (dim / 8); }

}  // namespace cptune::backends::fragments
