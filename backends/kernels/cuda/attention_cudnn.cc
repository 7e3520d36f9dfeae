#include "backends/kernels/cuda/attention_cudnn.h"

#include <cudnn_frontend.h>
#include <dlfcn.h>
#include <fmt/format.h>

#include <array>
#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "core/error.h"

// The frontend's dynamic loading (NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING) finds every cuDNN symbol
// through this handle, which the program owns.
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}

namespace cptune::backends {
namespace fe = cudnn_frontend;
namespace {

void load_cudnn() {
  static std::once_flag once;
  std::call_once(once, [] {
    for (const char* name : {"libcudnn.so.9", CPTUNE_CUDNN_LIBRARY})
      if ((fe::cudnn_dlhandle = dlopen(name, RTLD_NOW | RTLD_GLOBAL))) return;
  });
  if (!fe::cudnn_dlhandle)
    throw Error(fmt::format("cuDNN attention: cannot load libcudnn.so.9 (nor {}); put cuDNN 9 on LD_LIBRARY_PATH "
                            "(PyTorch's nvidia/cudnn/lib has it) or use cptune's own kernel",
                            CPTUNE_CUDNN_LIBRARY));
}

void check_cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    throw Error(fmt::format("cuDNN attention: {} failed: {}", what, cudaGetErrorString(status)));
}

void check_fe(fe::error_t status, const CudnnGraphKey& key, const char* step) {
  if (status.is_bad())
    throw Error(fmt::format("cuDNN attention: {} refused the graph {}: {}; use cptune's own kernel for this shape",
                            step, to_string(key), status.get_message()));
}

fe::DataType_t io_type(DType dtype) { return dtype == DType::fp16 ? fe::DataType_t::HALF : fe::DataType_t::BFLOAT16; }

// Per-call metadata tensors, in this order in one device buffer: seq_len_q, seq_len_kv (int32, b
// each, padded to 8 bytes), then ragged offsets of Q, K, V, O, LSE (int64, b + 1 each).
enum Meta { kSeqQ, kSeqKv, kOffQ, kOffK, kOffV, kOffO, kOffLse, kMetaCount };

struct Graph {
  std::shared_ptr<fe::graph::Graph> graph;
  std::shared_ptr<fe::graph::Tensor_attributes> meta[kMetaCount];
  std::shared_ptr<fe::graph::Tensor_attributes> q, k, v, o, lse, d_out, dq, dk, dv;
  int64_t workspace_bytes = 0;
};

int64_t meta_bytes(int64_t b, int m) { return m <= kSeqKv ? (b * 4 + 7) / 8 * 8 : (b + 1) * 8; }

// A THD tensor of `heads` heads out of a row of `row_elems` elements: [b, heads, s, dim].
std::shared_ptr<fe::graph::Tensor_attributes> thd(fe::graph::Graph& g, const char* name, int64_t b, int64_t heads,
                                                  int64_t s, int64_t dim, int64_t row_elems,
                                                  const std::shared_ptr<fe::graph::Tensor_attributes>& ragged) {
  return g.tensor(fe::graph::Tensor_attributes()
                      .set_name(name)
                      .set_dim({b, heads, s, dim})
                      .set_stride({s * row_elems, dim, row_elems, 1})
                      .set_ragged_offset(ragged));
}

void set_band(const CudnnDiagonal& d, auto& options) {
  if (d.full()) return;
  options.set_diagonal_alignment(d.bottom_right ? fe::DiagonalAlignment_t::BOTTOM_RIGHT
                                                : fe::DiagonalAlignment_t::TOP_LEFT);
  if (d.left_bound) options.set_diagonal_band_left_bound(static_cast<int>(*d.left_bound));
  if (d.right_bound) options.set_diagonal_band_right_bound(static_cast<int>(*d.right_bound));
}

Graph build_graph(const CudnnGraphKey& key, cudnnHandle_t handle) {
  Graph out;
  out.graph = std::make_shared<fe::graph::Graph>();
  fe::graph::Graph& g = *out.graph;
  g.set_io_data_type(io_type(key.dtype))
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  const int64_t b = key.batch, sq = key.q_tokens, skv = key.kv_tokens;
  const char* meta_names[kMetaCount] = {"seq_len_q", "seq_len_kv", "ragged_q", "ragged_k",
                                        "ragged_v",  "ragged_o",   "ragged_lse"};
  for (int m = 0; m < kMetaCount; ++m) {
    const int64_t n = m <= kSeqKv ? b : b + 1;
    out.meta[m] = g.tensor(fe::graph::Tensor_attributes()
                               .set_name(meta_names[m])
                               .set_dim({n, 1, 1, 1})
                               .set_stride({1, 1, 1, 1})
                               .set_data_type(m <= kSeqKv ? fe::DataType_t::INT32 : fe::DataType_t::INT64));
  }
  out.q = thd(g, "Q", b, key.q_heads, sq, key.head_dim, key.q_row_elems, out.meta[kOffQ]);
  out.k = thd(g, "K", b, key.kv_heads, skv, key.head_dim, key.k_row_elems, out.meta[kOffK]);
  out.v = thd(g, "V", b, key.kv_heads, skv, key.v_head_dim, key.v_row_elems, out.meta[kOffV]);
  const int64_t lse_row = key.q_row_elems / key.head_dim;  // all local q heads
  if (!key.backward) {
    auto options = fe::graph::SDPA_attributes()
                       .set_name("cptune_sdpa")
                       .set_generate_stats(true)
                       .set_attn_scale(key.scale)
                       .set_padding_mask(true)
                       .set_seq_len_q(out.meta[kSeqQ])
                       .set_seq_len_kv(out.meta[kSeqKv]);
    set_band(key.diagonal, options);
    auto [o, lse] = g.sdpa(out.q, out.k, out.v, options);
    o->set_output(true)
        .set_dim({b, key.q_heads, sq, key.v_head_dim})
        .set_stride({sq * key.o_row_elems, key.v_head_dim, key.o_row_elems, 1})
        .set_ragged_offset(out.meta[kOffO]);
    lse->set_output(true)
        .set_data_type(fe::DataType_t::FLOAT)
        .set_dim({b, key.q_heads, sq, 1})
        .set_stride({sq * lse_row, 1, lse_row, 1})
        .set_ragged_offset(out.meta[kOffLse]);
    out.o = o;
    out.lse = lse;
  } else {
    out.o = thd(g, "O", b, key.q_heads, sq, key.v_head_dim, key.o_row_elems, out.meta[kOffO]);
    out.d_out = thd(g, "dO", b, key.q_heads, sq, key.v_head_dim, key.o_row_elems, out.meta[kOffO]);
    out.lse = g.tensor(fe::graph::Tensor_attributes()
                           .set_name("LSE")
                           .set_dim({b, key.q_heads, sq, 1})
                           .set_stride({sq * lse_row, 1, lse_row, 1})
                           .set_data_type(fe::DataType_t::FLOAT)
                           .set_ragged_offset(out.meta[kOffLse]));
    auto options = fe::graph::SDPA_backward_attributes()
                       .set_name("cptune_sdpa_backward")
                       .set_attn_scale(key.scale)
                       .set_padding_mask(true)
                       .set_seq_len_q(out.meta[kSeqQ])
                       .set_seq_len_kv(out.meta[kSeqKv]);
    set_band(key.diagonal, options);
    auto [dq, dk, dv] = g.sdpa_backward(out.q, out.k, out.v, out.o, out.d_out, out.lse, options);
    dq->set_output(true)
        .set_dim({b, key.q_heads, sq, key.head_dim})
        .set_stride({sq * key.q_row_elems, key.head_dim, key.q_row_elems, 1})
        .set_ragged_offset(out.meta[kOffQ]);
    dk->set_output(true)
        .set_dim({b, key.kv_heads, skv, key.head_dim})
        .set_stride({skv * key.k_row_elems, key.head_dim, key.k_row_elems, 1})
        .set_ragged_offset(out.meta[kOffK]);
    dv->set_output(true)
        .set_dim({b, key.kv_heads, skv, key.v_head_dim})
        .set_stride({skv * key.v_row_elems, key.v_head_dim, key.v_row_elems, 1})
        .set_ragged_offset(out.meta[kOffV]);
    out.dq = dq;
    out.dk = dk;
    out.dv = dv;
  }
  check_fe(g.validate(), key, "validate");
  check_fe(g.build_operation_graph(handle), key, "build_operation_graph");
  check_fe(g.create_execution_plans({fe::HeurMode_t::A}), key, "create_execution_plans");
  check_fe(g.check_support(handle), key, "check_support");
  check_fe(g.build_plans(handle), key, "build_plans");
  check_fe(g.get_workspace_size(out.workspace_bytes), key, "get_workspace_size");
  return out;
}

}  // namespace

