#pragma once
// A hardware description in round numbers, so simulator tests can work closed forms by hand.
#include "sim/hardware.h"

namespace cptune::testing {

inline sim::Hardware round_hardware() {
  sim::Hardware hw;
  hw.name = "round";
  hw.source = "test";
  hw.nodes = 1;
  hw.ranks_per_node = 8;
  hw.intra = {1e-5, 1e10};
  hw.inter = {2e-5, 5e9};
  hw.attention_flops_per_s = {1e12, 1e12, 1e11};
  hw.peak_flops_per_s = {2e12, 2e12, 2e11};
  hw.memory_bandwidth_bytes_per_s = 1e11;
  hw.device_memory_bytes = int64_t{1} << 34;
  hw.device_sync_s = 3e-5;
  hw.host_gather_alpha_s = 2e-6;
  return hw;
}

}  // namespace cptune::testing
