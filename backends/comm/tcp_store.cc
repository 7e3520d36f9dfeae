// The env:// store's client (tcp_store.h); the server is tcp_store_server.cc.
#include "backends/comm/tcp_store.h"

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "backends/comm/tcp_store_wire.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

// The client's own caps match the server's defaults, so an oversized set fails here, named.
constexpr size_t kMaxKeyBytes = TcpStoreServerOptions{}.max_key_bytes;
constexpr size_t kMaxValueBytes = TcpStoreServerOptions{}.max_value_bytes;

// Whole-buffer I/O on a blocking socket (with SO_RCVTIMEO); false on EOF, error or timeout.
bool write_all(int fd, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= size_t(n);
  }
  return true;
}

bool read_all(int fd, void* data, size_t size) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = ::recv(fd, p, size, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    p += n;
    size -= size_t(n);
  }
  return true;
}

std::string message(char op, const std::string& key) {
  std::string out(1, op);
  wire::put_u32(out, uint32_t(key.size()));
  out += key;
  return out;
}

}  // namespace

TcpStore::TcpStore(std::string host, int port, std::chrono::milliseconds timeout, bool serve, std::string token,
                   std::string bind_host)
    : host_(std::move(host)), port_(port), timeout_(timeout) {
  if (token.empty()) throw Error("env:// rendezvous: the store needs a non-empty token");
  if (serve) {
    TcpStoreServerOptions options;
    options.port = port;
    options.bind_host = bind_host.empty() ? host_ : bind_host;
    options.token = token;
    options.stall_timeout = std::clamp(timeout, std::chrono::milliseconds(500), std::chrono::milliseconds(5000));
    server_ = std::make_unique<TcpStoreServer>(options);
  }
  connect_and_authenticate(token);
}

void TcpStore::connect_and_authenticate(const std::string& token) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + timeout_;
  std::string why;
  while (true) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int gai = ::getaddrinfo(host_.c_str(), std::to_string(port_).c_str(), &hints, &found);
    if (gai != 0) {
      why = std::string("cannot resolve the host: ") + gai_strerror(gai);
    } else {
      for (addrinfo* a = found; a && fd_ < 0; a = a->ai_next) {
        const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
          fd_ = fd;
        } else {
          why = std::strerror(errno);
          ::close(fd);
        }
      }
      ::freeaddrinfo(found);
    }
    if (fd_ >= 0) break;
    if (clock::now() > deadline)
      throw Error("env:// rendezvous: cannot reach the store at " + where() + " (rank 0 serves it) within " +
                  std::to_string(timeout_.count()) + " ms: " + why +
                  "; check MASTER_ADDR / MASTER_PORT and that rank 0 is running");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // A store that stops answering fails the call instead of hanging it.
  timeval tv{};
  tv.tv_sec = std::max<long>(1, long(timeout_.count() / 1000));
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  const std::string auth = message(wire::kAuth, token);
  char accepted = 0;
  if (token.size() > 1024 || !write_all(fd_, auth.data(), auth.size()) || !read_all(fd_, &accepted, 1) || accepted != 1) {
    ::close(fd_);
    fd_ = -1;
    throw Error("env:// rendezvous: the store at " + where() +
                " refused this rank's token: every rank needs the same CPTUNE_STORE_TOKEN or the same launcher job id "
                "(something else may be listening on MASTER_PORT)");
  }
}

TcpStore::~TcpStore() {
  if (fd_ >= 0) ::close(fd_);
}

std::string TcpStore::where() const { return host_ + ":" + std::to_string(port_); }

void TcpStore::set(const std::string& key, const std::vector<char>& data) {
  if (key.size() > kMaxKeyBytes || data.size() > kMaxValueBytes)
    throw Error("env:// rendezvous: key '" + key.substr(0, 64) + "' (" + std::to_string(key.size()) + " bytes) or its value (" +
                std::to_string(data.size()) + " bytes) is over the store's caps (" + std::to_string(kMaxKeyBytes) + " and " +
                std::to_string(kMaxValueBytes) + " bytes)");
  std::string request = message(wire::kSet, key);
  wire::put_u32(request, uint32_t(data.size()));
  request.append(data.begin(), data.end());
  char ok = 0;
  if (!write_all(fd_, request.data(), request.size()) || !read_all(fd_, &ok, 1))
    throw Error("env:// rendezvous: setting key '" + key + "' in the store at " + where() +
                " failed: the store did not answer (rank 0 gone?)");
  if (ok == wire::kRefused)
    throw Error("env:// rendezvous: the store at " + where() + " refused key '" + key +
                "': it holds its cap of bytes already (something other than the ranks is filling it?)");
  if (ok != wire::kStored)
    throw Error("env:// rendezvous: the store at " + where() + " sent a bad answer to setting key '" + key + "'");
}

bool TcpStore::try_get(const std::string& key, std::vector<char>& value) {
  const std::string request = message(wire::kGet, key);
  char found = 0;
  if (key.size() > kMaxKeyBytes || !write_all(fd_, request.data(), request.size()) || !read_all(fd_, &found, 1))
    throw Error("env:// rendezvous: reading key '" + key + "' from the store at " + where() +
                " failed: the store did not answer (rank 0 gone?)");
  if (!found) return false;
  unsigned char len[4];
  uint32_t n = 0;
  if (!read_all(fd_, len, 4) || (n = wire::get_u32(len)) > kMaxValueBytes)
    throw Error("env:// rendezvous: the store at " + where() + " sent a bad value for key '" + key + "'");
  value.resize(n);
  if (!read_all(fd_, value.data(), n))
    throw Error("env:// rendezvous: the store at " + where() + " sent a truncated value for key '" + key + "'");
  return true;
}

std::vector<char> TcpStore::get(const std::string& key) {
  wait({key}, timeout_);
  std::vector<char> value;
  if (!try_get(key, value)) throw Error("env:// rendezvous: key '" + key + "' vanished from the store at " + where());
  return value;
}

void TcpStore::wait(const std::vector<std::string>& keys) { wait(keys, timeout_); }

void TcpStore::wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) {
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + std::min(timeout, timeout_);
  std::vector<char> ignored;
  for (const std::string& key : keys) {
    while (!try_get(key, ignored)) {
      if (clock::now() > deadline)
        throw Error("env:// rendezvous: timed out after " + std::to_string(std::min(timeout, timeout_).count()) +
                    " ms waiting for key '" + key + "' in the store at " + where() +
                    "; a rank did not start or cannot reach it");
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
}

}  // namespace cptune::backends
