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

}  // namespace

void refuse_special_file(const std::string& path, const std::string& what) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) return;  // missing: the caller creates it or reports it
  if (!S_ISREG(st.st_mode))
    throw Error(what + " '" + path + "' is " + kind_of(st.st_mode) + "; give a regular file");
}

std::string read_regular_file(const std::string& path, const std::string& what, size_t max_bytes) {
  // O_NONBLOCK: opening a FIFO with no writer returns at once (and is then refused by fstat).
  const int fd = open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw Error(what + " '" + path + "' cannot be read: " + std::strerror(errno));
  struct stat st {};
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    const std::string kind = kind_of(st.st_mode);
    close(fd);
    throw Error(what + " '" + path + "' is " + kind + "; give a regular file");
  }
  std::string text;
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int read_errno = errno;
      close(fd);
      throw Error(what + " '" + path + "' cannot be read: " + std::strerror(read_errno));
    }
    if (n == 0) break;
    if (text.size() + size_t(n) > max_bytes) {
      close(fd);
      throw Error(what + " '" + path + "' is larger than " + std::to_string(max_bytes >> 20) + " MiB; split it");
    }
    text.append(buffer, size_t(n));
  }
  close(fd);
  return text;
}

}  // namespace cptune
