#pragma once
// The one assembly of a lookup, shared by `cptune lookup` and the C ABI: the database (or none),
// the caller's fingerprint, the simulator's hardware for shapes nothing was measured for, and the
// engine's rules as the filter. A GPU question (backend nccl, or an engine) is never priced on the
// CPU preset unasked: it needs a hardware description or a fingerprint naming the GPU.
#include <optional>
#include <string>

#include "db/lookup.h"
#include "sim/constraints.h"
#include "sim/hardware.h"

namespace cptune::db {

// The hardware argument that asks for the preset the fingerprint names ("cpu" -> cpu-gloo, a GPU
// model -> the preset of that GPU).
inline constexpr std::string_view kHardwareAuto = "auto";

struct LookupRequest {
  std::string db_path;       // "": no database, every answer is the simulator's
  Fingerprint fingerprint;   // version fields empty: any versions of the same hardware
  std::string hardware;      // preset, file, kHardwareAuto, or "": no simulator (with a database)
  sim::Constraints constraints;
  Pass pass = Pass::forward;  // the pass asked about: its measurements, its prediction, its engine rules
};

struct OpenedLookup {
  Lookup lookup;
  std::string hardware;  // the description the simulator uses ("" without one)
};

// The hardware the simulator will price on: request.hardware, kHardwareAuto resolved to the
// preset the fingerprint names, or "" for none. Throws Error for a GPU question the fingerprint
// cannot price, naming the flag to give.
std::string lookup_hardware(const LookupRequest& request);

// Throws Error: a database that cannot be read, a hardware description that cannot, a GPU
// question the fingerprint cannot price (names the flag to give), no database and no simulator.
OpenedLookup open_lookup(const LookupRequest& request);

// The preset whose GPU the device model names ("NVIDIA H100 80GB HBM3" -> h100-sxm, "cpu" ->
// cpu-gloo), nullopt when none does.
std::optional<std::string> preset_for_device(const std::string& device_model);

}  // namespace cptune::db
