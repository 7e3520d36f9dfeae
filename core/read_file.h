#pragma once
// Reading a file a user names (shapes CSV, hardware JSON): only a regular file, never more than
// a bound. A FIFO, a device such as /dev/zero or a directory is refused at once instead of
// hanging or failing deep inside a parser.
#include <cstddef>
#include <string>

namespace cptune {

inline constexpr size_t kMaxInputFileBytes = size_t(64) << 20;  // 64 MiB

// The whole file. Throws Error naming `what` and the path when it is missing, unreadable, not a
// regular file, or longer than max_bytes.
std::string read_regular_file(const std::string& path, const std::string& what,
                              size_t max_bytes = kMaxInputFileBytes);

// Throws Error naming `what` and the path when path exists but is not a regular file (a
// database or output file given as a FIFO, a device or a directory). A missing path passes.
void refuse_special_file(const std::string& path, const std::string& what);

}  // namespace cptune
