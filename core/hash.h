#pragma once
// The 64-bit mixing every core key (shape and family hashes, block tables) is built from.
#include <cstdint>

namespace cptune {

// The finaliser of MurmurHash3: every input bit reaches every output bit, so the low bits a
// table indexes with are as good as the high ones.
inline uint64_t hash_mix(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

// h extended by one more value (boost::hash_combine's step, then mixed).
inline uint64_t hash_combine(uint64_t h, uint64_t value) {
  return hash_mix(h ^ (value + 0x9e3779b97f4a7c15ULL + (h << 6)));
}

}  // namespace cptune
