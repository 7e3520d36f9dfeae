#include "core/format.h"

#include <cmath>

#include <fmt/format.h>

namespace cptune {

std::string human_bytes(double bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  while (std::fabs(bytes) >= 1024 && i < 5) {
    bytes /= 1024;
    ++i;
  }
  return i == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.2f} {}", bytes, units[i]);
}

std::string human_seconds(double s) {
  if (s >= 1) return fmt::format("{:.3f} s", s);
  if (s >= 1e-3) return fmt::format("{:.3f} ms", s * 1e3);
  if (s >= 1e-6) return fmt::format("{:.3f} us", s * 1e6);
  return fmt::format("{:.1f} ns", s * 1e9);
}

std::string human_count(double n) {
  static const char* units[] = {"", "k", "M", "G", "T", "P", "E"};
  int i = 0;
  while (std::fabs(n) >= 1000 && i < 6) {
    n /= 1000;
    ++i;
  }
  return i == 0 ? fmt::format("{:.0f}", n) : fmt::format("{:.2f}{}", n, units[i]);
}

}  // namespace cptune
