#pragma once
// The env:// rendezvous (torchrun's MASTER_ADDR / MASTER_PORT): a small key-value store over
// TCP behind Gloo's Store interface. Debian's Gloo has no TCPStore, so rank 0 serves this one on
// MASTER_PORT and every rank, rank 0 included, is its client. Values live as long as the server.
//
// Wire format, one request per message: op byte ('S' set, 'G' get), u32 key length, key; a set
// adds u32 value length and the value. A set is answered with one byte 1; a get with one byte
// (1 found, 0 not yet) and, when found, u32 length and the value. Lengths little-endian.
#include <gloo/rendezvous/store.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

namespace cptune::backends {

// Serves the store on every interface at `port` from a thread of its own until destroyed.
// Throws Error naming the port when it cannot listen there (in use: another run, or a launcher
// that took MASTER_PORT for itself).
class TcpStoreServer {
 public:
  explicit TcpStoreServer(int port);
  ~TcpStoreServer();
  TcpStoreServer(const TcpStoreServer&) = delete;
  TcpStoreServer& operator=(const TcpStoreServer&) = delete;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// A client of the store at host:port; with `serve`, this process also runs the server (rank 0).
// Connecting retries until `timeout` (rank 0 may start last); every wait, the one inside get()
// included, gives up after `timeout`. Every failure is an Error naming host:port.
class TcpStore final : public gloo::rendezvous::Store {
 public:
  TcpStore(std::string host, int port, std::chrono::milliseconds timeout, bool serve);
  ~TcpStore() override;

  void set(const std::string& key, const std::vector<char>& data) override;
  std::vector<char> get(const std::string& key) override;
  void wait(const std::vector<std::string>& keys) override;
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override;

 private:
  // nullopt-like: found is false when the key is not there yet.
  bool try_get(const std::string& key, std::vector<char>& value);
  std::string where() const;

  std::string host_;
  int port_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<TcpStoreServer> server_;
  int fd_ = -1;
};

}  // namespace cptune::backends
