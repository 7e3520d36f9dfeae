// cuDNN attention on a GPU (backends/kernels/cuda/attention_cudnn.h): the calls of a CudnnPlan,
// run by cuDNN and merged by LSE like ring steps, equal the CPU reference for packed sequences,
// shifted ring blocks, sliding windows, GQA slices and block masks. Skipped with the reason
// where the build has no cuDNN or the machine no GPU; the planning itself is test_cudnn_plan.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "backends/kernels/attention_cpu.h"
#include "backends/kernels/cudnn_plan.h"
#include "backends/kernels/dtype_convert.h"
#include "core/block_mask.h"

#if CPTUNE_HAVE_CUDNN
#include <cuda_runtime_api.h>

#include "backends/kernels/cuda/attention_cudnn.h"
#endif

namespace cptune::backends {
namespace {

#if !CPTUNE_HAVE_CUDNN
TEST(AttendCudnn, MatchesReferenceOnEveryPlanShape) {
  GTEST_SKIP() << "built without cuDNN (needs CUDA, NCCL, cuDNN 9 and the frontend headers of "
                  "scripts/install-deps.sh)";
}
#else

std::string cuda_unavailable() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);  // leaves count unset on failure
  if (status != cudaSuccess) return std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(status);
  if (count == 0) return "cudaGetDeviceCount found 0 devices";
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return "cudaGetDeviceProperties failed";
  if (prop.major < 8) return std::string(prop.name) + " is below compute capability 8.0 (cuDNN's fused SDPA)";
  return "";
}