struct CudnnAttention::Impl {
  cudaStream_t stream = nullptr;
  cudnnHandle_t handle = nullptr;
  std::unordered_map<CudnnGraphKey, Graph, CudnnGraphKeyHash> graphs;
  void* meta = nullptr;
  int64_t meta_capacity = 0;
  void* workspace = nullptr;
  int64_t workspace_capacity = 0;

  static void grow(void*& buffer, int64_t& capacity, int64_t bytes, const char* what) {
    if (bytes <= capacity) return;
    if (buffer) check_cuda(cudaFree(buffer), what);  // waits for work still using it
    buffer = nullptr;
    capacity = 0;
    check_cuda(cudaMalloc(&buffer, static_cast<size_t>(bytes)), what);
    capacity = bytes;
  }

  const Graph& graph_for(const CudnnGraphKey& key) {
    auto it = graphs.find(key);
    if (it == graphs.end()) it = graphs.emplace(key, build_graph(key, handle)).first;
    return it->second;
  }

  // Copies the call's lengths and offsets to the device; returns each tensor's device address.
  std::array<void*, kMetaCount> upload(const CudnnCall& call, const CudnnTensors& t) {
    const CudnnRaggedOffsets r = cudnn_ragged_offsets(call, t);
    const int64_t b = static_cast<int64_t>(call.entries.size());
    std::vector<char> host;
    std::array<void*, kMetaCount> at{};
    std::array<int64_t, kMetaCount> start{};
    for (int m = 0; m < kMetaCount; ++m) {
      start[m] = static_cast<int64_t>(host.size());
      host.resize(host.size() + static_cast<size_t>(meta_bytes(b, m)));
    }
    auto put = [&](int m, const auto& values) {
      std::memcpy(host.data() + start[m], values.data(), values.size() * sizeof(values[0]));
    };
    put(kSeqQ, r.seq_len_q);
    put(kSeqKv, r.seq_len_kv);
    put(kOffQ, r.q);
    put(kOffK, r.k);
    put(kOffV, r.v);
    put(kOffO, r.o);
    put(kOffLse, r.lse);
    grow(meta, meta_capacity, static_cast<int64_t>(host.size()), "cudaMalloc of the call metadata");
    // From pageable memory: returns once `host` is read, so it may go out of scope; ordered on the
    // stream after the previous call's kernels, which read the same device buffer.
    check_cuda(cudaMemcpyAsync(meta, host.data(), host.size(), cudaMemcpyHostToDevice, stream),
               "cudaMemcpyAsync of the call metadata");
    for (int m = 0; m < kMetaCount; ++m) at[m] = static_cast<char*>(meta) + start[m];
    return at;
  }

