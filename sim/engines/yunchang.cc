// yunchang (feifeibear/long-context-attention @56118e0, the same code as PyPI 0.6.4): USP as a
// library. set_seq_parallel_pg(U, R, rank, world_size, use_ulysses_low) (yunchang/globals.py)
// builds the groups; LongContextAttention(ring_impl_type=...) (hybrid/attn_layer.py) runs the
// Ulysses all-to-all (comm/all_to_all.py) and the ring of RING_IMPL_DICT (hybrid/utils.py).
#include "sim/engines/yunchang.h"

#include <fmt/format.h>

#include "core/strategy.h"
#include "sim/engines/rules.h"

namespace cptune::sim::engines {
namespace {

constexpr std::string_view kLayer = "feifeibear/long-context-attention @56118e0, yunchang/hybrid/attn_layer.py";
constexpr std::string_view kA2a = "feifeibear/long-context-attention @56118e0, yunchang/comm/all_to_all.py";
constexpr std::string_view kZigzag =
    "feifeibear/long-context-attention @56118e0, yunchang/ring/zigzag_ring_flash_attn.py";
constexpr std::string_view kExtract = "feifeibear/long-context-attention @56118e0, yunchang/comm/extract_local.py";

bool zigzag(const LayoutChoice& c, const ShapeView& s) { return zigzag_chunks(c.strategy, s.mask); }

std::string rule(const LayoutChoice& c, const ShapeView& s) {
  std::string mask;
  if (zigzag(c, s))  // zigzag_ring_flash_attn_forward: assert causal == True
    mask = mask_in(s, {MaskKind::causal}, "zigzag asserts causal == True (\"zigzag ring is meaningless for causal=False\")",
                   kZigzag);
  else if (c.ring > 1)  // window_size goes to each ring step's flash-attn call: not a window over the sequence
    mask = mask_in(s, {MaskKind::full, MaskKind::causal}, "the ring passes window_size to each block on its own", kLayer);
  else  // one ring rank: flash-attn sees the whole sequence per head, so its window is exact
    mask = mask_in(s, {MaskKind::full, MaskKind::causal, MaskKind::sliding_window}, "flash-attn takes causal or a window",
                   kLayer);
  return first_of({mask, one_sequence(s, "yunchang's LongContextAttention", kLayer), heads_multiple(s, c.ulysses, kA2a),
                   seq_multiple(s, zigzag(c, s) ? 2 * world(c) : world(c), kExtract)});
}

std::string config(const LayoutChoice& c, const ShapeView& s, ConfigFormat f) {
  const std::string impl = zigzag(c, s) ? "zigzag" : "basic";
  const bool low = c.order == RankOrder::ulysses_inner;
  const std::string causal = is_causal(s) ? "True" : "False";
  if (f == ConfigFormat::args)
    return fmt::format("sp_ulysses_degree={} sp_ring_degree={} use_ulysses_low={} ring_impl_type={} causal={}", c.ulysses,
                       c.ring, low ? "True" : "False", impl, causal);
  if (f == ConfigFormat::json)
    return render({{"sp_ulysses_degree", num(c.ulysses)},
                   {"sp_ring_degree", num(c.ring)},
                   {"use_ulysses_low", low ? "True" : "False"},
                   {"ring_impl_type", quoted(impl)},
                   {"extract_local", quoted(impl)},
                   {"causal", causal}},
                  f, "");
  // The inputs are sharded by EXTRACT_FUNC_DICT[impl]: zigzag_extract_local puts chunks r and
  // 2R-1-r of the sequence on ring rank r; the basic split silently gives wrong results there.
  return fmt::format(
      "set_seq_parallel_pg({}, {}, rank, world_size, use_ulysses_low={}); "
      "x_local = EXTRACT_FUNC_DICT[\"{}\"](x, rank, world_size=world_size, rd={}, ud={}); "
      "LongContextAttention(ring_impl_type=\"{}\")(q_local, k_local, v_local, causal={})",
      c.ulysses, c.ring, low ? "True" : "False", impl, c.ring, c.ulysses, impl, causal);
}

}  // namespace

const Profile& yunchang() {
  static const Profile p{"yunchang",
                         "feifeibear/long-context-attention @56118e0 (PyPI yunchang 0.6.4): yunchang/globals.py, "
                         "hybrid/attn_layer.py, hybrid/utils.py, comm/all_to_all.py, comm/extract_local.py, "
                         "ring/zigzag_ring_flash_attn.py",
                         {Strategy::ulysses, Strategy::ring, Strategy::ring_zigzag, Strategy::hybrid},
                         true,  // use_ulysses_low=False puts ring ranks innermost
                         rule,
                         [](const LayoutChoice&, const ShapeView&) { return std::string(); },  // autograd ring functions
                         config,
                         {}};
  return p;
}

}  // namespace cptune::sim::engines
