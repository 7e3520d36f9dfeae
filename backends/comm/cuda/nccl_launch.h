#pragma once
// Starts the ranks of an NCCL run: the Gloo ranks of launcher.h, each with one GPU and an
// NcclComm built over its Gloo comm (which stays the metadata channel).
#include <functional>
#include <iosfwd>
#include <string>

#include "backends/comm/launcher.h"

namespace cptune::backends {

class Comm;

// CUDA devices this host shows, counted in a forked child: a process that touched CUDA before
// fork() cannot use CUDA in its children, and the local launcher forks the ranks.
struct CudaDevices {
  int count = 0;
  std::string model;  // device 0's name ("NVIDIA H100 80GB HBM3"), for fingerprints and reports
  std::string error;  // why none could be counted (cudaGetDeviceCount's words); empty when counted
};
CudaDevices probe_cuda_devices();

// The number of CUDA devices here. Throws Error unless `world` local ranks (or one rank of an
// outside launch, when `local` is false) can each have a GPU: "no CUDA device: ..." on a
// machine without one.
int check_gpus_for(int world, bool local);

// Like run_ranks(), with an NcclComm as the world: local rank i uses CUDA device i, or device 0
// when the launcher shows each process a single GPU (srun --gpus-per-task=1).
class NcclComm;
int run_nccl_ranks(const RankLaunch& launch, const std::function<int(NcclComm& world)>& body, std::ostream& err);

}  // namespace cptune::backends
