#include "tuner/fingerprint.h"

#include <sqlite3.h>

#include <fstream>

#include <Eigen/Core>

#include "backends/kernels/cpu_isa.h"
#include "cptune/version.h"
#include "db/local_fingerprint.h"

#ifdef CPTUNE_HAVE_CUDA
#include <nccl.h>

#include "backends/comm/cuda/nccl_launch.h"
#endif

namespace cptune::cli {

std::string cpu_model_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    std::string name = line.substr(colon + 1);
    name.erase(0, name.find_first_not_of(" \t"));
    if (!name.empty()) return name;
  }
  return "cpu";
}

db::Fingerprint local_fingerprint(const std::string& backend, int64_t world, int64_t ranks_per_node) {
  db::Fingerprint fp;
  fp.backend = backend;
  fp.device_model = db::local_device_model(backend);  // "cpu" for gloo: one name for tune, lookup and the ABI
  fp.cluster = Cluster{world, ranks_per_node};
  // Gloo's Debian build reports no version of its own beyond its package (0.5.0 snapshot).
  fp.library_versions = "gloo 0.5.0; eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." +
                        std::to_string(EIGEN_MAJOR_VERSION) + "." + std::to_string(EIGEN_MINOR_VERSION) + "; sqlite " +
                        sqlite3_libversion();
  // CPU ranks compute at the speed of the kernels' instruction-set variant (cpu_isa.h).
  // The CPU model and the kernels' variant scope CPU measurements; they are versions here, so a
  // lookup by device name "cpu" finds them.
  if (backend != "nccl")
    fp.library_versions += "; cpu kernels " + std::string(backends::to_string(backends::active_cpu_isa())) +
                           "; host " + cpu_model_name();
  fp.cptune_version = CPTUNE_VERSION_STRING;
#ifdef CPTUNE_HAVE_CUDA
  if (backend == "nccl") {  // the GPU, not the host CPU, is what an NCCL measurement depends on
    const backends::CudaDevices devices = backends::probe_cuda_devices();
    if (!devices.model.empty()) fp.device_model = devices.model;
    fp.library_versions = "nccl " + std::to_string(NCCL_MAJOR) + "." + std::to_string(NCCL_MINOR) + "." +
                          std::to_string(NCCL_PATCH) + "; " + fp.library_versions;
  }
#endif
  return fp;
}

}  // namespace cptune::cli
