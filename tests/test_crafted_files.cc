// Crafted files (issue 26): every file cptune reads goes through core/read_file's rules (regular
// files only, refused without blocking; sizes written inside a file checked against the file's
// size before anything is allocated), and a non-finite input is never verified.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>

#include <fmt/format.h>

#include "backends/exec/reference.h"
#include "core/error.h"
#include "core/read_file.h"
#include "tests/command.h"
#include "tests/temp_dir.h"
#include "tuner/cli/npy.h"

namespace cptune {
namespace {

using namespace std::chrono_literals;
using testing::run_command;
using testing::TempDir;
using Clock = std::chrono::steady_clock;

std::string cptune(const std::string& args) { return std::string(CPTUNE_BINARY) + " " + args; }

// A .npy file: magic, version, little-endian header length (u16 for 1.x, u32 after), header
// padded to 64 bytes, then `data_bytes` zero bytes.
void write_npy_file(const std::string& path, const std::string& dict, size_t data_bytes, unsigned major = 1,
                    unsigned minor = 0) {
  std::string header = dict;
  const size_t len_bytes = major >= 2 ? 4 : 2;
  header.append((64 - (8 + len_bytes + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string file = std::string("\x93NUMPY", 6) + char(major) + char(minor);
  for (size_t i = 0; i < len_bytes; ++i) file += char((header.size() >> (8 * i)) & 0xff);
  file += header;
  file.append(data_bytes, '\0');
  std::ofstream(path, std::ios::binary) << file;
}

std::string npy_error(const std::string& path) {
  try {
    cli::read_npy(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "accepted";
}

long max_rss_kb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

TEST(CraftedNpy, ASmallFileDeclaringGigabytesIsRefusedBeforeAnythingIsAllocated) {
  TempDir dir;
  // 4 KiB of data declaring 2^30 float32 values (4 GiB): the old reader allocated all of it.
  write_npy_file(dir.file("huge.npy"), "{'descr': '<f4', 'fortran_order': False, 'shape': (1073741824,), }", 4000);
  const long before = max_rss_kb();
  const auto start = Clock::now();
  const std::string message = npy_error(dir.file("huge.npy"));
  EXPECT_LT(Clock::now() - start, 2s);
  EXPECT_LT(max_rss_kb() - before, 64 * 1024) << "KB of peak memory grew";
  EXPECT_NE(message.find("declares 1073741824 values"), std::string::npos) << message;
  EXPECT_NE(message.find("4000 bytes follow the header"), std::string::npos) << message;
}

TEST(CraftedNpy, EveryMalformedHeaderIsAnErrorNamingWhatIsWrong) {
  TempDir dir;
  const std::string ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  struct Case {
    std::string name, dict;
    size_t data;
    unsigned major, minor;
    std::string says;
  };
  const Case cases[] = {
      {"negative", "{'descr': '<f4', 'fortran_order': False, 'shape': (-4, 2), }", 32, 1, 0, "dimension '-4'"},
      {"version0", ok, 24, 0, 0, "format version 0.0"},
      {"version9", ok, 24, 9, 0, "format version 9.0"},
      {"minor", ok, 24, 1, 7, "format version 1.7"},
      {"fortran7", "{'descr': '<f4', 'fortran_order': 7, 'shape': (2, 3), }", 24, 1, 0, "fortran_order 7"},
      {"fortranTrue", "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24, 1, 0, "Fortran order"},
      {"overflow", "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4), }", 64, 1, 0, "overflows"},
      {"hex", "{'descr': '<f4', 'fortran_order': False, 'shape': (0x10,), }", 64, 1, 0, "dimension '0x10'"},
      {"short", ok, 20, 1, 0, "declares 6 values of 4 bytes but 20 bytes"},
      {"long", ok, 28, 1, 0, "28 bytes follow"},
      {"dtype", "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24, 1, 0, "dtype >f4"},
      {"dims", "{'descr': '<f4', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1), }", 4, 1, 0, "more than 8"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.file(c.name + ".npy");
    write_npy_file(path, c.dict, c.data, c.major, c.minor);
    const std::string message = npy_error(path);
    EXPECT_NE(message.find(c.says), std::string::npos) << c.name << ": " << message;
  }
  // A header length beyond the file, and beyond any real header.
  std::ofstream(dir.file("header.npy"), std::ios::binary) << std::string("\x93NUMPY\x02\x00\xff\xff\xff\x7f", 12);
  EXPECT_NE(npy_error(dir.file("header.npy")).find("its header says"), std::string::npos) << npy_error(dir.file("header.npy"));
  // What numpy writes still reads: version 1.0 and 2.0, float64 converted.
  write_npy_file(dir.file("v2.npy"), "{'descr': '<f8', 'fortran_order': False, 'shape': (3,), }", 24, 2, 0);
  const cli::NpyArray v2 = cli::read_npy(dir.file("v2.npy"));
  EXPECT_EQ(v2.shape, std::vector<int64_t>{3});
  EXPECT_EQ(v2.data.size(), 3u);
}

TEST(CraftedNpy, AFifoOrDeviceIsRefusedAtOnceWhetherReadOrWritten) {
  TempDir dir;
  ASSERT_EQ(mkfifo(dir.file("fifo").c_str(), 0600), 0);
  for (const std::string& path : {dir.file("fifo"), std::string("/dev/zero"), dir.path()}) {
    const auto start = Clock::now();
    const std::string message = npy_error(path);
    EXPECT_LT(Clock::now() - start, 2s);
    EXPECT_NE(message.find("give a regular file"), std::string::npos) << path << ": " << message;
  }
  // The CLI: --inputs on a FIFO and --save-output to a FIFO both exit 2 at once (both hung).
  cli::write_npy(dir.file("q.npy"), {{8, 2, 4}, std::vector<float>(64, 0.5f)});
  const std::string shape = "run --world 1 --seq 8 --heads 2 --head-dim 4";
  auto r = run_command("timeout 20 " + cptune(fmt::format("{} --inputs {},{},{}", shape, dir.file("fifo"), dir.file("q.npy"),
                                                          dir.file("q.npy"))));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("a FIFO"), std::string::npos) << r.output;
  r = run_command("timeout 20 " + cptune(fmt::format("{} --inputs {q},{q},{q} --save-output {f}", shape, fmt::arg("q", dir.file("q.npy")),
                                                     fmt::arg("f", dir.file("fifo")))));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_NE(r.output.find("--save-output"), std::string::npos) << r.output;
  const std::string message = [&] {
    try {
      cli::write_npy(dir.file("fifo"), {{1}, {1.0f}});
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("written");
  }();
  EXPECT_NE(message.find("a FIFO"), std::string::npos) << message;
}

TEST(CraftedFiles, ReadRegularFileRefusesALargeFileFromItsSizeAndReadsExactly) {
  TempDir dir;
  std::ofstream(dir.file("big.txt")) << std::string(5000, 'x');
  EXPECT_THROW(read_regular_file(dir.file("big.txt"), "test file", 4096), Error);
  EXPECT_EQ(read_regular_file(dir.file("big.txt"), "test file").size(), 5000u);
  RegularFile file(dir.file("big.txt"), "test file");
  EXPECT_EQ(file.size(), 5000u);
  std::string head(10, '\0');
  file.read_exact(head.data(), head.size());
  EXPECT_EQ(head, std::string(10, 'x'));
  std::string rest(4991, '\0');
  EXPECT_THROW(file.read_exact(rest.data(), rest.size()), Error);  // one byte past the end
}

// A NaN compares false with everything: a NaN error or tolerance must still fail the check.
TEST(NonFiniteVerify, ANanOrInfinityInOutputOrReferenceNeverVerifies) {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  for (auto [err, tol] : {std::pair{nan, 1e-3}, std::pair{nan, nan}, std::pair{0.0, nan}, std::pair{inf, 1e-3}, std::pair{1e-4, inf}}) {
    backends::RowCheck check;
    check.add(1e-5, 1e-3);
    check.add(err, tol);
    EXPECT_GT(check.worst_ratio, 1.0) << "err " << err << " tol " << tol;
  }
  backends::RowCheck fine;
  fine.add(1e-5, 1e-3);
  EXPECT_LE(fine.worst_ratio, 1.0);
}

TEST(NonFiniteVerify, RunWithANanInQFailsVerification) {
  TempDir dir;
  std::vector<float> q(64, 0.25f), kv(64, 0.5f);
  q[3 * 8 + 1 * 4 + 2] = std::numeric_limits<float>::quiet_NaN();
  cli::write_npy(dir.file("q.npy"), {{8, 2, 4}, q});
  cli::write_npy(dir.file("k.npy"), {{8, 2, 4}, kv});
  cli::write_npy(dir.file("v.npy"), {{8, 2, 4}, kv});
  const auto r = run_command("timeout 120 " + cptune(fmt::format("run --world 2 --strategy ring --seq 8 --heads 2 --head-dim 4 --verify "
                                                                 "--inputs {},{},{} --json",
                                                                 dir.file("q.npy"), dir.file("k.npy"), dir.file("v.npy"))));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("\"verified\": false"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace cptune
