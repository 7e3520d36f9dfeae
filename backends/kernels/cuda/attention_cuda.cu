// Flash-attention forward on tensor cores (mma.sync m16n8k16, fp32 accumulate), the kernel of
// attention_cuda.h. One thread block computes one query tile (QueryTileWork, <= 128 rows) of
// one head against the tile's key segments, 64 keys at a time, with an online softmax held in
// registers; at the end it merges its O and LSE into the state like the CPU merge_row().
//
// Per block: 8 warps, warp w owns query rows [16w, 16w + 16). Shared memory holds the Q tile
// and one K and one V tile, rows of kDim elements in 16-byte chunks XOR-swizzled by row so
// that ldmatrix reads hit distinct banks. Loads overlap compute like FlashAttention-2: V of
// this step streams in while Q K^T runs, K of the next step while P V runs.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "backends/kernels/cuda/attention_cuda_fragments.h"
#include "backends/kernels/cuda/attention_cuda_kernel.h"

namespace cptune::backends::kernels {
namespace {

using fragments::acc_col;
using fragments::acc_row;
using fragments::at_step;
using fragments::kWarpRows;
using fragments::Spot;

constexpr int kThreads = kCudaThreads;
constexpr int kQueryRows = static_cast<int>(kCudaQueryTile);
constexpr int kKeys = static_cast<int>(kCudaKeyTile);
static_assert(kThreads / 32 * kWarpRows == kQueryRows, "every query row of a tile belongs to one warp");
constexpr float kMinusInf = -__builtin_huge_valf();
constexpr float kLn2 = 0.693147180559945309f;

// ---- PTX wrappers -----------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared, asynchronously; src_bytes = 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// The element type's mma and packing of two fp32 values (low half = first) into one register.
template <typename T>
struct Elem;

template <>
struct Elem<__nv_bfloat16> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static __nv_bfloat16 from_float(float x) { return __float2bfloat16_rn(x); }
};

template <>
struct Elem<__half> {
  __device__ __forceinline__ static uint32_t pack(float lo, float hi) {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
  __device__ __forceinline__ static void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  __device__ __forceinline__ static __half from_float(float x) { return __float2half_rn(x); }
};

// ---- shared-memory tiles ------------------------------------------------------------------------

template <int kDim>
constexpr uint32_t kRowBytes = kDim * 2;  // one row of a tile: kDim 16-bit elements

// Shared-memory byte address of a tile spot (attention_cuda_fragments.h: the swizzle).
template <int kDim, typename T>
__device__ __forceinline__ uint32_t address_of(const T* tile, Spot spot) {
  return smem_address(tile + fragments::swizzled(spot.row, spot.chunk, kDim));
}

// Rows [0, kRows) of a tile from src (row i at src + i * row_elems); rows >= valid_rows and
// columns >= dim become zeros, so padding never contributes and never carries NaN. A thread
// keeps one chunk column and steps down the rows, so one shared and one global address serve
// all its chunks (row & 7, hence the swizzle, is the same at every step).
template <int kRows, int kDim, typename T>
__device__ __forceinline__ void load_tile(T* tile, const T* src, int64_t row_elems, int valid_rows, int dim) {
  constexpr int kRowsPerStep = fragments::load_row_step(kThreads, kDim);
  static_assert(kThreads % (kDim / 8) == 0 && kRows % kRowsPerStep == 0 && kRowsPerStep % 8 == 0,
                "every thread loads whole steps and keeps its swizzle");
  const Spot first = fragments::load_spot(static_cast<int>(threadIdx.x), kDim);
  const bool column_valid = first.chunk * 8 < dim;
  const uint32_t dst = address_of<kDim>(tile, first);
  const T* from = src + first.row * row_elems + first.chunk * 8;
#pragma unroll
  for (int step = 0; step < kRows / kRowsPerStep; ++step) {
    const bool valid = column_valid && first.row + step * kRowsPerStep < valid_rows;
    cp_async_16(dst + step * kRowsPerStep * kRowBytes<kDim>, valid ? from + step * kRowsPerStep * row_elems : src,
                valid ? 16 : 0);
  }
}

// Walks the key tiles of a query tile's segments in order.
struct KeyCursor {
  const KeySegment* segment;
  int segments_left;
  int64_t offset;  // keys of the segment already behind

