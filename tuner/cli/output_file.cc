#include "tuner/cli/output_file.h"

#include <unistd.h>

#include <filesystem>

#include "core/error.h"
#include "core/read_file.h"

namespace cptune::cli {

void check_writable(const std::string& path, const std::string& flag) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path file(path);
  const fs::path dir = file.has_parent_path() ? file.parent_path() : fs::path(".");
  auto fail = [&](const std::string& why) { throw Error(flag + " " + path + ": " + why); };
  if (path.empty()) fail("is empty; give a file name");
  if (fs::is_directory(file, ec)) fail("is a folder; give a file name inside it");
  refuse_special_file(path, flag);  // a FIFO would block the write after the whole run
  if (!fs::is_directory(dir, ec)) fail("its folder " + dir.string() + " does not exist; create it first");
  if (fs::exists(file, ec) ? access(path.c_str(), W_OK) != 0 : access(dir.c_str(), W_OK | X_OK) != 0)
    fail("cannot be written (permission denied); choose another path");
}

}  // namespace cptune::cli
