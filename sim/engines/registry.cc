// The one list of engine profiles.
#include <string>

#include "core/error.h"
#include "sim/engines/cache_dit.h"
#include "sim/engines/diffusers.h"
#include "sim/engines/megatron.h"
#include "sim/engines/prime_rl.h"
#include "sim/engines/ring_flash_attn.h"
#include "sim/engines/sglang.h"
#include "sim/engines/torch_cp.h"
#include "sim/engines/vllm_omni.h"
#include "sim/engines/xdit.h"
#include "sim/engines/yunchang.h"

namespace cptune::sim::engines {

const std::vector<const Profile*>& profiles() {
  static const std::vector<const Profile*> all = {&sglang(),   &diffusers(), &cache_dit(),       &vllm_omni(),
                                                  &xdit(),     &yunchang(),  &megatron(),        &torch_cp(),
                                                  &prime_rl(), &ring_flash_attn()};
  return all;
}

const Profile& profile(std::string_view name) {
  for (const Profile* p : profiles())
    if (p->name == name) return *p;
  std::string names;
  for (const Profile* p : profiles()) names += (names.empty() ? "" : ", ") + std::string(p->name);
  throw Error("--engine " + std::string(name) + " has no profile; engines: " + names);
}

}  // namespace cptune::sim::engines
