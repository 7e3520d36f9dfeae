#include "tuner/cli/npy.h"

#include <unistd.h>

#include <cstring>
#include <regex>

#include "core/error.h"
#include "core/read_file.h"

namespace cptune::cli {
namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kPreambleBytes = 8;             // magic and version
constexpr uint32_t kMaxHeaderBytes = 64 << 10;   // numpy itself reads at most 10000 by default
constexpr size_t kMaxDims = 8;

[[noreturn]] void bad(const std::string& path, const std::string& why) {
  throw Error("'" + path + "' is not a usable .npy array: " + why + " (write it with numpy.save of a C-order "
              "float32 or float64 array)");
}

// "2, 3," or "7," or "" -> dimensions; each a non-negative decimal, the product bounded.
std::vector<int64_t> parse_shape(const std::string& path, const std::string& dims) {
  std::vector<int64_t> shape;
  size_t start = 0;
  while (start < dims.size()) {
    size_t comma = dims.find(',', start);
    if (comma == std::string::npos) comma = dims.size();
    const size_t b = dims.find_first_not_of(" ", start);
    const size_t e = dims.find_last_not_of(" ", comma - 1);
    const std::string item = b < comma && e != std::string::npos && e >= b ? dims.substr(b, e - b + 1) : "";
    if (item.empty()) {
      if (comma == dims.size()) break;  // "(7,)": the trailing comma
      bad(path, "shape (" + dims + ") has an empty dimension");
    }
    if (item.find_first_not_of("0123456789") != std::string::npos || item.size() > 12)
      bad(path, "shape (" + dims + ") has dimension '" + item + "'; dimensions are non-negative whole numbers");
    shape.push_back(std::stoll(item));
    if (shape.size() > kMaxDims) bad(path, "shape (" + dims + ") has more than 8 dimensions");
    start = comma + 1;
  }
  return shape;
}

}  // namespace

NpyArray read_npy(const std::string& path) {
  RegularFile file(path, ".npy file");
  char preamble[kPreambleBytes] = {};
  if (file.size() < kPreambleBytes + 2) bad(path, "shorter than a .npy header");
  file.read_exact(preamble, kPreambleBytes);
  if (std::memcmp(preamble, kMagic, 6) != 0) bad(path, "no .npy magic");
  const unsigned major = static_cast<unsigned char>(preamble[6]), minor = static_cast<unsigned char>(preamble[7]);
  if (major < 1 || major > 3 || minor != 0)
    bad(path, "format version " + std::to_string(major) + "." + std::to_string(minor) + " (1.0, 2.0 and 3.0 exist)");
  const size_t len_bytes = major == 1 ? 2 : 4;
  unsigned char len[4] = {};
  if (file.size() < kPreambleBytes + len_bytes) bad(path, "truncated header");
  file.read_exact(len, len_bytes);
  const uint32_t header_len = uint32_t(len[0]) | uint32_t(len[1]) << 8 | uint32_t(len[2]) << 16 | uint32_t(len[3]) << 24;
  const uint64_t data_offset = kPreambleBytes + len_bytes + uint64_t(header_len);
  if (header_len > kMaxHeaderBytes || data_offset > file.size())
    bad(path, "its header says " + std::to_string(header_len) + " bytes but the file has " +
                  std::to_string(file.size()) + " in all");
  std::string header(header_len, '\0');
  file.read_exact(header.data(), header_len);
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr':\\s*'([^']*)'"))) bad(path, "no dtype in the header");
  const std::string descr = m[1];
  if (descr != "<f4" && descr != "<f8") bad(path, "dtype " + descr + " (float32 or float64 needed)");
  if (!std::regex_search(header, m, std::regex("'fortran_order':\\s*(\\w+)"))) bad(path, "no fortran_order in the header");
  if (m[1] == "True") bad(path, "Fortran order");
  if (m[1] != "False") bad(path, "fortran_order " + m[1].str() + " (True or False)");
  if (!std::regex_search(header, m, std::regex("'shape':\\s*\\(([^)]*)\\)"))) bad(path, "no shape in the header");
  NpyArray out;
  out.shape = parse_shape(path, m[1]);
  // The values the shape declares must be exactly what follows the header: checked before any
  // allocation, so a small file cannot ask for gigabytes.
  const uint64_t item_bytes = descr == "<f4" ? 4 : 8;
  uint64_t count = 1;
  for (int64_t d : out.shape)
    if (__builtin_mul_overflow(count, uint64_t(d), &count)) bad(path, "its shape's element count overflows");
  uint64_t data_bytes = 0;
  if (__builtin_mul_overflow(count, item_bytes, &data_bytes) || data_bytes != file.size() - data_offset)
    bad(path, "its shape declares " + std::to_string(count) + " values of " + std::to_string(item_bytes) +
                  " bytes but " + std::to_string(file.size() - data_offset) + " bytes follow the header");
  out.data.resize(static_cast<size_t>(count));
  if (item_bytes == 4) {
    file.read_exact(out.data.data(), size_t(data_bytes));
  } else {
    // Converted in slices: no second full-size buffer of doubles.
    double wide[4096];
    for (size_t done = 0; done < count;) {
      const size_t n = std::min<size_t>(4096, size_t(count) - done);
      file.read_exact(wide, n * 8);
      for (size_t i = 0; i < n; ++i) out.data[done + i] = float(wide[i]);
      done += n;
    }
  }
  return out;
}

void write_npy(const std::string& path, const NpyArray& array) {
  std::string shape;
  for (int64_t d : array.shape) shape += std::to_string(d) + ", ";
  if (array.shape.size() > 1) shape.resize(shape.size() - 1);  // (a, b) but (a,)
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + shape + "), }";
  const size_t unpadded = 10 + header.size() + 1;  // magic, version, u16 length, header, '\n'
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::string head(kMagic, 6);
  head += {char(1), char(0), char(header.size() & 0xff), char(header.size() >> 8)};
  head += header;
  // A FIFO or device is refused without blocking; a write error (full disk, ulimit -f) is an Error.
  const int fd = open_regular_file_for_write(path, "--out");
  try {
    write_all_or_throw(fd, head.data(), head.size(), path, "--out");
    write_all_or_throw(fd, array.data.data(), array.data.size() * sizeof(float), path, "--out");
  } catch (...) {
    close(fd);
    throw;
  }
  if (close(fd) != 0) throw Error("--save-output '" + path + "': writing failed: " + std::strerror(errno));
}

}  // namespace cptune::cli
