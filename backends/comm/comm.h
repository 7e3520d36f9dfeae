#pragma once
// The narrow interface the executor talks to (docs/design.md "Executor"). Buffers are raw bytes:
// host memory for Gloo, device memory for NCCL. Counts are bytes, one entry per group member,
// and data is packed in member order (offsets are prefix sums of the counts).
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

namespace cptune::backends {

// An outstanding point-to-point operation (ring send or receive).
class Request {
 public:
  virtual ~Request() = default;
  virtual void wait() = 0;  // throws Error on timeout or a failed peer
};

class Comm {
 public:
  virtual ~Comm() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "gloo", "nccl"

  // Collective over this communicator, like MPI_Comm_split / ncclCommSplit: members with the
  // same color form one new communicator, ordered by key. Every member must call it.
  virtual std::unique_ptr<Comm> split(int color, int key) = 0;

  // Uneven all-to-all: send_bytes[p] bytes go to member p, recv_bytes[p] arrive from p.
  virtual void alltoallv(const void* send, std::span<const int64_t> send_bytes, void* recv,
                         std::span<const int64_t> recv_bytes) = 0;
  // recv gets every member's contribution in member order; recv_bytes[p] is member p's size.
  virtual void allgatherv(const void* send, int64_t send_bytes, void* recv,
                          std::span<const int64_t> recv_bytes) = 0;
  // Point-to-point, for the ring; tag separates concurrent transfers between the same pair.
  virtual std::unique_ptr<Request> isend(const void* buf, int64_t bytes, int peer, int tag) = 0;
  virtual std::unique_ptr<Request> irecv(void* buf, int64_t bytes, int peer, int tag) = 0;
  virtual void barrier() = 0;

  // Host-side helpers every backend shares (a CPU channel: Gloo itself, or NCCL's Gloo side).
  // Equal-size all-gather of a few host bytes, e.g. per-rank sequence lengths or arg hashes.
  virtual void allgather_host(const void* send, int64_t bytes, void* recv) = 0;
};

}  // namespace cptune::backends
