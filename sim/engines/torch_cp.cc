// PyTorch's context parallelism, torch.distributed.tensor.experimental.context_parallel, as TorchTitan
// drives it. Read in torch/distributed/tensor/experimental/_context_parallel/_attention.py and
// _load_balancer.py of PyPI torch 2.15.0 (pytorch/pytorch), and TorchTitan
// (pytorch/torchtitan @b5bcd76: torchtitan/config/configs.py, distributed/context_parallel/api.py).
// _cp_options defaults: rotate_method ALL_GATHER, enable_load_balance True; set_rotate_method
// ("allgather" | "alltoall"); _AllToAllRotater shifts K/V one rank (the P2P ring), _AllGatherRotater
// all-gathers them; the head-tail load balancer (zigzag, 2P chunks) applies when S % 2P == 0.
#include "sim/engines/torch_cp.h"

#include <fmt/format.h>

#include "sim/engines/rules.h"

namespace cptune::sim::engines {
namespace {

constexpr std::string_view kAttention =
    "pytorch/pytorch (PyPI torch 2.15.0), torch/distributed/tensor/experimental/_context_parallel/_attention.py";
constexpr std::string_view kBalancer =
    "pytorch/pytorch (PyPI torch 2.15.0), torch/distributed/tensor/experimental/_context_parallel/_load_balancer.py";

std::string rule(const LayoutChoice& c, const ShapeView& s) {
  const int64_t P = world(c);
  // The SDPA ring takes is_causal only ("attn_bias is not supported yet"); the aten flash,
  // efficient and cuDNN ops it wraps take no enable_gqa, so K/V come with the query's heads.
  std::string mask;
  if (c.strategy == Strategy::ring_zigzag)  // "Load balancing requires `is_causal=True`."
    mask = mask_in(s, {MaskKind::causal}, "the head-tail load balancer requires is_causal=True", kAttention);
  else
    mask = mask_in(s, {MaskKind::full, MaskKind::causal}, "attn_bias is not supported yet", kAttention);
  const std::string seq = c.strategy == Strategy::ring_zigzag ? seq_multiple(s, 2 * P, kBalancer)  // head-tail chunks
                                                              : seq_multiple(s, P, kAttention);
  return first_of({mask, no_gqa(s, kAttention), one_sequence(s, "context_parallel (SDPA)", kAttention), seq});
}

std::string config(const LayoutChoice& c, const ShapeView& s, ConfigFormat f) {
  const int64_t P = world(c);
  const std::string_view rotate = c.strategy == Strategy::allgather_kv ? "allgather" : "alltoall";
  const bool balance = c.strategy == Strategy::ring_zigzag;
  if (f == ConfigFormat::args)  // TorchTitan: the degree and its load balancer; the rotate method is torch's
    return fmt::format("--parallelism.context_parallel_degree {} --parallelism.context_parallel_load_balancer {}", P,
                       balance ? "headtail" : "None");
  if (f == ConfigFormat::json)
    return fmt::format("{{\"context_parallel_degree\": {}, \"rotate_method\": \"{}\", \"enable_load_balance\": {}}}", P,
                       rotate, balance ? "true" : "false");
  // context_parallel picks the head-tail balancer by itself when enable_load_balance and S % 2P == 0,
  // and a non-causal call with it on raises: set it for every layout.
  return fmt::format(
      "set_rotate_method(\"{}\"); _cp_options.enable_load_balance = {}; "
      "with context_parallel(cp_mesh, buffers=[q, k, v], buffer_seq_dims=[2, 2, 2]): "
      "F.scaled_dot_product_attention(q, k, v, is_causal={})  "
      "# from torch.distributed.tensor.experimental import context_parallel; "
      "from torch.distributed.tensor.experimental._attention import set_rotate_method, _cp_options; cp_mesh of {} ranks",
      rotate, balance ? "True" : "False", is_causal(s) ? "True" : "False", P);
}

}  // namespace

const Profile& torch_cp() {
  static const Profile p{"torch-cp",
                         "pytorch/pytorch (PyPI torch 2.15.0): torch/distributed/tensor/experimental/_context_parallel/"
                         "{_attention,_load_balancer}.py; pytorch/torchtitan @b5bcd76: torchtitan/config/configs.py, "
                         "torchtitan/distributed/context_parallel/api.py",
                         {Strategy::ring, Strategy::ring_zigzag, Strategy::allgather_kv},
                         false,
                         rule,
                         [](const LayoutChoice&, const ShapeView&) { return std::string(); },  // _templated_ring_attention_backward
                         config,
                         {}};
  return p;
}

}  // namespace cptune::sim::engines
