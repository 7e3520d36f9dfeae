#pragma once
// Human-readable numbers for tables, labels and messages.
#include <cstdint>
#include <string>

namespace cptune {

std::string human_bytes(double bytes);    // "1.50 MiB"
std::string human_seconds(double s);      // "12.3 ms"
std::string human_count(double n);        // "3.2G"

}  // namespace cptune
