#pragma once
// A fixed-size open-addressing table from a 64-bit hash to a small index. Built once, then
// only read: finding a key touches one or two cache lines and never allocates, which is what
// the lookup's exact-hit path needs. The caller resolves hash collisions with its own equality.
#include <bit>
#include <cstdint>
#include <optional>
#include <vector>

namespace cptune::db {

class FlatIndex {
 public:
  // capacity: how many values will be inserted; the table keeps at most half its slots full.
  explicit FlatIndex(size_t capacity = 0) : slots_(std::bit_ceil(2 * capacity + 2)), mask_(slots_.size() - 1) {}

  void insert(uint64_t hash, uint32_t value) {
    size_t i = hash & mask_;
    while (slots_[i].value != kEmpty) i = (i + 1) & mask_;
    slots_[i] = Slot{hash, value};
  }

  // The first value whose hash matches and for which is_match(value) holds.
  template <typename IsMatch>
  std::optional<uint32_t> find(uint64_t hash, IsMatch is_match) const {
    for (size_t i = hash & mask_; slots_[i].value != kEmpty; i = (i + 1) & mask_)
      if (slots_[i].hash == hash && is_match(slots_[i].value)) return slots_[i].value;
    return std::nullopt;
  }

 private:
  static constexpr uint32_t kEmpty = UINT32_MAX;
  struct Slot {
    uint64_t hash = 0;
    uint32_t value = kEmpty;
  };
  std::vector<Slot> slots_;
  size_t mask_;
};

}  // namespace cptune::db
