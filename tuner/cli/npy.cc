#include "tuner/cli/npy.h"

#include <cstring>
#include <fstream>
#include <numeric>
#include <regex>

#include "core/error.h"

namespace cptune::cli {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

[[noreturn]] void bad(const std::string& path, const std::string& why) {
  throw Error("'" + path + "' is not a usable .npy array: " + why + " (write it with numpy.save of a C-order "
              "float32 or float64 array)");
}

}  // namespace

NpyArray read_npy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot open '" + path + "'");
  char magic[6] = {};
  unsigned char version[2] = {};
  in.read(magic, 6);
  in.read(reinterpret_cast<char*>(version), 2);
  if (!in || std::memcmp(magic, kMagic, 6) != 0) bad(path, "no .npy magic");
  uint32_t header_len = 0;
  unsigned char len[4] = {};
  in.read(reinterpret_cast<char*>(len), version[0] == 1 ? 2 : 4);
  header_len = uint32_t(len[0]) | uint32_t(len[1]) << 8 | uint32_t(len[2]) << 16 | uint32_t(len[3]) << 24;
  std::string header(header_len, '\0');
  in.read(header.data(), header_len);
  if (!in) bad(path, "truncated header");
  std::smatch m;
  if (!std::regex_search(header, m, std::regex("'descr':\\s*'([^']*)'"))) bad(path, "no dtype in the header");
  const std::string descr = m[1];
  if (descr != "<f4" && descr != "<f8") bad(path, "dtype " + descr + " (float32 or float64 needed)");
  if (std::regex_search(header, std::regex("'fortran_order':\\s*True"))) bad(path, "Fortran order");
  if (!std::regex_search(header, m, std::regex("'shape':\\s*\\(([^)]*)\\)"))) bad(path, "no shape in the header");
  NpyArray out;
  const std::string dims = m[1];
  const std::regex number("\\d+");
  for (std::sregex_iterator it(dims.begin(), dims.end(), number), end; it != end; ++it)
    out.shape.push_back(std::stoll(it->str()));
  const int64_t count = std::accumulate(out.shape.begin(), out.shape.end(), int64_t{1}, std::multiplies<>());
  out.data.resize(static_cast<size_t>(count));
  if (descr == "<f4") {
    in.read(reinterpret_cast<char*>(out.data.data()), std::streamsize(count * 4));
  } else {
    std::vector<double> wide(static_cast<size_t>(count));
    in.read(reinterpret_cast<char*>(wide.data()), std::streamsize(count * 8));
    for (size_t i = 0; i < wide.size(); ++i) out.data[i] = float(wide[i]);
  }
  if (!in) bad(path, "fewer values than its shape says");
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
  std::ofstream out(path, std::ios::binary);
  out.write(kMagic, 6);
  const unsigned char head[4] = {1, 0, static_cast<unsigned char>(header.size() & 0xff),
                                 static_cast<unsigned char>(header.size() >> 8)};
  out.write(reinterpret_cast<const char*>(head), 4);
  out.write(header.data(), std::streamsize(header.size()));
  out.write(reinterpret_cast<const char*>(array.data.data()), std::streamsize(array.data.size() * sizeof(float)));
  if (!out) throw Error("writing '" + path + "' failed");
}

}  // namespace cptune::cli
