#pragma once
// The env:// rendezvous (torchrun's MASTER_ADDR / MASTER_PORT): a small key-value store over
// TCP behind Gloo's Store interface. Debian's Gloo has no TCPStore, so rank 0 serves this one on
// MASTER_PORT and every rank, rank 0 included, is its client. Values live as long as the server.
//
// Wire format, one request per message: op byte, u32 length, bytes. 'A' token: the first message
// of every connection, answered 1 (accepted) or 0 and closed. 'S' key then u32 length and value:
// answered 1 (stored) or 2 (refused: over the size caps). 'G' key: answered 0 (not yet) or 1,
// u32 length and the value. Lengths little-endian.
#include <gloo/rendezvous/store.h>

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <vector>

namespace cptune::backends {

struct TcpStoreServerOptions {
  int port = 0;
  // The address to listen on: MASTER_ADDR, so MASTER_ADDR=127.0.0.1 serves loopback only; a host
  // name that resolves only to loopback here (Debian's 127.0.1.1 entry) and "" listen on every
  // interface. CPTUNE_STORE_BIND overrides it (open_store reads it; "0.0.0.0" or "::" for all).
  std::string bind_host;
  std::string token;                       // what every client must present first
  size_t max_key_bytes = 4096;
  size_t max_value_bytes = size_t(1) << 20;   // Gloo's addresses are a few hundred bytes per peer
  size_t max_total_bytes = size_t(64) << 20;  // every key and value held
  int max_connections = 4096;                 // authenticated clients (two per rank at most)
  int max_pending = 64;                       // connections that have not yet shown the token
  // A connection that has not shown its token, or stalls inside a message, this long is dropped.
  std::chrono::milliseconds stall_timeout{std::chrono::seconds(5)};
};

// Serves the store from a thread of its own until destroyed: one poll loop over non-blocking
// sockets, so a client that sends half a message and waits (or never reads its replies) delays
// no one, and the destructor returns at once whatever clients do. Throws Error naming the
// address and port when it cannot listen there (in use: another run, or a launcher that took
// MASTER_PORT for itself).
class TcpStoreServer {
 public:
  explicit TcpStoreServer(const TcpStoreServerOptions& options);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// A client of the store at host:port presenting `token`; with `serve`, this process also runs
// the server on host's address (rank 0). Connecting retries until `timeout` (rank 0 may start
// last); every wait, the one inside get() included, gives up after `timeout`. Every failure is
// an Error naming host:port (a refused token says so, never the token).
class TcpStore final : public gloo::rendezvous::Store {
 public:
  TcpStore(std::string host, int port, std::chrono::milliseconds timeout, bool serve, std::string token,
           std::string bind_host = {});
  ~TcpStore() override;

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  // false when the key is not there yet.
  bool try_get(const std::string& key, std::vector<char>& value);
  void connect_and_authenticate(const std::string& token);
  std::string where() const;

  std::string host_;
  int port_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<TcpStoreServer> server_;
  int fd_ = -1;
};

}  // namespace cptune::backends