  void run(const Graph& g, std::unordered_map<std::shared_ptr<fe::graph::Tensor_attributes>, void*>& pack,
           const std::array<void*, kMetaCount>& meta_at, const CudnnGraphKey& key) {
    for (int m = 0; m < kMetaCount; ++m) pack[g.meta[m]] = meta_at[m];
    grow(workspace, workspace_capacity, g.workspace_bytes, "cudaMalloc of the cuDNN workspace");
    check_fe(g.graph->execute(handle, pack, workspace), key, "execute");
  }
};

CudnnAttention::CudnnAttention(cudaStream_t stream) : impl_(std::make_unique<Impl>()) {
  load_cudnn();
  impl_->stream = stream;
  if (fe::detail::create_handle(&impl_->handle) != CUDNN_STATUS_SUCCESS)
    throw Error("cuDNN attention: cudnnCreate failed (no GPU, or a driver too old for cuDNN 9)");
  if (fe::detail::set_stream(impl_->handle, stream) != CUDNN_STATUS_SUCCESS)
    throw Error("cuDNN attention: cudnnSetStream failed");
}

CudnnAttention::~CudnnAttention() {
  if (impl_->handle) fe::detail::destroy_handle(impl_->handle);
  if (impl_->meta) cudaFree(impl_->meta);
  if (impl_->workspace) cudaFree(impl_->workspace);
}

