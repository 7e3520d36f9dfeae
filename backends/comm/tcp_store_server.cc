// The env:// store's server (tcp_store.h): one thread, one poll loop, every socket non-blocking.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <thread>

#include "backends/comm/tcp_store.h"
#include "backends/comm/tcp_store_wire.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

using Clock = std::chrono::steady_clock;

struct Connection {
  int fd = -1;
  bool authenticated = false;
  bool closing = false;       // refused: flush the reply, then close
  std::string in, out;        // bytes received and not yet parsed; replies not yet sent
  Clock::time_point since;    // accepted, or the first byte of the message still incomplete
  bool partial = false;
};

// Equal-time comparison: how long a refusal takes says nothing about the token.
bool same_token(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

bool all_interfaces(const std::string& host) { return host.empty() || host == "0.0.0.0" || host == "::" || host == "*"; }

bool is_loopback(const sockaddr* a) {
  if (a->sa_family == AF_INET)
    return (ntohl(reinterpret_cast<const sockaddr_in*>(a)->sin_addr.s_addr) >> 24) == 127;
  if (a->sa_family == AF_INET6) {
    const in6_addr& v6 = reinterpret_cast<const sockaddr_in6*>(a)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
  }
  return false;
}

bool is_numeric_or_localhost(const std::string& host) {
  in6_addr scratch{};
  return host == "localhost" || inet_pton(AF_INET, host.c_str(), &scratch) == 1 || inet_pton(AF_INET6, host.c_str(), &scratch) == 1;
}

// A listening socket on every interface (IPv6 with IPv4 clients too, else IPv4), or -1 with errno.
int listen_any(int port) {
  int fd = ::socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  const int one = 1, zero = 0;
  if (fd >= 0) {
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    sockaddr_in6 addr{};
    addr.sin6_family = AF_INET6;
    addr.sin6_addr = in6addr_any;
    addr.sin6_port = htons(uint16_t(port));
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 && ::listen(fd, 1024) == 0) return fd;
    const int saved = errno;
    ::close(fd);
    if (saved != EAFNOSUPPORT && saved != EADDRNOTAVAIL) return errno = saved, -1;
  }
  fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_ANY);
  addr.sin_port = htons(uint16_t(port));
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 && ::listen(fd, 1024) == 0) return fd;
  const int saved = errno;
  ::close(fd);
  return errno = saved, -1;
}

// Listens on the address the ranks connect to; `where` says which, for messages.
int listen_on(const std::string& host, int port, std::string& where) {
  where = "every interface";
  if (all_interfaces(host)) return listen_any(port);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  const int gai = ::getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &found);
  if (gai != 0) throw Error("env:// rendezvous: rank 0 cannot resolve MASTER_ADDR '" + host + "' to listen on: " + gai_strerror(gai));
  bool only_loopback = true;
  for (addrinfo* a = found; a; a = a->ai_next) only_loopback = only_loopback && is_loopback(a->ai_addr);
  // A host name that resolves to loopback only here (Debian maps the own name to 127.0.1.1) is
  // still how the other hosts reach this one: listen on every interface, the token guards it.
  if (only_loopback && !is_numeric_or_localhost(host)) {
    ::freeaddrinfo(found);
    return listen_any(port);
  }
  where = host;
  int fd = -1, saved = 0;
  for (addrinfo* a = found; a && fd < 0; a = a->ai_next) {
    fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol);
    if (fd < 0) continue;
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0 || ::listen(fd, 1024) != 0) {
      saved = errno;
      ::close(fd);
      fd = -1;
    }
  }
  ::freeaddrinfo(found);
  if (fd < 0) errno = saved;
  return fd;
}

}  // namespace

struct TcpStoreServer::State {
  TcpStoreServerOptions options;
  int listen_fd = -1;
  int wake[2] = {-1, -1};  // the destructor writes to wake[1] to stop the thread
  std::map<std::string, std::string> values;
  size_t held_bytes = 0;
  std::map<int, Connection> connections;  // by fd
  std::thread thread;

  size_t max_message() const { return 9 + options.max_key_bytes + options.max_value_bytes; }

