#include "core/types.h"

#include <array>
#include <charconv>
#include <utility>

#include "core/error.h"

namespace cptune {
namespace {

template <typename E, size_t N>
using NameTable = std::array<std::pair<E, std::string_view>, N>;

constexpr NameTable<DType, 3> kDTypes{{{DType::bf16, "bf16"}, {DType::fp16, "fp16"}, {DType::fp32, "fp32"}}};
constexpr NameTable<MaskKind, 3> kMasks{{{MaskKind::full, "full"},
                                         {MaskKind::causal, "causal"},
                                         {MaskKind::sliding_window, "sliding"}}};
constexpr NameTable<Strategy, 7> kStrategies{{{Strategy::ulysses, "ulysses"},
                                              {Strategy::uaa, "uaa"},
                                              {Strategy::ring, "ring"},
                                              {Strategy::ring_zigzag, "ring-zigzag"},
                                              {Strategy::allgather_kv, "allgather-kv"},
                                              {Strategy::hybrid, "hybrid"},
                                              {Strategy::hybrid_uaa, "hybrid-uaa"}}};
constexpr NameTable<HeadPolicy, 2> kPolicies{{{HeadPolicy::balanced, "balanced"}, {HeadPolicy::kv_aligned, "kv-aligned"}}};
constexpr NameTable<RankOrder, 2> kOrders{{{RankOrder::ulysses_inner, "ulysses-inner"}, {RankOrder::ring_inner, "ring-inner"}}};

template <typename E, size_t N>
std::string_view name_of(const NameTable<E, N>& table, E v) {
  for (const auto& [e, name] : table)
    if (e == v) return name;
  return "?";
}

template <typename E, size_t N>
E parse_of(const NameTable<E, N>& table, std::string_view s, std::string_view what) {
  for (const auto& [e, name] : table)
    if (name == s) return e;
  std::string choices;
  for (const auto& entry : table) choices += (choices.empty() ? "" : ", ") + std::string(entry.second);
  throw Error("unknown " + std::string(what) + " '" + std::string(s) + "'; choose one of " + choices);
}

}  // namespace

int64_t dtype_bytes(DType dtype) { return dtype == DType::fp32 ? 4 : 2; }

std::string_view to_string(DType v) { return name_of(kDTypes, v); }
std::string_view to_string(MaskKind v) { return name_of(kMasks, v); }
std::string_view to_string(Strategy v) { return name_of(kStrategies, v); }
std::string_view to_string(HeadPolicy v) { return name_of(kPolicies, v); }
std::string_view to_string(RankOrder v) { return name_of(kOrders, v); }
DType parse_dtype(std::string_view s) { return parse_of(kDTypes, s, "dtype"); }
MaskKind parse_mask_kind(std::string_view s) { return parse_of(kMasks, s, "mask"); }
Strategy parse_strategy(std::string_view s) { return parse_of(kStrategies, s, "strategy"); }
HeadPolicy parse_head_policy(std::string_view s) { return parse_of(kPolicies, s, "head policy"); }
RankOrder parse_rank_order(std::string_view s) { return parse_of(kOrders, s, "rank order"); }

std::string to_string(const Mask& m) {
  if (m.kind == MaskKind::sliding_window) return "sliding:" + std::to_string(m.window);
  return std::string(to_string(m.kind));
}

Mask parse_mask(std::string_view s) {
  for (std::string_view prefix : {"sliding:", "sliding-window:"}) {
    if (s.substr(0, prefix.size()) == prefix) {
      std::string_view num = s.substr(prefix.size());
      int64_t w = 0;
      auto [end, ec] = std::from_chars(num.data(), num.data() + num.size(), w);
      if (ec != std::errc() || end != num.data() + num.size() || w <= 0)
        throw Error("bad sliding window '" + std::string(num) + "' in mask '" + std::string(s) +
                    "'; write sliding:W with W a positive number of tokens");
      return Mask{MaskKind::sliding_window, w};
    }
  }
  if (s == "sliding" || s == "sliding-window")
    throw Error("mask '" + std::string(s) + "' needs a window; write sliding:W, e.g. sliding:4096");
  return Mask{parse_mask_kind(s), 0};
}

int64_t AttentionShape::total_tokens() const {
  int64_t n = 0;
  for (int64_t l : seq_lens) n += l;
  return n;
}

bool uses_ulysses(Strategy s) {
  return s == Strategy::ulysses || s == Strategy::uaa || s == Strategy::hybrid || s == Strategy::hybrid_uaa;
}
bool pads_classic(Strategy s) { return s == Strategy::ulysses || s == Strategy::hybrid; }
bool rotates_kv(Strategy s) {
  return s == Strategy::ring || s == Strategy::ring_zigzag || s == Strategy::hybrid || s == Strategy::hybrid_uaa;
}
bool zigzag_chunks(Strategy s, const Mask& m) {
  if (s == Strategy::ring_zigzag) return true;
  return (s == Strategy::hybrid || s == Strategy::hybrid_uaa) && m.kind != MaskKind::full;
}

Mesh resolve_mesh(Strategy s, Mesh mesh) {
  if (mesh.world < 1) throw Error("world size " + std::to_string(mesh.world) + " must be at least 1");
  if (mesh.ranks_per_node < 1)
    throw Error("ranks per node " + std::to_string(mesh.ranks_per_node) + " must be at least 1");
  const std::string name(to_string(s));
  switch (s) {
    case Strategy::ulysses:
    case Strategy::uaa:
      if (mesh.ring > 1)
        throw Error(name + " has no ring degree (got --ring " + std::to_string(mesh.ring) + "); use hybrid" +
                    (s == Strategy::uaa ? "-uaa" : "") + " for U x R meshes");
      mesh.ulysses = mesh.world;
      mesh.ring = 1;
      break;
    case Strategy::ring:
    case Strategy::ring_zigzag:
    case Strategy::allgather_kv:
      if (mesh.ulysses > 1)
        throw Error(name + " has no Ulysses degree (got --ulysses " + std::to_string(mesh.ulysses) +
                    "); use hybrid or hybrid-uaa for U x R meshes");
      mesh.ulysses = 1;
      mesh.ring = mesh.world;
      break;
    case Strategy::hybrid:
    case Strategy::hybrid_uaa:
      if (mesh.ulysses < 1 || mesh.ring < 1)
        throw Error(name + " needs a Ulysses degree and a ring degree of at least 1 (got U=" +
                    std::to_string(mesh.ulysses) + ", R=" + std::to_string(mesh.ring) + ")");
      if (mesh.ulysses * mesh.ring != mesh.world)
        throw Error("Ulysses degree " + std::to_string(mesh.ulysses) + " x ring degree " + std::to_string(mesh.ring) +
                    " != world " + std::to_string(mesh.world) + "; choose U and R with U x R = world");
      break;
  }
  return mesh;
}

}  // namespace cptune
