#include "backends/kernels/attention_backward.h"

#include <fmt/format.h>

#include "core/error.h"

namespace cptune::backends {
namespace {

void check_grad(const GradView& g, const TensorView& like, const char* name, const char* tensor,
                std::string_view kernel) {
  if (g.tokens != like.tokens || g.heads != like.heads || g.dim != like.dim)
    throw Error(fmt::format("{} backward: {} is {} tokens x {} heads x {} dims but {} is {} x {} x {}; they must match",
                            kernel, name, g.tokens, g.heads, g.dim, tensor, like.tokens, like.heads, like.dim));
  if (g.elems() > 0 && g.data == nullptr) throw Error(fmt::format("{} backward: {} has no data", kernel, name));
}

void check_per_row(std::span<const float> values, const TensorView& q, const char* name, std::string_view kernel) {
  if (static_cast<int64_t>(values.size()) != q.tokens * q.heads)
    throw Error(fmt::format("{} backward: {} holds {} values but Q has {} tokens x {} heads; need one per (row, head)",
                            kernel, name, values.size(), q.tokens, q.heads));
}

}  // namespace

void check_backward_arguments(const Queries& queries, const KvBlock& block, const AttentionParams& params,
                              const BackwardInputs& in, const QueryGrads& dq, const KvGrads& dkv,
                              std::string_view kernel) {
  const TensorView &q = queries.q, &d_out = in.d_out;
  check_attention_arguments(queries, block, params, {q.tokens, q.heads, block.v.dim}, kernel);
  if (d_out.tokens != q.tokens || d_out.heads != q.heads || d_out.dim != block.v.dim)
    throw Error(fmt::format("{} backward: dO is {} tokens x {} heads x {} dims but Q, V need {} x {} x {}", kernel,
                            d_out.tokens, d_out.heads, d_out.dim, q.tokens, q.heads, block.v.dim));
  if (d_out.tokens > 0 && d_out.data == nullptr) throw Error(fmt::format("{} backward: dO has no data", kernel));
  check_per_row(in.lse, q, "LSE", kernel);
  check_per_row(in.delta, q, "D (rowsum of dO o O)", kernel);
  check_grad(dq.dq, q, "dQ", "Q", kernel);
  check_grad(dkv.dk, block.k, "dK", "K", kernel);
  check_grad(dkv.dv, block.v, "dV", "V", kernel);
}

}  // namespace cptune::backends
