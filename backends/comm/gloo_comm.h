#pragma once
// Comm over Gloo (docs/design.md "Executor"): host buffers over TCP, ranks found through a
// rendezvous store (rendezvous.h). Also the host-side metadata channel of NCCL runs.
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "backends/comm/comm.h"

namespace gloo {
class Context;
}

namespace cptune::backends {

struct GlooCommOptions {
  int rank = 0;
  int size = 1;
  std::string rendezvous;  // "file:///abs/dir" or "redis://host:port" (parse_rendezvous)
  // Keys of this communicator in the store. Runs that share a store need distinct prefixes:
  // a FileStore refuses a key an earlier run left behind.
  std::string prefix = "cptune";
  // Bounds every rendezvous wait and every operation, so a dead or missing peer becomes an
  // Error after this long instead of a hang.
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};
  // This rank's TCP device: iface wins over hostname. When both are empty, the environment
  // decides (CPTUNE_GLOO_IFACE, then CPTUNE_GLOO_HOSTNAME), else 127.0.0.1 (one host).
  std::string hostname;
  std::string iface;
};

class GlooComm final : public Comm {
 public:
  // Collective: every rank of options.size calls it with the same rendezvous and prefix.
  // Call it after forking local ranks, since the TCP device starts a thread. Sets SIGPIPE to
  // SIG_IGN when it is at its default (Gloo writes without MSG_NOSIGNAL; a dead peer must be an
  // Error, not a kill); a handler the program installed is left alone. Throws Error on
  // bad options, an unreachable store, or a peer that does not arrive within the timeout.
  static std::unique_ptr<GlooComm> create(const GlooCommOptions& options);
  ~GlooComm() override;
  GlooComm(const GlooComm&) = delete;
  GlooComm& operator=(const GlooComm&) = delete;

  int rank() const override;
  int size() const override;
  std::string backend() const override { return "gloo"; }

  // The new communicator shares this one's store and TCP device; its keys live under
  // prefix() + "/split<n>/color<c>", n counting this comm's splits.
  std::unique_ptr<Comm> split(int color, int key) override;

  // Counts must agree across members: recv_bytes[p] here equals send_bytes[me] on p (and
  // irecv's bytes the matching isend's). Gloo cannot report a longer message as an error: it
  // aborts the receiving process from its own thread (EnforceNotMet, "preamble.length <= nbytes").
  void alltoallv(const void* send, std::span<const int64_t> send_bytes, void* recv,
                 std::span<const int64_t> recv_bytes) override;
  void allgatherv(const void* send, int64_t send_bytes, void* recv, std::span<const int64_t> recv_bytes) override;
  // peer must differ from rank(); tag must be >= 0.
  std::unique_ptr<Request> isend(const void* buf, int64_t bytes, int peer, int tag) override;
  std::unique_ptr<Request> irecv(void* buf, int64_t bytes, int peer, int tag) override;
  void barrier() override;
  void allgather_host(const void* send, int64_t bytes, void* recv) override;

  std::chrono::milliseconds timeout() const { return timeout_; }
  const std::string& prefix() const { return prefix_; }

 private:
  struct Endpoint;  // store and TCP device, shared by a comm and every comm split from it

  GlooComm(std::shared_ptr<const Endpoint> endpoint, std::shared_ptr<gloo::Context> context, std::string prefix,
           std::chrono::milliseconds timeout);
  static std::unique_ptr<GlooComm> connect(std::shared_ptr<const Endpoint> endpoint, int rank, int size,
                                           std::string prefix, std::chrono::milliseconds timeout);
  std::unique_ptr<Request> start_p2p(bool is_send, void* buf, int64_t bytes, int peer, int tag);
  uint32_t next_collective_tag() { return collective_tag_++; }
  [[noreturn]] void rethrow_as_error(const std::string& operation) const;

  std::shared_ptr<const Endpoint> endpoint_;
  std::shared_ptr<gloo::Context> context_;
  std::string prefix_;
  std::chrono::milliseconds timeout_;
  // Every member calls collectives in the same order, so equal counters give equal tags.
  uint32_t collective_tag_ = 0;
  int splits_ = 0;
};

}  // namespace cptune::backends