struct Buffer {
  explicit Buffer(size_t bytes) {
    if (cudaMalloc(&data, std::max<size_t>(bytes, 16)) != cudaSuccess) throw std::runtime_error("cudaMalloc");
  }
  ~Buffer() { cudaFree(data); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* data = nullptr;
};

struct Case {
  std::string name;
  Mask mask;
  std::vector<StoredRun> q_runs, kv_runs;
  std::vector<int64_t> lens;
  int64_t q_tokens = 0, kv_tokens = 0;
  int64_t q_heads = 4, kv_heads = 2, head_dim = 64, v_dim = 64;
  HeadMap heads{0, 0, 2};
};

std::vector<std::byte> random_values(std::mt19937_64& rng, int64_t elems) {
  std::uniform_real_distribution<float> uniform(-1, 1);
  std::vector<float> values(static_cast<size_t>(elems));
  for (float& x : values) x = uniform(rng);
  std::vector<std::byte> out(values.size() * 2);
  from_float(values.data(), DType::bf16, out.data(), elems);
  return out;
}

// Every call of the plan on the GPU, its O and LSE rows merged on the host by log-sum-exp.
AttentionState run_cudnn(const Case& c, const std::vector<std::byte>& q, const std::vector<std::byte>& k,
                         const std::vector<std::byte>& v) {
  const CudnnTensors t{DType::bf16, c.q_heads, c.kv_heads, c.head_dim, c.v_dim,
                       1.0f / std::sqrt(static_cast<float>(c.head_dim))};
  Buffer dq(q.size()), dk(k.size()), dv(v.size());
  Buffer o(static_cast<size_t>(c.q_tokens * c.q_heads * c.v_dim * 2)), lse(static_cast<size_t>(c.q_tokens * c.q_heads * 4));
  cudaMemcpy(dq.data, q.data(), q.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(dk.data, k.data(), k.size(), cudaMemcpyHostToDevice);
  cudaMemcpy(dv.data, v.data(), v.size(), cudaMemcpyHostToDevice);
  CudnnAttention cudnn(nullptr);
  AttentionState state(c.q_tokens, c.q_heads, c.v_dim);
  std::vector<std::byte> o_host(static_cast<size_t>(c.q_tokens * c.q_heads * c.v_dim * 2));
  std::vector<float> o_float(static_cast<size_t>(c.q_tokens * c.q_heads * c.v_dim));
  std::vector<float> lse_host(static_cast<size_t>(c.q_tokens * c.q_heads));
  const CudnnPlan plan = plan_cudnn_attention(c.q_runs, c.kv_runs, c.mask, c.lens, Pass::forward);
  for (const CudnnCall& call : plan.calls)
    for (const CudnnHeadSlice& slice : cudnn_head_slices(c.heads, c.q_heads)) {
      cudnn.forward(call, slice, t, {dq.data, dk.data, dv.data, o.data, static_cast<float*>(lse.data)});
      cudaMemcpy(o_host.data(), o.data, o_host.size(), cudaMemcpyDeviceToHost);
      cudaMemcpy(lse_host.data(), lse.data, lse_host.size() * 4, cudaMemcpyDeviceToHost);
      to_float(o_host.data(), DType::bf16, o_float.data(), static_cast<int64_t>(o_float.size()));
      for (const CudnnEntry& e : call.entries)
        for (int64_t row = e.q_row; row < e.q_row + e.q_tokens; ++row)
          for (int64_t h = slice.q_head; h < slice.q_head + slice.q_heads; ++h) {
            const float b = lse_host[static_cast<size_t>(row * c.q_heads + h)], a = state.lse_at(row, h);
            const float m = std::max(a, b), merged = m + std::log(std::exp(a - m) + std::exp(b - m));
            float* out = state.out_row(row, h);
            const float* piece = o_float.data() + (row * c.q_heads + h) * c.v_dim;
            for (int64_t d = 0; d < c.v_dim; ++d)
              out[d] = (a == -std::numeric_limits<float>::infinity() ? 0.f : out[d] * std::exp(a - merged)) +
                       piece[d] * std::exp(b - merged);
            state.lse_at(row, h) = merged;
          }
    }
  return state;
}

void expect_matches_reference(const Case& c) {
  std::mt19937_64 rng(25);
  const auto q = random_values(rng, c.q_tokens * c.q_heads * c.head_dim);
  const auto k = random_values(rng, c.kv_tokens * c.kv_heads * c.head_dim);
  const auto v = random_values(rng, c.kv_tokens * c.kv_heads * c.v_dim);
  AttentionState want(c.q_tokens, c.q_heads, c.v_dim);
  reference_attention({{q.data(), DType::bf16, c.q_tokens, c.q_heads, c.head_dim}, c.q_runs},
                      {{k.data(), DType::bf16, c.kv_tokens, c.kv_heads, c.head_dim},
                       {v.data(), DType::bf16, c.kv_tokens, c.kv_heads, c.v_dim},
                       c.kv_runs},
                      {c.mask, c.heads, std::nullopt, c.lens}, want);
  const AttentionState got = run_cudnn(c, q, k, v);
  double worst_o = 0, worst_lse = 0;
  for (const StoredRun& r : c.q_runs)
    for (int64_t row = r.offset; row < r.offset + r.count; ++row)
      for (int64_t h = 0; h < c.q_heads; ++h) {
        const float wl = want.lse_at(row, h), gl = got.lse_at(row, h);
        if (std::isinf(wl) || std::isinf(gl)) {
          EXPECT_EQ(wl, gl) << c.name << " row " << row << " head " << h;
          continue;
        }
        worst_lse = std::max(worst_lse, static_cast<double>(std::abs(wl - gl)));
        for (int64_t d = 0; d < c.v_dim; ++d)
          worst_o = std::max(worst_o, static_cast<double>(std::abs(want.out_row(row, h)[d] - got.out_row(row, h)[d])));
      }
  EXPECT_LE(worst_o, 8e-3) << c.name;  // bf16 P V on tensor cores, plus the bf16 O of each call
  EXPECT_LE(worst_lse, 1e-3) << c.name;
}

Case packed(std::string name, std::vector<int64_t> lens, Mask mask) {
  Case c;
  c.name = std::move(name);
  c.mask = std::move(mask);
  c.q_runs = c.kv_runs = packed_runs(lens);
  c.q_tokens = c.kv_tokens = std::accumulate(lens.begin(), lens.end(), int64_t{0});
  c.lens = std::move(lens);
  return c;
}

TEST(AttendCudnn, MatchesReferenceOnEveryPlanShape) {
  if (const std::string why = cuda_unavailable(); !why.empty()) GTEST_SKIP() << "no CUDA device: " << why;
  std::vector<Case> cases = {packed("packed causal", {77, 300, 129}, Mask(MaskKind::causal)),
                             packed("packed full", {77, 300}, Mask(MaskKind::full)),
                             packed("sliding 50", {400}, Mask(MaskKind::sliding_window, 50)),
                             packed("star", {512}, block_mask(block_pattern("star:4"))),
                             packed("strided", {333}, block_mask(block_pattern("strided:8,3")))};
  Case ring = packed("ring step, query block after K,V block", {256}, Mask(MaskKind::causal));
  ring.q_runs = {{0, 64, 128, 0}};
  ring.kv_runs = {{0, 0, 128, 0}};
  ring.q_tokens = ring.kv_tokens = 128;
  cases.push_back(ring);
  Case tail = ring;
  tail.name = "ring step, sliding window 100 past the keys' end";
  tail.mask = Mask(MaskKind::sliding_window, 100);
  tail.q_runs = {{0, 100, 128, 0}};
  cases.push_back(tail);
  Case gqa = packed("GQA starting mid-group", {200}, Mask(MaskKind::causal));
  gqa.q_heads = 5;
  gqa.kv_heads = 3;
  gqa.heads = {1, 0, 2};  // global q heads 1..5 read kv heads 0..2: slices of 1, 2+2
  gqa.head_dim = gqa.v_dim = 128;
  cases.push_back(gqa);
  for (const Case& c : cases) expect_matches_reference(c);
}
#endif

}  // namespace
}  // namespace cptune::backends
