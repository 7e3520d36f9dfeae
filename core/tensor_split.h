#pragma once
// The tensor_split rule every cut of tokens, heads and mask blocks follows: part i of n of a
// length L starts at i*floor(L/n) + min(i, L mod n), so the first L mod n parts are one longer.
#include <cstdint>

namespace cptune {

inline int64_t split_begin(int64_t len, int64_t parts, int64_t i) {
  return i * (len / parts) + (i < len % parts ? i : len % parts);
}
inline int64_t split_size(int64_t len, int64_t parts, int64_t i) {
  return len / parts + (i < len % parts ? 1 : 0);
}

}  // namespace cptune
