// libFuzzer target: the tuner's shapes CSV. Any file is either read into shapes that lay out
// on 2 ranks' limits or refused with cptune::Error naming the file.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

#include "core/error.h"
#include "tuner/cli/shapes_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string path = "/tmp/cptune_fuzz_shapes_" + std::to_string(getpid()) + ".csv";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) return 0;
  std::fwrite(data, 1, size, f);
  std::fclose(f);
  try {
    for (const cptune::AttentionShape& s : cptune::cli::read_shapes_file(path))
      if (s.seq_lens.empty() || s.q_heads < 1) __builtin_trap();  // a shape nobody checked
  } catch (const cptune::Error&) {
  }
  return 0;
}
