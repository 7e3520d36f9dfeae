#include "backends/comm/cuda/nccl_comm.h"

#include <fmt/format.h>

#include <algorithm>
#include <thread>
#include <utility>

#include "backends/comm/cuda/nccl_check.h"
#include "core/error.h"

namespace cptune::backends {
namespace {

using Clock = std::chrono::steady_clock;

// After this long, synchronize() polls the stream with short sleeps instead of spinning.
constexpr std::chrono::milliseconds kSpin{2};
constexpr std::chrono::microseconds kPollSleep{50};

int64_t check_counts(const std::string& operation, const std::string& where, std::span<const int64_t> counts,
                     int size, const char* name) {
  if (counts.size() != static_cast<size_t>(size))
    throw Error(fmt::format("nccl {} on {}: {} has {} entries; it needs one per member ({})", operation, where, name,
                            counts.size(), size));
  int64_t total = 0;
  for (size_t p = 0; p < counts.size(); ++p) {
    if (counts[p] < 0)
      throw Error(fmt::format("nccl {} on {}: {}[{}] = {} is negative", operation, where, name, p, counts[p]));
    total += counts[p];
  }
  return total;
}

void check_buffer(const std::string& operation, const std::string& where, const void* ptr, int64_t bytes,
                  const char* name) {
  if (bytes < 0) throw Error(fmt::format("nccl {} on {}: {} bytes {} is negative", operation, where, name, bytes));
  if (ptr == nullptr && bytes > 0)
    throw Error(fmt::format("nccl {} on {}: {} is null but {} bytes move", operation, where, name, bytes));
}

const std::byte* at(const void* base, int64_t offset) { return static_cast<const std::byte*>(base) + offset; }
std::byte* at(void* base, int64_t offset) { return static_cast<std::byte*>(base) + offset; }

// Calls ncclGroupEnd on every path, so a failed call inside a group never leaves one open.
class Group {
 public:
  Group(std::string operation, GpuWhere where, ncclComm_t comm)
      : operation_(std::move(operation)), where_(where), comm_(comm) {
    check_nccl(ncclGroupStart(), "ncclGroupStart of " + operation_, where_, comm_);
  }
  ~Group() {
    if (open_) ncclGroupEnd();
  }
  void add(ncclResult_t status, const char* call) {
    if (status != ncclSuccess) throw_nccl(status, std::string(call) + " in " + operation_, where_, comm_);
  }
  void end() {
    open_ = false;
    check_nccl(ncclGroupEnd(), "ncclGroupEnd of " + operation_, where_, comm_);
  }

 private:
  std::string operation_;
  GpuWhere where_;
  ncclComm_t comm_;
  bool open_ = true;
};

}  // namespace

// The stream every comm of one rank shares, and the comms that use it (a timeout aborts all).
struct NcclComm::Streams {
  cudaStream_t main = nullptr;
  std::vector<NcclComm*> comms;
  ~Streams() {
    if (main != nullptr) cudaStreamDestroy(main);
  }
};

// Ring operations collected since the last launch; `done` is recorded after they ran.
class NcclComm::RingBatch {
 public:
  struct Op {
    bool is_send;
    void* buf;
    int64_t bytes;
    int peer;
  };
  ~RingBatch() {
    if (done != nullptr) cudaEventDestroy(done);
  }
  std::vector<Op> ops;
  cudaEvent_t done = nullptr;
  bool launched = false;
};

class NcclComm::RingRequest final : public Request {
 public:
  RingRequest(NcclComm* comm, std::shared_ptr<RingBatch> batch) : comm_(comm), batch_(std::move(batch)) {}
  void wait() override {
    if (waited_) return;
    if (!batch_->launched) comm_->launch_ring_batch();
    check_cuda(cudaStreamWaitEvent(comm_->stream(), batch_->done, 0), "ordering the stream after a ring transfer",
               {comm_->rank_, comm_->size_, comm_->device_});
    waited_ = true;
  }

