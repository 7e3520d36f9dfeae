#include "sim/engines/rules.h"

#include <fmt/format.h>

namespace cptune::sim::engines {

std::string first_of(std::initializer_list<std::string> reasons) {
  for (const std::string& r : reasons)
    if (!r.empty()) return r;
  return "";
}

std::string cited(std::string_view what, std::string_view source) { return fmt::format("{} ({})", what, source); }

std::string seq_multiple(const ShapeView& s, int64_t d, std::string_view source) {
  for (int64_t len : s.seq_lens)
    if (len % d != 0) return cited(fmt::format("sequence length {} is not a multiple of {}", len, d), source);
  return "";
}

std::string total_multiple(const ShapeView& s, int64_t d, std::string_view source) {
  const int64_t total = s.total_tokens();
  if (total % d != 0) return cited(fmt::format("{} packed tokens are not a multiple of {}", total, d), source);
  return "";
}

std::string seq_at_least(const ShapeView& s, int64_t d, std::string_view source) {
  for (int64_t len : s.seq_lens)
    if (len < d) return cited(fmt::format("sequence length {} is below {} (one token per rank)", len, d), source);
  return "";
}

std::string one_sequence(const ShapeView& s, std::string_view engine, std::string_view source) {
  if (s.seq_lens.size() <= 1) return "";
  return cited(fmt::format("{} packed sequences: {} splits the whole stream with no per-sequence boundary "
                           "(cu_seqlens), so they would attend across each other",
                           s.seq_lens.size(), engine),
               source);
}

std::string heads_multiple(const ShapeView& s, int64_t U, std::string_view source) {
  if (U <= 1) return "";
  if (s.q_heads % U != 0) return cited(fmt::format("{} query heads do not split over Ulysses degree {}", s.q_heads, U), source);
  if (s.kv_heads % U != 0)
    return cited(fmt::format("{} key/value heads do not split over Ulysses degree {}", s.kv_heads, U), source);
  return "";
}

int64_t padded_heads(int64_t heads, int64_t U) { return (heads + U - 1) / U * U; }

AttentionShape with_padded_heads(const AttentionShape& s, int64_t U) {
  AttentionShape out = s;
  out.q_heads = padded_heads(s.q_heads, U);
  out.kv_heads = padded_heads(s.kv_heads, U);
  return out;
}

std::string head_pad(int64_t heads, int64_t U, std::string_view which, std::string_view source) {
  if (U <= 1) return "";
  const int64_t local = (heads + U - 1) / U, pad = local * U - heads;
  if (pad < local) return "";
  return cited(fmt::format("{} {} heads on Ulysses degree {} pad {} heads, not fewer than the {} per rank "
                           "(assert H_PAD < NEW_H_LOCAL)",
                           heads, which, U, pad, local),
               source);
}

std::string no_gqa(const ShapeView& s, std::string_view source) {
  if (s.kv_heads == s.q_heads) return "";
  return cited(fmt::format("GQA ({} query, {} key/value heads) is refused; repeat the key/value heads first", s.q_heads,
                           s.kv_heads),
               source);
}

std::string mask_in(const ShapeView& s, std::initializer_list<MaskKind> runs, std::string_view how,
                    std::string_view source) {
  for (MaskKind k : runs)
    if (s.mask.kind == k) return "";
  // No engine here takes a block table: say that rather than the rule about another mask.
  if (s.mask.kind == MaskKind::blocks)
    return cited("block masks are not run: its context-parallel attention takes no block-sparse mask", source);
  return cited(fmt::format("{} masks are not run: {}", to_string(s.mask.kind), how), source);
}

std::string render(const Fields& fields, ConfigFormat format, std::string_view python_name) {
  std::string out;
  for (const auto& [name, value] : fields) {
    if (format == ConfigFormat::json) {
      const std::string v = value == "True" ? "true" : value == "False" ? "false" : value;
      out += (out.empty() ? "" : ", ") + fmt::format("\"{}\": {}", name, v);
    } else {
      out += (out.empty() ? "" : format == ConfigFormat::args ? " " : ", ") + fmt::format("{}={}", name, value);
    }
  }
  if (format == ConfigFormat::json) return "{" + out + "}";
  if (format == ConfigFormat::args) return out;
  return std::string(python_name) + "(" + out + ")";
}

std::string quoted(std::string_view s) { return fmt::format("\"{}\"", s); }
std::string num(int64_t v) { return std::to_string(v); }

}  // namespace cptune::sim::engines