  __device__ bool done() const { return segments_left == 0; }
  __device__ int64_t row() const { return segment->row + offset; }
  __device__ int64_t pos() const { return segment->pos + offset; }
  __device__ int keys() const { return static_cast<int>(min(static_cast<int64_t>(kKeys), segment->count - offset)); }
  __device__ KeyCursor next() const {
    KeyCursor n = *this;
    n.offset += kKeys;
    if (n.offset >= segment->count) {
      ++n.segment;
      --n.segments_left;
      n.offset = 0;
    }
    return n;
  }
};

// ---- the per-warp math --------------------------------------------------------------------------

// s = Q K^T for the warp's 16 rows and the 64 keys of the tile: n-tile j holds keys 8j..8j+7;
// lane holds rows lane/4 (s[j][0..1]) and lane/4 + 8 (s[j][2..3]), keys 8j + 2(lane%4) + {0,1}.
template <typename T, int kDim>
__device__ __forceinline__ void scores(const T* sq, const T* sk, int warp, int lane, int head_dim,
                                       float (&s)[kKeys / 8][4]) {
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
  const uint32_t q_base = address_of<kDim>(sq, fragments::q_spot(warp, lane));
  const uint32_t k_base = address_of<kDim>(sk, fragments::k_spot(lane));
#pragma unroll
  for (int ks = 0; ks < kDim / 16; ++ks) {
    if (ks * 16 >= head_dim) break;  // zero padding beyond D adds nothing
    uint32_t a[4];
    ldmatrix_x4(a, at_step(q_base, ks));
#pragma unroll
    for (int np = 0; np < kKeys / 16; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, at_step(k_base + np * 16 * kRowBytes<kDim>, ks));
      Elem<T>::mma(s[2 * np], a, b[0], b[1]);
      Elem<T>::mma(s[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// Query row `row` (of the tile) sees the key at column `key` of this key tile? A block mask's
// segment is one cell: every key visible, or (causal) those at or before the row.
__device__ __forceinline__ bool visible(const AttentionArgs& a, bool segment_causal, int64_t key_minus_query, int key,
                                        int valid_keys) {
  if (key >= valid_keys) return false;
  if (a.mask_kind == static_cast<int32_t>(MaskKind::full)) return true;
  if (a.mask_kind == static_cast<int32_t>(MaskKind::blocks)) return !segment_causal || key_minus_query <= 0;
  if (key_minus_query > 0) return false;
  return a.mask_kind == static_cast<int32_t>(MaskKind::causal) || key_minus_query > -a.window;
}

// Whether some (row, key) of this step is hidden by the mask or lies past the segment: only
// then does the kernel test every element. Uniform across the block.
__device__ __forceinline__ bool needs_mask(const AttentionArgs& a, const QueryTileWork& tile, const KeyCursor& keys) {
  if (keys.keys() < kKeys) return true;
  if (a.mask_kind == static_cast<int32_t>(MaskKind::full)) return false;
  const int64_t first_key = keys.pos(), last_key = first_key + kKeys - 1;
  const int64_t first_query = tile.pos, last_query = tile.pos + tile.rows - 1;
  if (a.mask_kind == static_cast<int32_t>(MaskKind::blocks)) return keys.segment->causal && last_key > first_query;
  if (last_key > first_query) return true;  // the causal edge crosses the step
  return a.mask_kind == static_cast<int32_t>(MaskKind::sliding_window) && first_key <= last_query - a.window;
}

// Scales the scores to base 2, masks them, and folds them into the running max and sum of the
// lane's two rows; s becomes the unnormalised probabilities P and o is rescaled to the new max.
template <int kDim>
__device__ __forceinline__ void online_softmax(const AttentionArgs& a, const QueryTileWork& tile,
                                               const KeyCursor& keys, int warp, int lane, float (&s)[kKeys / 8][4],
                                               float (&o)[kDim / 8][4], float (&row_max)[2], float (&row_sum)[2]) {
  const bool masked = needs_mask(a, tile, keys);
  const bool segment_causal = keys.segment->causal != 0;
  const int64_t key_base = keys.pos() - tile.pos;  // key position minus query position at (0, 0)
  const int valid_keys = keys.keys();
#pragma unroll
  for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      float x = s[j][e] * a.scale_log2;
      if (masked) {
        const int row = warp * kWarpRows + acc_row(lane, e), key = j * 8 + acc_col(lane, e);
        if (!visible(a, segment_causal, key_base + key - row, key, valid_keys)) x = kMinusInf;
      }
      s[j][e] = x;
    }
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    float step_max = kMinusInf;
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j) step_max = fmaxf(step_max, fmaxf(s[j][2 * half], s[j][2 * half + 1]));
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 1));
    step_max = fmaxf(step_max, __shfl_xor_sync(0xffffffffu, step_max, 2));
    const float new_max = fmaxf(row_max[half], step_max);
    // A row that has seen no key yet keeps max -inf; subtracting 0 instead turns its -inf
    // scores into zero probabilities rather than NaN.
    const float base = new_max == kMinusInf ? 0.0f : new_max;
    const float rescale = exp2f(row_max[half] - base);
    float step_sum = 0.0f;
#pragma unroll
    for (int j = 0; j < kKeys / 8; ++j)
#pragma unroll
      for (int e = 2 * half; e < 2 * half + 2; ++e) {
        s[j][e] = exp2f(s[j][e] - base);
        step_sum += s[j][e];
      }
    row_sum[half] = row_sum[half] * rescale + step_sum;  // per lane; the quad adds up at the end
    row_max[half] = new_max;
#pragma unroll
    for (int d = 0; d < kDim / 8; ++d) {
      o[d][2 * half] *= rescale;
      o[d][2 * half + 1] *= rescale;
    }
  }
}

// o += P V: P leaves the registers of the scores as A fragments (the m16n8 accumulator layout of
// two neighbouring n-tiles is the m16k16 A layout), V comes transposed out of shared memory:
// matrices keys 0-7 / 8-15 x dims 0-7, then x dims 8-15 (B fragments of two dv n-tiles).
template <typename T, int kDim>
__device__ __forceinline__ void accumulate_pv(const T* sv, int lane, int v_dim, const float (&s)[kKeys / 8][4],
                                              float (&o)[kDim / 8][4]) {
  const uint32_t v_base = address_of<kDim>(sv, fragments::v_spot(lane));
#pragma unroll
  for (int kk = 0; kk < kKeys / 16; ++kk) {
    uint32_t p[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int j = fragments::p_tile(kk, r), e = fragments::p_elem(r);
      p[r] = Elem<T>::pack(s[j][e], s[j][e + 1]);
    }
#pragma unroll
    for (int dp = 0; dp < kDim / 16; ++dp) {
      if (dp * 16 >= v_dim) break;
      uint32_t b[4];
      ldmatrix_x4_trans(b, at_step(v_base + kk * 16 * kRowBytes<kDim>, dp));
      Elem<T>::mma(o[2 * dp], p, b[0], b[1]);
      Elem<T>::mma(o[2 * dp + 1], p, b[2], b[3]);
    }
  }
}

// Merges the lane's rows into the state by log-sum-exp (the CPU merge_row, in fp32).
template <int kDim>
__device__ __forceinline__ void merge_into_state(const AttentionArgs& a, const QueryTileWork& tile, int warp,
                                                 int lane, const float (&o)[kDim / 8][4], float (&row_max)[2],
                                                 float (&row_sum)[2]) {
  const int64_t head = blockIdx.y;
  float old_lse[2];
  int64_t state_row[2];
  bool merges[2];
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    row_sum[half] += __shfl_xor_sync(0xffffffffu, row_sum[half], 1);
    row_sum[half] += __shfl_xor_sync(0xffffffffu, row_sum[half], 2);
    const int row = warp * kWarpRows + acc_row(lane, 2 * half);
    merges[half] = row < tile.rows && row_sum[half] > 0.0f;
    state_row[half] = (tile.row + row) * a.q_heads + head;
    old_lse[half] = merges[half] ? a.lse[state_row[half]] : kMinusInf;
  }
  __syncwarp();  // all four lanes of a row read its old LSE before the first of them rewrites it
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    if (!merges[half]) continue;
    const float lse = (row_max[half] + log2f(row_sum[half])) * kLn2;
    float merged = lse, weight_old = 0.0f, weight_new = 1.0f / row_sum[half];
    if (old_lse[half] != kMinusInf) {
      merged = fmaxf(old_lse[half], lse) + log1pf(expf(-fabsf(old_lse[half] - lse)));
      weight_old = expf(old_lse[half] - merged);
      weight_new *= expf(lse - merged);
    }
    float* out = a.out + state_row[half] * a.v_dim + acc_col(lane, 0);
#pragma unroll
    for (int d = 0; d < kDim / 8; ++d) {
      if (d * 8 >= a.v_dim) break;
      float2 value = make_float2(o[d][2 * half] * weight_new, o[d][2 * half + 1] * weight_new);
      if (weight_old != 0.0f) {
        const float2 before = *reinterpret_cast<const float2*>(out + d * 8);
        value.x += before.x * weight_old;
        value.y += before.y * weight_old;
      }
      *reinterpret_cast<float2*>(out + d * 8) = value;
    }
    if (lane % 4 == 0) a.lse[state_row[half]] = merged;
  }
}

