#pragma once
// The rules engines share, each returning "" when the shape passes and otherwise the rule with
// the source the caller names (repository @commit, file), and the pieces the profiles print
// their configurations with.
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/types.h"
#include "sim/engines/engine.h"

namespace cptune::sim::engines {

inline int64_t world(const LayoutChoice& c) { return c.ulysses * c.ring; }
inline bool is_causal(const ShapeView& s) { return s.mask.kind == MaskKind::causal; }
inline bool is_full(const ShapeView& s) { return s.mask.kind == MaskKind::full; }

std::string first_of(std::initializer_list<std::string> reasons);
// "what (source)".
std::string cited(std::string_view what, std::string_view source);

// Every sequence's length is a multiple of d.
std::string seq_multiple(const ShapeView& s, int64_t d, std::string_view source);
// The packed total (all sequences of a sample together) is a multiple of d.
std::string total_multiple(const ShapeView& s, int64_t d, std::string_view source);
// Every sequence has at least d tokens.
std::string seq_at_least(const ShapeView& s, int64_t d, std::string_view source);
// One sequence per sample: the engine splits the whole [B, S] stream and lets every token see
// every other, so packed sequences would attend across each other.
std::string one_sequence(const ShapeView& s, std::string_view engine, std::string_view source);
// Query and key/value heads split evenly over U Ulysses ranks.
std::string heads_multiple(const ShapeView& s, int64_t U, std::string_view source);
// The pad rule of diffusers' and cache-dit's Ulysses: H heads are padded to ceil(H/U)·U and
// `assert H_PAD < NEW_H_LOCAL`: pad = ceil(H/U)·U − H must be below ceil(H/U).
std::string head_pad(int64_t heads, int64_t U, std::string_view which, std::string_view source);
int64_t padded_heads(int64_t heads, int64_t U);  // ceil(H/U)·U
// The shape with query and key/value heads each padded to ceil(H/U)·U: what a padding engine's
// all-to-all moves and its kernel computes.
AttentionShape with_padded_heads(const AttentionShape& s, int64_t U);
// Key/value heads equal query heads.
std::string no_gqa(const ShapeView& s, std::string_view source);
// The mask is one of `runs`; otherwise names it and what the engine runs.
std::string mask_in(const ShapeView& s, std::initializer_list<MaskKind> runs, std::string_view how,
                    std::string_view source);

// A Python keyword value list, rendered as args ("a=1 b=True"), json ({"a": 1, "b": true}) or
// python (Name(a=1, b=True)).
using Fields = std::vector<std::pair<std::string, std::string>>;
std::string render(const Fields& fields, ConfigFormat format, std::string_view python_name);
std::string quoted(std::string_view s);  // "\"s\""
std::string num(int64_t v);

}  // namespace cptune::sim::engines
