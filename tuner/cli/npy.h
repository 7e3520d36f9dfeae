#pragma once
// NumPy .npy files for `cptune run --inputs q.npy,k.npy,v.npy --out o.npy`: C-order
// little-endian float arrays (float32 or float64 read, float32 written), format version 1-3.
#include <cstdint>
#include <string>
#include <vector>

namespace cptune::cli {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // C order
};

// Throws Error naming the file and what is wrong with it (not .npy, Fortran order, dtype).
NpyArray read_npy(const std::string& path);
void write_npy(const std::string& path, const NpyArray& array);

}  // namespace cptune::cli
