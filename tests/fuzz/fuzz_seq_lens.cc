// libFuzzer target: sequence lists and masks as users and databases spell them. Any text is
// either parsed into lengths that pass check_limits or refused with cptune::Error; nothing else
// may happen (no other exception, no overflow: run under -fsanitize=undefined).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "core/error.h"
#include "core/types.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const size_t bar = text.find('|');  // "lengths|mask"
  try {
    cptune::ShapeView view;
    const std::vector<int64_t> lens = cptune::parse_seq_lens(text.substr(0, bar));
    view.seq_lens = lens;
    view.q_heads = view.kv_heads = 8;
    view.head_dim = view.v_head_dim = 64;
    if (bar != std::string_view::npos) view.mask = cptune::parse_mask(text.substr(bar + 1));
    cptune::check_limits(view);
    if (view.total_tokens() > cptune::kMaxTokens) __builtin_trap();  // check_limits let a sum through
  } catch (const cptune::Error&) {
  }
  return 0;
}
