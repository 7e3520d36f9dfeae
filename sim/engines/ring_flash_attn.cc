// ring-flash-attn (zhuzilin/ring-flash-attention @8996282, the same signatures as PyPI 0.1.8):
// ring_flash_attn_func (ring_flash_attn/ring_flash_attn.py: the basic P2P ring),
// zigzag_ring_flash_attn_func (zigzag_ring_flash_attn.py), llama3_flash_attn_varlen_func with
// llama3_flash_attn_prepare_cu_seqlens (llama3_flash_attn_varlen.py: all-gathered K/V over a flat
// split of the packed stream).
#include "sim/engines/ring_flash_attn.h"

#include <fmt/format.h>

#include "sim/engines/rules.h"

namespace cptune::sim::engines {
namespace {

constexpr std::string_view kReadme = "zhuzilin/ring-flash-attention @8996282, README.md";
constexpr std::string_view kRing = "zhuzilin/ring-flash-attention @8996282, ring_flash_attn/ring_flash_attn.py";
constexpr std::string_view kZigzag = "zhuzilin/ring-flash-attention @8996282, ring_flash_attn/zigzag_ring_flash_attn.py";
constexpr std::string_view kLlama3 =
    "zhuzilin/ring-flash-attention @8996282, ring_flash_attn/llama3_flash_attn_varlen.py";

std::string rule(const LayoutChoice& c, const ShapeView& s) {
  const int64_t P = world(c);
  switch (c.strategy) {
    case Strategy::ring:  // equal blocks; the varlen variants (one cu_seqlens) are not what cptune prints
      return first_of({mask_in(s, {MaskKind::full, MaskKind::causal}, "\"window_size is not supported\"", kReadme),
                       one_sequence(s, "ring_flash_attn_func", kRing), seq_multiple(s, P, kRing)});
    case Strategy::ring_zigzag:  // assert causal == True; the caller reorders inputs into 2P chunks
      return first_of({mask_in(s, {MaskKind::causal}, "zigzag asserts causal == True", kZigzag),
                       one_sequence(s, "zigzag_ring_flash_attn_func", kZigzag), seq_multiple(s, 2 * P, kZigzag)});
    case Strategy::allgather_kv:  // assert total_length % world_size == 0, over the packed total
      return first_of({mask_in(s, {MaskKind::full, MaskKind::causal}, "\"window_size is not supported\"", kReadme),
                       total_multiple(s, P, kLlama3)});
    default:
      return "strategy not run by ring-flash-attn";
  }
}

std::string config(const LayoutChoice& c, const ShapeView& s, ConfigFormat f) {
  const int64_t P = world(c);
  const std::string causal = is_causal(s) ? "True" : "False";
  std::string fn = "ring_flash_attn_func", input = "contiguous";
  if (c.strategy == Strategy::ring_zigzag) fn = "zigzag_ring_flash_attn_func", input = "zigzag";
  if (c.strategy == Strategy::allgather_kv) fn = "llama3_flash_attn_varlen_func", input = "llama3_prepare_cu_seqlens";
  if (f == ConfigFormat::args) return fmt::format("function={} group_size={} causal={} input={}", fn, P, causal, input);
  if (f == ConfigFormat::json)
    return fmt::format("{{\"function\": \"{}\", \"group_size\": {}, \"causal\": {}, \"input\": \"{}\"}}", fn, P,
                       is_causal(s) ? "true" : "false", input);
  if (c.strategy == Strategy::ring_zigzag)
    return fmt::format(
        "x_local = torch.cat([x.chunk({0}, dim=1)[rank], x.chunk({0}, dim=1)[{1} - rank]], dim=1)  "
        "# q, k, v each, zigzag order; then zigzag_ring_flash_attn_func(q_local, k_local, v_local, causal=True, "
        "group=cp_group)  # group of {2} ranks",
        2 * P, 2 * P - 1, P);
  if (c.strategy == Strategy::allgather_kv)
    return fmt::format(
        "cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, local_k_slice = "
        "llama3_flash_attn_prepare_cu_seqlens(cu_seqlens, causal={0}, rank=rank, world_size={1}); "
        "llama3_flash_attn_varlen_func(q_local, k_local, v_local, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, "
        "heads_k_stride=1, local_k_slice=local_k_slice, causal={0}, group=cp_group)  "
        "# x_local = x.chunk({1}, dim=0)[rank] of the packed (total_tokens, H, D) stream",
        causal, P);
  return fmt::format("ring_flash_attn_func(q_local, k_local, v_local, causal={}, group=cp_group)  "
                     "# x_local = x.chunk({}, dim=1)[rank]",
                     causal, P);
}

}  // namespace

const Profile& ring_flash_attn() {
  static const Profile p{"ring-flash-attn",
                         "zhuzilin/ring-flash-attention @8996282 (PyPI 0.1.8): ring_flash_attn/{__init__,ring_flash_attn,"
                         "zigzag_ring_flash_attn,llama3_flash_attn_varlen}.py, README.md",
                         {Strategy::ring, Strategy::ring_zigzag, Strategy::allgather_kv},
                         false,
                         rule,
                         [](const LayoutChoice&, const ShapeView&) { return std::string(); },  // autograd functions
                         config,
                         {}};
  return p;
}

}  // namespace cptune::sim::engines
