#include "core/read_file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/error.h"

namespace cptune {
namespace {

std::string kind_of(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

[[noreturn]] void throw_not_regular(const std::string& path, const std::string& what, mode_t mode) {
  throw Error(what + " '" + path + "' is " + kind_of(mode) + "; give a regular file");
}

// Back to blocking I/O once the open could not block any more (regular files never do).
void clear_nonblock(int fd) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags >= 0) fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
}

}  // namespace

void refuse_special_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return;  // missing: the caller creates it or reports it
  if (!S_ISREG(st.st_mode)) throw_not_regular(path, what, st.st_mode);
}

RegularFile::RegularFile(const std::string& path, const std::string& what) : path_(path), what_(what) {
  // O_NONBLOCK: opening a FIFO with no writer returns at once (and is then refused by fstat).
  fd_ = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd_ < 0) throw Error(what + " '" + path + "' cannot be read: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd_, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd_);
    fd_ = -1;
    throw_not_regular(path, what, st.st_mode);
  }
  size_ = uint64_t(st.st_size);
  clear_nonblock(fd_);
}

RegularFile::~RegularFile() {
  if (fd_ >= 0) close(fd_);
}

size_t RegularFile::read_some(void* buffer, size_t n) {
  for (;;) {
    const ssize_t got = read(fd_, buffer, n);
    if (got >= 0) return size_t(got);
    if (errno != EINTR) throw Error(what_ + " '" + path_ + "' cannot be read: " + std::strerror(errno));
  }
}

void RegularFile::read_exact(void* buffer, size_t n) {
  char* p = static_cast<char*>(buffer);
  while (n > 0) {
    const size_t got = read_some(p, n);
    if (got == 0) throw Error(what_ + " '" + path_ + "' ends early (it shrank while being read, or is truncated)");
    p += got;
    n -= got;
  }
}

std::string RegularFile::read_rest(size_t max_bytes) {
  std::string text;
  char buffer[1 << 16];
  for (;;) {
    const size_t n = read_some(buffer, sizeof buffer);
    if (n == 0) return text;
    if (text.size() + n > max_bytes)
      throw Error(what_ + " '" + path_ + "' is larger than " + std::to_string(max_bytes >> 20) + " MiB; split it");
    text.append(buffer, n);
  }
}

std::string read_regular_file(const std::string& path, const std::string& what, size_t max_bytes) {
  RegularFile file(path, what);
  // The size from fstat refuses a large file before anything is read; read_rest still bounds a
  // file that grows meanwhile.
  if (file.size() > max_bytes)
    throw Error(what + " '" + path + "' is larger than " + std::to_string(max_bytes >> 20) + " MiB; split it");
  return file.read_rest(max_bytes);
}

int open_regular_file_for_write(const std::string& path, const std::string& what) {
  // Refuse before O_TRUNC can touch a device; O_NONBLOCK makes a FIFO without a reader fail
  // with ENXIO at once and one with a reader open, both then refused.
  refuse_special_file(path, what);
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NONBLOCK | O_CLOEXEC, 0644);
  if (fd < 0) {
    if (errno == ENXIO) throw_not_regular(path, what, S_IFIFO);
    throw Error(what + " '" + path + "' cannot be written: " + std::strerror(errno));
  }
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    throw_not_regular(path, what, st.st_mode);
  }
  clear_nonblock(fd);
  return fd;
}

void write_all_or_throw(int fd, const void* data, size_t bytes, const std::string& path, const std::string& what) {
  const char* p = static_cast<const char*>(data);
  while (bytes > 0) {
    const ssize_t n = write(fd, p, bytes);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      throw Error(what + " '" + path + "': writing failed: " + std::strerror(n < 0 ? errno : ENOSPC) +
                  " (disk full, or a file size limit such as ulimit -f)");
    p += n;
    bytes -= size_t(n);
  }
}

}  // namespace cptune
