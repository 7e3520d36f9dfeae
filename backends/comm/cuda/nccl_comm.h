#pragma once
// Comm over NCCL (docs/design.md "Executor"): device buffers on one GPU per rank. A host Comm
// (Gloo) beside it carries the ncclUniqueId at start-up and is the metadata channel after:
// allgather_host never touches the GPU, so UAA's per-rank lengths need no device-to-host sync.
//
// Streams: every collective and the executor's copies and kernels run in order on stream();
// ring transfers (isend / irecv) run on a second, higher-priority stream of their own so they
// overlap the attention of the previous block. Nothing blocks the host except synchronize(),
// barrier() and the host-channel calls; a GPU that does not finish within the timeout (a dead or
// stuck peer) becomes an Error and the NCCL communicator is aborted.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backends/comm/comm.h"

namespace cptune::backends {

struct NcclCommOptions {
  int device = 0;  // CUDA device of this rank (its local rank on a node with one GPU per rank)
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};  // bounds every wait for the GPU
};

class NcclComm final : public Comm {
 public:
  // Collective over `host`: every member calls it. Rank 0 makes the ncclUniqueId, the host comm
  // carries it to all, and host rank r becomes NCCL rank r. `host` must outlive this comm and
  // every comm split from it. Throws Error when the device or NCCL cannot start.
  static std::unique_ptr<NcclComm> create(Comm& host, const NcclCommOptions& options);
  ~NcclComm() override;
  NcclComm(const NcclComm&) = delete;
  NcclComm& operator=(const NcclComm&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }

  // ncclCommSplit and the same split of the host comm; the new comm shares stream().
  std::unique_ptr<Comm> split(int color, int key) override;

  // Device buffers, enqueued on stream(): one NCCL group of ncclSend / ncclRecv per member with
  // the exact byte counts (zero counts skipped, the block to itself included).
  void alltoallv(const void* send, std::span<const int64_t> send_bytes, void* recv,
                 std::span<const int64_t> recv_bytes) override;
  // ncclAllGather when every member sends the same count, else one ncclBroadcast per member.
  void allgatherv(const void* send, int64_t send_bytes, void* recv, std::span<const int64_t> recv_bytes) override;
  // Ring transfers. Operations are collected until the first wait() on any of them, then start
  // together as one NCCL group on the ring stream, after everything enqueued on stream() before
  // the isend / irecv calls (so a send reads finished data and a receive overwrites a free
  // buffer). wait() orders stream() after the transfer; the host does not block. Every request
  // must be waited on. peer may be rank() itself.
  std::unique_ptr<Request> isend(const void* buf, int64_t bytes, int peer, int tag) override;
  std::unique_ptr<Request> irecv(void* buf, int64_t bytes, int peer, int tag) override;
  // Waits for this rank's GPU work (synchronize()), then a host barrier.
  void barrier() override;
  // Host memory over the host comm: no GPU work, no sync.
  void allgather_host(const void* send, int64_t bytes, void* recv) override;

  cudaStream_t stream() const;
  int device() const { return device_; }
  std::chrono::milliseconds timeout() const { return timeout_; }
  Comm& host() { return *host_; }
  // Blocks until everything enqueued on stream() has run. Throws Error (and aborts the NCCL
  // communicator) when NCCL reports an asynchronous error or the timeout passes first.
  void synchronize();

 private:
  struct Streams;  // stream() and its events, shared by a comm and every comm split from it
  class RingBatch;
  class RingRequest;

  NcclComm(ncclComm_t comm, Comm* host, std::unique_ptr<Comm> owned_host, std::shared_ptr<Streams> streams,
           int device, std::chrono::milliseconds timeout);
  void start();    // checks the rank NCCL gave this comm, makes the ring stream and event
  void release();  // frees what start() and NCCL made
  std::unique_ptr<Request> add_ring_op(bool is_send, void* buf, int64_t bytes, int peer, int tag);
  void launch_ring_batch();
  void check_async_error(const std::string& operation);
  void check_usable() const;  // throws once a timeout or an asynchronous error aborted the comm
  void abort_all();           // every comm on this rank's stream
  std::string where() const;

  ncclComm_t comm_ = nullptr;
  std::unique_ptr<Comm> owned_host_;  // the host comm of a split comm
  Comm* host_ = nullptr;
  std::shared_ptr<Streams> streams_;
  cudaStream_t ring_stream_ = nullptr;
  cudaEvent_t ring_ready_ = nullptr;  // stream() reached the last isend / irecv call
  int rank_ = 0, size_ = 1, device_ = 0;
  std::chrono::milliseconds timeout_;
  std::shared_ptr<RingBatch> pending_;  // ring operations not started yet
  bool aborted_ = false;
};

}  // namespace cptune::backends
