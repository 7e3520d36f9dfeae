// Host side of the CPU attention backward: the fp32 gradient buffers, D = rowsum(dO o O), the
// store to the storage dtype, and the call into the instruction-set variant.
#include <fmt/format.h>

#include <vector>

#include "backends/kernels/attention_cpu.h"
#include "backends/kernels/cpu_isa.h"
#include "backends/kernels/dtype_convert.h"
#include "core/error.h"

namespace cptune::backends {

TensorView output_view(const AttentionState& state) {
  return {state.out().data(), DType::fp32, state.tokens(), state.q_heads(), state.v_dim()};
}

GradBuffer::GradBuffer(int64_t tokens, int64_t heads, int64_t dim) : tokens_(tokens), heads_(heads), dim_(dim) {
  if (tokens < 0 || heads < 1 || dim < 1)
    throw Error(fmt::format("gradient buffer: tokens={} heads={} dim={}; need tokens >= 0, heads and dim >= 1", tokens,
                            heads, dim));
  clear();
}

void GradBuffer::clear() { values_.assign(static_cast<size_t>(tokens_ * heads_ * dim_), 0.0f); }

void compute_delta(const TensorView& o, const TensorView& d_out, std::span<const StoredRun> runs,
                   std::span<float> delta) {
  if (o.tokens != d_out.tokens || o.heads != d_out.heads || o.dim != d_out.dim)
    throw Error(fmt::format("attention backward: O is {} x {} x {} but dO is {} x {} x {}; D needs them alike",
                            o.tokens, o.heads, o.dim, d_out.tokens, d_out.heads, d_out.dim));
  if (static_cast<int64_t>(delta.size()) != o.tokens * o.heads)
    throw Error(fmt::format("attention backward: D holds {} values but O has {} tokens x {} heads", delta.size(),
                            o.tokens, o.heads));
  if (o.tokens > 0 && (o.data == nullptr || d_out.data == nullptr))
    throw Error("attention backward: O or dO has no data");
  const int64_t row_elems = o.heads * o.dim;
  std::vector<float> o_row(static_cast<size_t>(row_elems)), d_row(o_row.size());
  for (const StoredRun& run : runs) {
    if (run.offset < 0 || run.count < 0 || run.offset + run.count > o.tokens)
      throw Error(fmt::format("attention backward: run of rows {}+{} does not fit O's {} tokens", run.offset,
                              run.count, o.tokens));
    for (int64_t row = run.offset; row < run.offset + run.count; ++row) {
      to_float(static_cast<const std::byte*>(o.data) + row * row_elems * dtype_bytes(o.dtype), o.dtype, o_row.data(),
               row_elems);
      to_float(static_cast<const std::byte*>(d_out.data) + row * row_elems * dtype_bytes(d_out.dtype), d_out.dtype,
               d_row.data(), row_elems);
      for (int64_t h = 0; h < o.heads; ++h) {
        float sum = 0;  // fp32, as the kernel's other sums (the tolerance of reference_bwd.cc counts it so)
        for (int64_t d = 0; d < o.dim; ++d) sum += d_row[h * o.dim + d] * o_row[h * o.dim + d];
        delta[static_cast<size_t>(row * o.heads + h)] = sum;
      }
    }
  }
}

// The tiled backward lives in isa/attention_backward_isa.cc, built once per instruction set.
void attend_backward(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                     const BackwardInputs& in, QueryGrads dq, KvGrads dkv) {
  active_cpu_kernels().attend_backward(queries, block, params, in, dq, dkv);
}

void store_gradient(const GradView& grad, DType dtype, void* out, int64_t out_bytes) {
  if (out_bytes < grad.elems() * dtype_bytes(dtype))
    throw Error(fmt::format("attention backward: buffer of {} bytes is smaller than the gradient ({} {} values, {} bytes)",
                            out_bytes, grad.elems(), to_string(dtype), grad.elems() * dtype_bytes(dtype)));
  from_float(grad.data, dtype, out, grad.elems());
}

}  // namespace cptune::backends
