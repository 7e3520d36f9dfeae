#include "backends/exec/tensor_gen.h"

#include <cassert>

namespace cptune::backends {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

float input_value(uint64_t seed, Tensor tensor, int64_t seq, int64_t pos, int64_t sample, int64_t head, int64_t dim) {
  uint64_t h = splitmix64(seed ^ (static_cast<uint64_t>(tensor) << 56));
  h = splitmix64(h ^ static_cast<uint64_t>(seq));
  h = splitmix64(h ^ static_cast<uint64_t>(pos));
  h = splitmix64(h ^ static_cast<uint64_t>(sample));
  h = splitmix64(h ^ static_cast<uint64_t>(head));
  h = splitmix64(h ^ static_cast<uint64_t>(dim));
  return static_cast<float>(static_cast<double>(h >> 11) * 0x1.0p-52 - 1.0);
}

float GivenInputs::at(Tensor tensor, int64_t seq, int64_t pos, int64_t sample, int64_t head, int64_t dim) const {
  const bool is_q = tensor == Tensor::q;
  const std::vector<float>& t = is_q ? q : tensor == Tensor::k ? k : v;
  const int64_t heads = is_q ? q_heads : kv_heads;
  const int64_t dims = tensor == Tensor::v ? v_head_dim : head_dim;
  const int64_t token = offsets[static_cast<size_t>(seq)] + pos;
  return t[static_cast<size_t>(((sample * total_tokens + token) * heads + head) * dims + dim)];
}

void fill_input(std::span<float> out, uint64_t seed, Tensor tensor, std::span<const TokenRun> runs, int64_t batch,
                HeadRange heads, int64_t dim, const GivenInputs* given) {
  int64_t tokens = 0;
  for (const TokenRun& run : runs) tokens += run.padded;
  assert(static_cast<int64_t>(out.size()) == batch * tokens * heads.count() * dim);
  size_t i = 0;
  for (int64_t b = 0; b < batch; ++b)
    for (const TokenRun& run : runs)
      for (int64_t t = 0; t < run.padded; ++t)
        for (int64_t h = heads.begin; h < heads.end; ++h)
          for (int64_t d = 0; d < dim; ++d)
            out[i++] = t >= run.count ? 0.0f
                       : given     ? given->at(tensor, run.seq, run.begin + t, b, h, d)
                                   : input_value(seed, tensor, run.seq, run.begin + t, b, h, d);
}

}  // namespace cptune::backends