int64_t CudnnAttention::graphs_built() const { return static_cast<int64_t>(impl_->graphs.size()); }

namespace {
// The slice's first head inside a row of all local heads.
const void* at_head(const void* p, int64_t head, int64_t dim, DType dtype) {
  return static_cast<const char*>(p) + head * dim * dtype_bytes(dtype);
}
void* at_head(void* p, int64_t head, int64_t dim, DType dtype) {
  return static_cast<char*>(p) + head * dim * dtype_bytes(dtype);
}
}  // namespace

void CudnnAttention::forward(const CudnnCall& call, const CudnnHeadSlice& s, const CudnnTensors& t,
                             const CudnnForwardTensors& x) {
  if (call.entries.empty()) return;
  check_cudnn_tensors(t);
  const CudnnGraphKey key = cudnn_graph_key(call, s, t, false);
  const Graph& g = impl_->graph_for(key);
  std::unordered_map<std::shared_ptr<fe::graph::Tensor_attributes>, void*> pack = {
      {g.q, const_cast<void*>(at_head(x.q, s.q_head, t.head_dim, t.dtype))},
      {g.k, const_cast<void*>(at_head(x.k, s.kv_head, t.head_dim, t.dtype))},
      {g.v, const_cast<void*>(at_head(x.v, s.kv_head, t.v_head_dim, t.dtype))},
      {g.o, at_head(x.o, s.q_head, t.v_head_dim, t.dtype)},
      {g.lse, x.lse + s.q_head}};
  impl_->run(g, pack, impl_->upload(call, t), key);
}

void CudnnAttention::backward(const CudnnCall& call, const CudnnHeadSlice& s, const CudnnTensors& t,
                              const CudnnBackwardTensors& x) {
  if (call.entries.empty()) return;
  check_cudnn_tensors(t);
  const CudnnGraphKey key = cudnn_graph_key(call, s, t, true);
  const Graph& g = impl_->graph_for(key);
  std::unordered_map<std::shared_ptr<fe::graph::Tensor_attributes>, void*> pack = {
      {g.q, const_cast<void*>(at_head(x.q, s.q_head, t.head_dim, t.dtype))},
      {g.k, const_cast<void*>(at_head(x.k, s.kv_head, t.head_dim, t.dtype))},
      {g.v, const_cast<void*>(at_head(x.v, s.kv_head, t.v_head_dim, t.dtype))},
      {g.o, const_cast<void*>(at_head(x.o, s.q_head, t.v_head_dim, t.dtype))},
      {g.d_out, const_cast<void*>(at_head(x.d_out, s.q_head, t.v_head_dim, t.dtype))},
      {g.lse, const_cast<float*>(x.lse + s.q_head)},
      {g.dq, at_head(x.dq, s.q_head, t.head_dim, t.dtype)},
      {g.dk, at_head(x.dk, s.kv_head, t.head_dim, t.dtype)},
      {g.dv, at_head(x.dv, s.kv_head, t.v_head_dim, t.dtype)}};
  impl_->run(g, pack, impl_->upload(call, t), key);
}

}  // namespace cptune::backends