 private:
  NcclComm* comm_;
  std::shared_ptr<RingBatch> batch_;
  bool waited_ = false;
};

std::unique_ptr<NcclComm> NcclComm::create(Comm& host, const NcclCommOptions& options) {
  const GpuWhere where{host.rank(), host.size(), options.device};
  if (options.timeout.count() <= 0)
    throw Error(fmt::format("nccl comm on {}: timeout {} ms must be positive", where.text(), options.timeout.count()));
  int devices = 0;
  const cudaError_t counted = cudaGetDeviceCount(&devices);
  if (counted != cudaSuccess)
    throw Error(fmt::format("no CUDA device on {}: cudaGetDeviceCount failed: {} ({}); --backend nccl needs one GPU per "
                            "rank, use --backend gloo here",
                            where.text(), cudaGetErrorString(counted), static_cast<int>(counted)));
  if (options.device < 0 || options.device >= devices)
    throw Error(fmt::format("{} wants CUDA device {} but this host shows {} (check CUDA_VISIBLE_DEVICES and the "
                            "number of ranks per node)",
                            where.text(), options.device, devices));
  check_cuda(cudaSetDevice(options.device), "cudaSetDevice", where);

  // Rank 0's id reaches everyone over the host channel; NCCL's own bootstrap takes it from there.
  ncclUniqueId id{};
  if (host.rank() == 0) check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId", where);
  std::vector<ncclUniqueId> ids(static_cast<size_t>(host.size()));
  host.allgather_host(&id, sizeof id, ids.data());

  auto streams = std::make_shared<Streams>();
  check_cuda(cudaStreamCreateWithFlags(&streams->main, cudaStreamNonBlocking), "cudaStreamCreate", where);
  ncclComm_t comm = nullptr;
  check_nccl(ncclCommInitRank(&comm, host.size(), ids[0], host.rank()), "ncclCommInitRank", where);
  return std::unique_ptr<NcclComm>(new NcclComm(comm, &host, nullptr, std::move(streams), options.device,
                                                options.timeout));
}

NcclComm::NcclComm(ncclComm_t comm, Comm* host, std::unique_ptr<Comm> owned_host, std::shared_ptr<Streams> streams,
                   int device, std::chrono::milliseconds timeout)
    : comm_(comm),
      owned_host_(std::move(owned_host)),
      host_(host),
      streams_(std::move(streams)),
      rank_(host->rank()),
      size_(host->size()),
      device_(device),
      timeout_(timeout) {
  try {
    start();
  } catch (...) {
    release();  // no destructor runs for an object whose constructor threw
    throw;
  }
  streams_->comms.push_back(this);
}

void NcclComm::start() {
  const GpuWhere where{rank_, size_, device_};
  int user_rank = -1;
  check_nccl(ncclCommUserRank(comm_, &user_rank), "ncclCommUserRank", where, comm_);
  if (user_rank != rank_)
    throw Error(fmt::format("nccl comm on {}: NCCL placed this rank at {}, the host comm at {}; the two splits "
                            "disagree",
                            where.text(), user_rank, rank_));
  // Ring transfers get the highest priority so their blocks start as soon as attention
  // blocks retire, instead of queueing behind the whole attention grid.
  int least = 0, greatest = 0;
  check_cuda(cudaDeviceGetStreamPriorityRange(&least, &greatest), "cudaDeviceGetStreamPriorityRange", where);
  check_cuda(cudaStreamCreateWithPriority(&ring_stream_, cudaStreamNonBlocking, greatest), "cudaStreamCreate", where);
  check_cuda(cudaEventCreateWithFlags(&ring_ready_, cudaEventDisableTiming), "cudaEventCreate", where);
}

NcclComm::~NcclComm() {
  std::erase(streams_->comms, this);
  release();
}

void NcclComm::release() {
  // Nothing here can report an error: the comm is going away either way.
  if (comm_ != nullptr) ncclCommDestroy(comm_);
  if (ring_ready_ != nullptr) cudaEventDestroy(ring_ready_);
  if (ring_stream_ != nullptr) cudaStreamDestroy(ring_stream_);
  comm_ = nullptr;
  ring_ready_ = nullptr;
  ring_stream_ = nullptr;
}

cudaStream_t NcclComm::stream() const { return streams_->main; }

std::string NcclComm::where() const { return GpuWhere{rank_, size_, device_}.text(); }

void NcclComm::check_usable() const {
  if (aborted_) throw Error(fmt::format("nccl comm on {} was aborted after an earlier error", where()));
}

std::unique_ptr<Comm> NcclComm::split(int color, int key) {
  check_usable();
  if (color < 0) throw Error(fmt::format("nccl split on {}: color {} must not be negative", where(), color));
  std::unique_ptr<Comm> host_part = host_->split(color, key);
  ncclComm_t part = nullptr;
  check_nccl(ncclCommSplit(comm_, color, key, &part, nullptr), fmt::format("ncclCommSplit (color {})", color),
             {rank_, size_, device_}, comm_);
  Comm* host_view = host_part.get();
  return std::unique_ptr<Comm>(new NcclComm(part, host_view, std::move(host_part), streams_, device_, timeout_));
}

void NcclComm::alltoallv(const void* send, std::span<const int64_t> send_bytes, void* recv,
                         std::span<const int64_t> recv_bytes) {
  check_usable();
  const std::string operation = "alltoallv", here = where();
  check_buffer(operation, here, send, check_counts(operation, here, send_bytes, size_, "send_bytes"), "send");
  check_buffer(operation, here, recv, check_counts(operation, here, recv_bytes, size_, "recv_bytes"), "recv");
  if (send_bytes[rank_] != recv_bytes[rank_])
    throw Error(fmt::format("nccl alltoallv on {}: send_bytes[self] = {} but recv_bytes[self] = {}", here,
                            send_bytes[rank_], recv_bytes[rank_]));
  Group group(operation, {rank_, size_, device_}, comm_);
  int64_t send_offset = 0, recv_offset = 0;
  for (int p = 0; p < size_; ++p) {
    if (send_bytes[p] > 0)
      group.add(ncclSend(at(send, send_offset), static_cast<size_t>(send_bytes[p]), ncclInt8, p, comm_, stream()),
                "ncclSend");
    if (recv_bytes[p] > 0)
      group.add(ncclRecv(at(recv, recv_offset), static_cast<size_t>(recv_bytes[p]), ncclInt8, p, comm_, stream()),
                "ncclRecv");
    send_offset += send_bytes[p];
    recv_offset += recv_bytes[p];
  }
  group.end();
}

void NcclComm::allgatherv(const void* send, int64_t send_bytes, void* recv, std::span<const int64_t> recv_bytes) {
  check_usable();
  const std::string operation = "allgatherv", here = where();
  check_buffer(operation, here, send, send_bytes, "send");
  check_buffer(operation, here, recv, check_counts(operation, here, recv_bytes, size_, "recv_bytes"), "recv");
  if (send_bytes != recv_bytes[rank_])
    throw Error(fmt::format("nccl allgatherv on {}: send_bytes = {} but recv_bytes[self] = {}", here, send_bytes,
                            recv_bytes[rank_]));
  const GpuWhere gpu{rank_, size_, device_};
  const bool equal = std::all_of(recv_bytes.begin(), recv_bytes.end(), [&](int64_t b) { return b == send_bytes; });
  if (equal) {
    if (send_bytes > 0)
      check_nccl(ncclAllGather(send, recv, static_cast<size_t>(send_bytes), ncclInt8, comm_, stream()),
                 "ncclAllGather", gpu, comm_);
    return;
  }
  Group group(operation, gpu, comm_);
  int64_t offset = 0;
  for (int p = 0; p < size_; ++p) {
    // Only the root's send buffer is read; the others pass their own slot.
    if (recv_bytes[p] > 0)
      group.add(ncclBroadcast(p == rank_ ? send : at(recv, offset), at(recv, offset),
                              static_cast<size_t>(recv_bytes[p]), ncclInt8, p, comm_, stream()),
                "ncclBroadcast");
    offset += recv_bytes[p];
  }
  group.end();
}

std::unique_ptr<Request> NcclComm::isend(const void* buf, int64_t bytes, int peer, int tag) {
  return add_ring_op(true, const_cast<void*>(buf), bytes, peer, tag);
}

std::unique_ptr<Request> NcclComm::irecv(void* buf, int64_t bytes, int peer, int tag) {
  return add_ring_op(false, buf, bytes, peer, tag);
}

std::unique_ptr<Request> NcclComm::add_ring_op(bool is_send, void* buf, int64_t bytes, int peer, int tag) {
  check_usable();
  const std::string operation = fmt::format("{} rank {} (tag {})", is_send ? "isend to" : "irecv from", peer, tag);
  if (peer < 0 || peer >= size_)
    throw Error(fmt::format("nccl {} on {}: the peer must be a member, in 0..{}", operation, where(), size_ - 1));
  if (tag < 0) throw Error(fmt::format("nccl {} on {}: the tag must not be negative", operation, where()));
  check_buffer(operation, where(), buf, bytes, "buffer");
  // Re-recorded at every call: the batch starts after all stream work before the last of them.
  check_cuda(cudaEventRecord(ring_ready_, stream()), "cudaEventRecord before " + operation, {rank_, size_, device_});
  if (!pending_) pending_ = std::make_shared<RingBatch>();
  pending_->ops.push_back({is_send, buf, bytes, peer});
  return std::make_unique<RingRequest>(this, pending_);
}

void NcclComm::launch_ring_batch() {
  check_usable();
  const std::shared_ptr<RingBatch> batch = std::move(pending_);
  const GpuWhere gpu{rank_, size_, device_};
  check_cuda(cudaStreamWaitEvent(ring_stream_, ring_ready_, 0), "ordering the ring stream", gpu);
  Group group("ring send/recv", gpu, comm_);
  for (const RingBatch::Op& op : batch->ops) {
    if (op.bytes == 0) continue;
    if (op.is_send)
      group.add(ncclSend(op.buf, static_cast<size_t>(op.bytes), ncclInt8, op.peer, comm_, ring_stream_), "ncclSend");
    else
      group.add(ncclRecv(op.buf, static_cast<size_t>(op.bytes), ncclInt8, op.peer, comm_, ring_stream_), "ncclRecv");
  }
  group.end();
  check_cuda(cudaEventCreateWithFlags(&batch->done, cudaEventDisableTiming), "cudaEventCreate", gpu);
  check_cuda(cudaEventRecord(batch->done, ring_stream_), "cudaEventRecord after the ring transfer", gpu);
  batch->launched = true;
}

void NcclComm::barrier() {
  synchronize();
  host_->barrier();
}

void NcclComm::allgather_host(const void* send, int64_t bytes, void* recv) { host_->allgather_host(send, bytes, recv); }

void NcclComm::check_async_error(const std::string& operation) {
  if (comm_ == nullptr) return;
  ncclResult_t async = ncclSuccess;
  check_nccl(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError", {rank_, size_, device_}, comm_);
  if (async != ncclSuccess && async != ncclInProgress) {
    const std::string last = ncclGetLastError(comm_);
    abort_all();
    throw Error(fmt::format("nccl {} on {} failed: {}; NCCL says: {} (asynchronous error; communicators aborted)",
                            operation, where(), ncclGetErrorString(async), last));
  }
}

void NcclComm::abort_all() {
  // Aborting makes NCCL's kernels return, so the stream and this process can end.
  for (NcclComm* comm : streams_->comms) {
    if (comm->comm_ != nullptr) ncclCommAbort(comm->comm_);
    comm->comm_ = nullptr;
    comm->aborted_ = true;
  }
}

void NcclComm::synchronize() {
  const std::string operation = "waiting for the GPU";
  check_usable();
  const auto start = Clock::now();
  for (;;) {
    const cudaError_t status = cudaStreamQuery(stream());
    if (status == cudaSuccess) return;
    if (status != cudaErrorNotReady) throw_cuda(status, operation, {rank_, size_, device_});
    for (NcclComm* comm : streams_->comms) comm->check_async_error(operation);
    const auto waited = Clock::now() - start;
    if (waited > timeout_) {
      abort_all();
      throw Error(fmt::format("nccl on {}: the GPU did not finish within {} ms: a peer died, is stuck, or never "
                              "joined this collective; communicators aborted",
                              where(), timeout_.count()));
    }
    if (waited > kSpin)
      std::this_thread::sleep_for(kPollSleep);
    else
      std::this_thread::yield();
  }
}

}  // namespace cptune::backends
