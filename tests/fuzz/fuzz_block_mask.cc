// libFuzzer target: block-sparse masks as users, table files and databases spell them. A text
// that starts with a digit, '{' or '#' is a table file's contents (parse_block_table); any other
// is a --mask text (parse_mask; a table file name is skipped, nothing is opened). Either it is
// refused with cptune::Error, or what it reads keeps its promises: the canonical text reads back
// to the same mask and itself, the inline and the picture forms read back to the same table, the
// cells add up to N x N, and the exact pairs of every cell agree with counting pair by pair.
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/block_mask.h"
#include "core/error.h"
#include "core/types.h"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

void check_table(const cptune::BlockTable& t, size_t seed) {
  using cptune::BlockKind;
  check(t.n() >= 1 && t.n() <= cptune::kMaxMaskBlocks);
  check(t.count(BlockKind::empty) + t.count(BlockKind::full) + t.count(BlockKind::causal) == t.n() * t.n());
  check(cptune::parse_mask(cptune::inline_text(t)).blocks->operator==(t));
  check(cptune::parse_block_table(std::to_string(t.n()) + "\n" + cptune::rows_text(t), "picture") == t);
  // Exact pairs against brute force on a short sequence (blocks of 0, 1 or 2 tokens) and on a
  // query and key range inside it.
  const int64_t len = 1 + int64_t(seed % 40);
  const int64_t qa = int64_t(seed / 40 % uint64_t(len)), ka = int64_t(seed / 1600 % uint64_t(len));
  int64_t all = 0, part = 0;
  for (int64_t i = 0; i < len; ++i)
    for (int64_t j = 0; j < len; ++j)
      if (t.sees(len, i, j)) {
        ++all;
        part += i >= qa && j >= ka;
      }
  check(t.pairs(len, 0, len, 0, len) == all);
  check(t.pairs(len, qa, len, ka, len) == part);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  size_t seed = 0;
  for (unsigned char c : text) seed = seed * 131 + c;
  try {
    if (!text.empty() && (std::isdigit(static_cast<unsigned char>(text[0])) || text[0] == '{' || text[0] == '#')) {
      check_table(cptune::parse_block_table(text, "fuzz"), seed);
      return 0;
    }
    if (text.substr(0, 7) == "blocks:" && (size < 8 || !std::isdigit(static_cast<unsigned char>(text[7]))))
      return 0;  // a table file's name: the fuzzer does not open files
    const cptune::Mask mask = cptune::parse_mask(text);
    const std::string canonical = cptune::to_string(mask);
    const cptune::Mask back = cptune::parse_mask(canonical);
    check(back == mask && cptune::to_string(back) == canonical);
    if (mask.kind == cptune::MaskKind::blocks) check_table(*mask.blocks, seed);
  } catch (const cptune::Error&) {
  }
  return 0;
}