// ---- the kernels --------------------------------------------------------------------------------

template <typename T, int kDim>
__global__ void __launch_bounds__(kThreads, 2) attention_kernel(const AttentionArgs a) {
  extern __shared__ __align__(1024) unsigned char smem[];  // fragments::at_step() needs aligned rows
  T* sq = reinterpret_cast<T*>(smem);
  T* sk = sq + kQueryRows * kDim;
  T* sv = sk + kKeys * kDim;
  const QueryTileWork tile = a.tiles[blockIdx.x];
  const int64_t head = blockIdx.y;
  const int64_t kv_head = (a.q_head_begin + head) / a.group_size - a.kv_head_begin;
  const T* q = static_cast<const T*>(a.q) + tile.row * a.q_row_elems + head * a.head_dim;
  const T* k = static_cast<const T*>(a.k) + kv_head * a.head_dim;
  const T* v = static_cast<const T*>(a.v) + kv_head * a.v_dim;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

  KeyCursor keys{a.segments + tile.first_segment, tile.segments, 0};
  load_tile<kQueryRows, kDim>(sq, q, a.q_row_elems, tile.rows, a.head_dim);
  load_tile<kKeys, kDim>(sk, k + keys.row() * a.k_row_elems, a.k_row_elems, keys.keys(), a.head_dim);
  cp_async_commit();

  float o[kDim / 8][4];
#pragma unroll
  for (int d = 0; d < kDim / 8; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;
  float row_max[2] = {kMinusInf, kMinusInf}, row_sum[2] = {0.0f, 0.0f};
  for (;;) {
    cp_async_wait_all();
    __syncthreads();  // K landed, and every warp is done reading the previous V
    load_tile<kKeys, kDim>(sv, v + keys.row() * a.v_row_elems, a.v_row_elems, keys.keys(), a.v_dim);
    cp_async_commit();
    float s[kKeys / 8][4];
    scores<T, kDim>(sq, sk, warp, lane, a.head_dim, s);
    online_softmax<kDim>(a, tile, keys, warp, lane, s, o, row_max, row_sum);
    cp_async_wait_all();
    __syncthreads();  // V landed, and every warp is done reading K
    const KeyCursor next = keys.next();
    if (!next.done()) {
      load_tile<kKeys, kDim>(sk, k + next.row() * a.k_row_elems, a.k_row_elems, next.keys(), a.head_dim);
      cp_async_commit();
    }
    accumulate_pv<T, kDim>(sv, lane, a.v_dim, s, o);
    if (next.done()) break;
    keys = next;
  }
  merge_into_state<kDim>(a, tile, warp, lane, o, row_max, row_sum);
}

template <typename T>
__global__ void store_output_kernel(const float* in, int64_t elems, T* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < elems; i += int64_t{gridDim.x} * blockDim.x)
    out[i] = Elem<T>::from_float(in[i]);
}

