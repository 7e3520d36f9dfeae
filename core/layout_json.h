#pragma once
// Machine-readable form of a Layout (the `cptune layout --json` document).
#include <nlohmann/json.hpp>

#include "core/layout.h"

namespace cptune {

nlohmann::json to_json(const AttentionShape& shape);
nlohmann::json to_json(const Layout& layout);

}  // namespace cptune
