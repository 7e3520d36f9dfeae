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

namespace {

const std::vector<float>& tensor_of(const GivenInputs& in, Tensor tensor) {
  switch (tensor) {
    case Tensor::q: return in.q;
    case Tensor::k: return in.k;
    case Tensor::v: return in.v;
    case Tensor::o: return in.d_out;  // kGradOutput
  }
  return in.q;
}

}  // namespace

bool GivenInputs::has(Tensor tensor) const { return !tensor_of(*this, tensor).empty(); }

float GivenInputs::at(Tensor tensor, int64_t seq, int64_t pos, int64_t sample, int64_t head, int64_t dim) const {
  const std::vector<float>& t = tensor_of(*this, tensor);
  const int64_t heads = tensor == Tensor::q || tensor == kGradOutput ? q_heads : kv_heads;
  const int64_t dims = tensor == Tensor::v || tensor == kGradOutput ? v_head_dim : head_dim;
  const int64_t token = offsets[static_cast<size_t>(seq)] + pos;
  const auto i = static_cast<size_t>(((sample * total_tokens + token) * heads + head) * dims + dim);
  assert(i < t.size());
  return t[i];
}

float input_or_given(uint64_t seed, const GivenInputs* given, Tensor tensor, int64_t seq, int64_t pos, int64_t sample,
                     int64_t head, int64_t dim) {
  return given != nullptr && given->has(tensor) ? given->at(tensor, seq, pos, sample, head, dim)
                                                : input_value(seed, tensor, seq, pos, sample, head, dim);
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
            out[i++] = t >= run.count ? 0.0f : input_or_given(seed, given, tensor, run.seq, run.begin + t, b, h, d);
}

}  // namespace cptune::backends
