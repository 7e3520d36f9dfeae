// libFuzzer target: hardware descriptions (presets, calibrated files). Any text is either a
// valid Hardware or refused with cptune::Error.
#include <cstddef>
#include <cstdint>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "sim/hardware.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json doc = nlohmann::json::parse(data, data + size, nullptr, false);
  if (doc.is_discarded()) return 0;  // not JSON: load_hardware refuses it before this point
  try {
    const cptune::sim::Hardware hw = cptune::sim::hardware_from_json(doc, "fuzz input");
    cptune::sim::validate(hw, "fuzz input");  // what was accepted must be valid
  } catch (const cptune::Error&) {
  }
  return 0;
}
