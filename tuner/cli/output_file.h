#pragma once
// Output files of the sub-commands that measure for minutes (calibrate, validate): a path that
// cannot be written must fail before any rank starts, not after the measurements.
#include <string>

namespace cptune::cli {

// Throws Error naming `flag` and the path when the file could not be created or replaced
// there (missing folder, no write permission, a folder in its place) or is not a regular file
// (a FIFO, a device). Creates nothing.
void check_writable(const std::string& path, const std::string& flag);

}  // namespace cptune::cli
