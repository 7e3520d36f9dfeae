#pragma once
// Reading a file a user names (shapes CSV, hardware JSON, block tables, .npy arrays, NCCL logs and
// topology dumps): only a regular file, never more than a bound. A FIFO, a device such as /dev/zero
// or a directory is refused at once, without blocking, instead of hanging or failing deep inside a
// parser; a reader that trusts a size written inside the file checks it against size() first.
#include <cstddef>
#include <cstdint>
#include <string>

namespace cptune {

inline constexpr size_t kMaxInputFileBytes = size_t(64) << 20;  // 64 MiB

// An open regular file for reading. Opened with O_NONBLOCK (a FIFO without a writer opens at
// once) and refused by fstat unless it is a regular file.
class RegularFile {
 public:
  // Throws Error naming `what` and the path when it is missing, unreadable or not a regular file.
  RegularFile(const std::string& path, const std::string& what);
  ~RegularFile();
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;

  uint64_t size() const { return size_; }  // bytes, from fstat at open
  const std::string& path() const { return path_; }
  const std::string& what() const { return what_; }
  // Up to n bytes at the current position; 0 at the end. Throws Error on a read error.
  size_t read_some(void* buffer, size_t n);
  // Exactly n bytes; throws Error saying the file ends early otherwise.
  void read_exact(void* buffer, size_t n);
  // The rest of the file; throws Error when more than max_bytes remain.
  std::string read_rest(size_t max_bytes = kMaxInputFileBytes);

 private:
  std::string path_, what_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

// The whole file. Throws Error naming `what` and the path when it is missing, unreadable, not a
// regular file, or longer than max_bytes.
std::string read_regular_file(const std::string& path, const std::string& what,
                              size_t max_bytes = kMaxInputFileBytes);

// Throws Error naming `what` and the path when path exists but is not a regular file (a
// database or output file given as a FIFO, a device or a directory). A missing path passes.
void refuse_special_file(const std::string& path, const std::string& what);

// Creates or truncates `path` for writing, refusing (without blocking) anything but a regular
// file: a FIFO with no reader, a device, a directory. Returns the descriptor (O_CLOEXEC,
// blocking); the caller closes it. Throws Error naming `what` and the path.
int open_regular_file_for_write(const std::string& path, const std::string& what);

// Writes all of data to fd; throws Error naming `what` and the path on a short or failed write
// (a full disk, EFBIG under `ulimit -f`).
void write_all_or_throw(int fd, const void* data, size_t bytes, const std::string& path, const std::string& what);

}  // namespace cptune
