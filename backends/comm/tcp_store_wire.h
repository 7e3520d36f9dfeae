#pragma once
// The env:// store's wire format (tcp_store.h), shared by its server and its client.
#include <cstdint>
#include <string>

namespace cptune::backends::wire {

constexpr char kAuth = 'A';
constexpr char kSet = 'S';
constexpr char kGet = 'G';
constexpr char kStored = 1;
constexpr char kRefused = 2;  // a set over the size caps
constexpr uint32_t kMaxLength = 64u << 20;  // no length on the wire is ever larger

inline void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
}

inline uint32_t get_u32(const unsigned char* b) {
  return uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
}

}  // namespace cptune::backends::wire