__global__ void fill_kernel(float* data, int64_t elems, float value) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < elems; i += int64_t{gridDim.x} * blockDim.x)
    data[i] = value;
}

// Enough blocks of 256 threads to cover `elems` a few elements per thread, at most 64k blocks.
unsigned elementwise_blocks(int64_t elems) {
  const int64_t blocks = (elems + 4 * 256 - 1) / (4 * 256);
  return static_cast<unsigned>(blocks < 1 ? 1 : (blocks > 65536 ? 65536 : blocks));
}

template <typename T, int kDim>
cudaError_t launch_typed(const AttentionArgs& args, const AttentionLaunch& launch, cudaStream_t stream) {
  auto* kernel = attention_kernel<T, kDim>;
  const cudaError_t status =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(launch.smem_bytes));
  if (status != cudaSuccess) return status;
  const dim3 grid(static_cast<unsigned>(launch.tiles), static_cast<unsigned>(launch.heads));
  kernel<<<grid, launch.threads, static_cast<size_t>(launch.smem_bytes), stream>>>(args);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_bucket(const AttentionArgs& args, const AttentionLaunch& launch, cudaStream_t stream) {
  return launch.dim_bucket == 64 ? launch_typed<T, 64>(args, launch, stream)
                                 : launch_typed<T, 128>(args, launch, stream);
}

}  // namespace

cudaError_t launch_attention(const AttentionArgs& args, const AttentionLaunch& launch, DType dtype,
                             cudaStream_t stream) {
  if (launch.tiles == 0) return cudaSuccess;
  return dtype == DType::bf16 ? launch_bucket<__nv_bfloat16>(args, launch, stream)
                              : launch_bucket<__half>(args, launch, stream);
}

cudaError_t launch_store_output(const float* state_out, int64_t elems, DType dtype, void* out, cudaStream_t stream) {
  if (elems == 0) return cudaSuccess;
  const unsigned blocks = elementwise_blocks(elems);
  if (dtype == DType::bf16)
    store_output_kernel<<<blocks, 256, 0, stream>>>(state_out, elems, static_cast<__nv_bfloat16*>(out));
  else
    store_output_kernel<<<blocks, 256, 0, stream>>>(state_out, elems, static_cast<__half*>(out));
  return cudaGetLastError();
}

cudaError_t launch_fill(float* data, int64_t elems, float value, cudaStream_t stream) {
  if (elems == 0) return cudaSuccess;
  fill_kernel<<<elementwise_blocks(elems), 256, 0, stream>>>(data, elems, value);
  return cudaGetLastError();
}

}  // namespace cptune::backends::kernels