  // Parses and answers every whole message in c.in; false when the client broke the protocol
  // or a cap (dropped).
  bool serve(Connection& c) {
    size_t at = 0;
    const auto* bytes = reinterpret_cast<const unsigned char*>(c.in.data());
    while (!c.closing) {
      const size_t left = c.in.size() - at;
      if (left < 5) break;
      const char op = char(bytes[at]);
      const uint32_t len = wire::get_u32(bytes + at + 1);
      if (!c.authenticated && op != wire::kAuth) return false;
      const size_t cap = op == wire::kAuth ? 1024 : options.max_key_bytes;
      if ((op != wire::kAuth && op != wire::kSet && op != wire::kGet) || len > cap) return false;
      size_t need = 5 + size_t(len);
      uint32_t value_len = 0;
      if (op == wire::kSet) {
        if (left < need + 4) break;
        value_len = wire::get_u32(bytes + at + need);
        if (value_len > options.max_value_bytes) return false;  // never buffered
        need += 4 + size_t(value_len);
      }
      if (left < need) break;
      std::string key(c.in, at + 5, len);
      if (op == wire::kAuth) {
        c.authenticated = same_token(key, options.token);
        c.out.push_back(c.authenticated ? 1 : 0);
        c.closing = !c.authenticated;
      } else if (op == wire::kSet) {
        std::string value(c.in, at + 9 + len, value_len);
        const auto it = values.find(key);
        const size_t old = it == values.end() ? 0 : it->first.size() + it->second.size();
        if (held_bytes - old + key.size() + value.size() > options.max_total_bytes) {
          c.out.push_back(wire::kRefused);
        } else {
          held_bytes = held_bytes - old + key.size() + value.size();
          values[std::move(key)] = std::move(value);
          c.out.push_back(wire::kStored);
        }
      } else {
        const auto it = values.find(key);
        c.out.push_back(it == values.end() ? 0 : 1);
        if (it != values.end()) {
          wire::put_u32(c.out, uint32_t(it->second.size()));
          c.out += it->second;
        }
      }
      at += need;
    }
    c.in.erase(0, at);
    if (c.in.empty()) {
      c.partial = false;
    } else if (!c.partial) {
      c.partial = true;
      c.since = Clock::now();
    }
    return c.out.size() <= 2 * max_message();  // a client that never reads its replies
  }

  // Reads what is there and answers it; false when the connection is to be closed.
  bool on_readable(Connection& c) {
    char buffer[1 << 16];
    for (;;) {
      const ssize_t n = ::recv(c.fd, buffer, sizeof buffer, MSG_DONTWAIT);
      if (n == 0) return false;
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        return false;
      }
      c.in.append(buffer, size_t(n));
      if (!serve(c)) return false;
      if (c.in.size() > max_message()) return false;
    }
    return flush(c);
  }

  bool flush(Connection& c) {
    while (!c.out.empty()) {
      const ssize_t n = ::send(c.fd, c.out.data(), c.out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
      if (n <= 0) return false;
      c.out.erase(0, size_t(n));
    }
    return !c.closing;
  }

  void drop(int fd) {
    ::close(fd);
    connections.erase(fd);
  }

  void accept_all() {
    for (;;) {
      const int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        if (errno == EINTR || errno == ECONNABORTED) continue;
        return;  // EAGAIN; EMFILE waits for a connection to go (stalled ones time out)
      }
      int pending = 0, total = int(connections.size());
      int oldest = -1;
      for (const auto& [other, c] : connections)
        if (!c.authenticated) {
          ++pending;
          if (oldest < 0 || c.since < connections.at(oldest).since) oldest = other;
        }
      // Strangers that never show a token cannot crowd out the ranks: the oldest one goes.
      if (pending >= options.max_pending && oldest >= 0) drop(oldest), --total;
      if (total >= options.max_connections + options.max_pending) {
        ::close(fd);
        continue;
      }
      Connection c;
      c.fd = fd;
      c.since = Clock::now();
      connections.emplace(fd, std::move(c));
    }
  }

  void run() {
    std::vector<pollfd> fds;
    while (true) {
      fds.assign({{wake[0], POLLIN, 0}, {listen_fd, POLLIN, 0}});
      for (const auto& [fd, c] : connections) fds.push_back({fd, short(POLLIN | (c.out.empty() ? 0 : POLLOUT)), 0});
      const int ready = ::poll(fds.data(), fds.size(), 100);  // wakes to drop stalled clients
      if (ready < 0 && errno != EINTR) break;
      if (fds[0].revents) break;
      if (ready > 0) {
        for (size_t i = 2; i < fds.size(); ++i) {
          if (!fds[i].revents) continue;
          Connection& c = connections.at(fds[i].fd);
          const bool keep = (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) ? on_readable(c) : flush(c);
          if (!keep) drop(fds[i].fd);
        }
        if (fds[1].revents & POLLIN) accept_all();
      }
      const auto now = Clock::now();
      std::vector<int> stalled;
      for (const auto& [fd, c] : connections)
        if ((!c.authenticated || c.partial || c.closing) && now - c.since > options.stall_timeout) stalled.push_back(fd);
      for (int fd : stalled) drop(fd);
    }
    for (const auto& [fd, c] : connections) ::close(fd);
    connections.clear();
  }
};

TcpStoreServer::TcpStoreServer(const TcpStoreServerOptions& options) : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.options = options;
  if (options.token.empty()) throw Error("env:// rendezvous: the store needs a non-empty token");
  std::string where;
  s.listen_fd = listen_on(options.bind_host, options.port, where);
  if (s.listen_fd < 0)
    throw Error("env:// rendezvous: rank 0 cannot serve the store on " + where + " port " + std::to_string(options.port) +
                ": " + std::strerror(errno) +
                "; set MASTER_PORT to a free port (the same on every rank), or CPTUNE_STORE_BIND to an address of this host");
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

}  // namespace cptune::backends
