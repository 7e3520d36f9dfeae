#include "backends/comm/tcp_store.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <thread>

#include "core/error.h"

namespace cptune::backends {
namespace {

constexpr char kSet = 'S';
constexpr char kGet = 'G';
constexpr uint32_t kMaxLength = 64u << 20;  // a key or value; Gloo's addresses are a few hundred bytes

// Whole-buffer I/O on a blocking socket; false on EOF or error.
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

void put_u32(std::string& out, uint32_t v) {
  for (int i = 0; i < 4; ++i) out.push_back(char((v >> (8 * i)) & 0xff));
}

bool read_u32(int fd, uint32_t& v) {
  unsigned char b[4];
  if (!read_all(fd, b, 4)) return false;
  v = uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
  return v <= kMaxLength;
}

bool read_bytes(int fd, std::string& out) {
  uint32_t n = 0;
  if (!read_u32(fd, n)) return false;
  out.resize(n);
  return read_all(fd, out.data(), n);
}

}  // namespace

struct TcpStoreServer::State {
  int listen_fd = -1;
  int wake[2] = {-1, -1};  // the destructor writes to wake[1] to stop the thread
  std::map<std::string, std::string> values;
  std::thread thread;

  // One request from a client; false when the client hung up or spoke nonsense (dropped).
  bool serve_one(int fd) {
    char op = 0;
    std::string key;
    if (!read_all(fd, &op, 1) || !read_bytes(fd, key)) return false;
    if (op == kSet) {
      std::string value;
      if (!read_bytes(fd, value)) return false;
      values[key] = std::move(value);
      const char ok = 1;
      return write_all(fd, &ok, 1);
    }
    if (op != kGet) return false;
    const auto it = values.find(key);
    std::string reply(1, it == values.end() ? 0 : 1);
    if (it != values.end()) {
      put_u32(reply, uint32_t(it->second.size()));
      reply += it->second;
    }
    return write_all(fd, reply.data(), reply.size());
  }

  void run() {
    std::vector<pollfd> fds = {{wake[0], POLLIN, 0}, {listen_fd, POLLIN, 0}};
    while (true) {
      if (::poll(fds.data(), fds.size(), -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (fds[0].revents) break;
      if (fds[1].revents & POLLIN) {
        const int client = ::accept(listen_fd, nullptr, nullptr);
        if (client >= 0) fds.push_back({client, POLLIN, 0});
      }
      for (size_t i = 2; i < fds.size();) {
        if (fds[i].revents && !serve_one(fds[i].fd)) {
          ::close(fds[i].fd);
          fds.erase(fds.begin() + std::ptrdiff_t(i));
          continue;
        }
        ++i;
      }
    }
    for (size_t i = 2; i < fds.size(); ++i) ::close(fds[i].fd);
  }
};

TcpStoreServer::TcpStoreServer(int port) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.listen_fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
  const bool v6 = s.listen_fd >= 0;
  if (!v6) s.listen_fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s.listen_fd < 0) throw Error(std::string("env:// rendezvous: cannot open a socket: ") + std::strerror(errno));
  const int one = 1, zero = 0;
  ::setsockopt(s.listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  int rc = 0;
  if (v6) {
    ::setsockopt(s.listen_fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);  // IPv4 clients too
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons(uint16_t(port));
    rc = ::bind(s.listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  } else {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    addr.sin_port = htons(uint16_t(port));
    rc = ::bind(s.listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  }
  if (rc != 0 || ::listen(s.listen_fd, 1024) != 0) {
    const std::string why = std::strerror(errno);
    ::close(s.listen_fd);
    throw Error("env:// rendezvous: rank 0 cannot serve the store on port " + std::to_string(port) + ": " + why +
                "; set MASTER_PORT to a free port (the same on every rank)");
  }
  if (::pipe2(s.wake, O_CLOEXEC) != 0) {
    ::close(s.listen_fd);
    throw Error(std::string("env:// rendezvous: pipe failed: ") + std::strerror(errno));
  }
  s.thread = std::thread([&s] { s.run(); });
}

TcpStoreServer::~TcpStoreServer() {
  const char stop = 1;
  (void)!::write(state_->wake[1], &stop, 1);
  state_->thread.join();
  ::close(state_->listen_fd);
  ::close(state_->wake[0]);
  ::close(state_->wake[1]);
}

TcpStore::TcpStore(std::string host, int port, std::chrono::milliseconds timeout, bool serve)
    : host_(std::move(host)), port_(port), timeout_(timeout) {
  if (serve) server_ = std::make_unique<TcpStoreServer>(port);
  using clock = std::chrono::steady_clock;
  const auto deadline = clock::now() + timeout;
  std::string why;
  while (true) {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* found = nullptr;
    const int gai = ::getaddrinfo(host_.c_str(), std::to_string(port).c_str(), &hints, &found);
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
                  std::to_string(timeout.count()) + " ms: " + why +
                  "; check MASTER_ADDR / MASTER_PORT and that rank 0 is running");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  const int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  // A store that stops answering fails the call instead of hanging it.
  timeval tv{};
  tv.tv_sec = std::max<long>(1, long(timeout.count() / 1000));
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

TcpStore::~TcpStore() {
  if (fd_ >= 0) ::close(fd_);
}

std::string TcpStore::where() const { return host_ + ":" + std::to_string(port_); }

void TcpStore::set(const std::string& key, const std::vector<char>& data) {
  std::string request(1, kSet);
  put_u32(request, uint32_t(key.size()));
  request += key;
  put_u32(request, uint32_t(data.size()));
  request.append(data.begin(), data.end());
  char ok = 0;
  if (key.size() > kMaxLength || data.size() > kMaxLength || !write_all(fd_, request.data(), request.size()) ||
      !read_all(fd_, &ok, 1) || ok != 1)
    throw Error("env:// rendezvous: setting key '" + key + "' in the store at " + where() +
                " failed: the store did not answer (rank 0 gone?)");
}

bool TcpStore::try_get(const std::string& key, std::vector<char>& value) {
  std::string request(1, kGet);
  put_u32(request, uint32_t(key.size()));
  request += key;
  char found = 0;
  if (!write_all(fd_, request.data(), request.size()) || !read_all(fd_, &found, 1))
    throw Error("env:// rendezvous: reading key '" + key + "' from the store at " + where() +
                " failed: the store did not answer (rank 0 gone?)");
  if (!found) return false;
  std::string bytes;
  if (!read_bytes(fd_, bytes))
    throw Error("env:// rendezvous: the store at " + where() + " sent a truncated value for key '" + key + "'");
  value.assign(bytes.begin(), bytes.end());
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
