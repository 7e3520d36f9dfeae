#include "tuner/fingerprint.h"

#include <sqlite3.h>

#include <Eigen/Core>

#include "backends/kernels/cpu_isa.h"
#include "cptune/version.h"
#include "db/local_fingerprint.h"

#ifdef CPTUNE_HAVE_CUDA
#include <nccl.h>
#endif

namespace cptune::tuner {

db::Fingerprint local_fingerprint(const std::string& backend, int64_t world, int64_t ranks_per_node) {
  db::Fingerprint fp = db::local_hardware_fingerprint(backend, world, ranks_per_node);
  // Gloo's Debian build reports no version of its own beyond its package (0.5.0 snapshot).
  fp.library_versions = "gloo 0.5.0; eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." +
                        std::to_string(EIGEN_MAJOR_VERSION) + "." + std::to_string(EIGEN_MINOR_VERSION) + "; sqlite " +
                        sqlite3_libversion();
  // CPU ranks compute at the speed of the kernels' instruction-set variant (cpu_isa.h). The CPU
  // model and the variant scope CPU measurements; they are versions here, so a lookup by device
  // name "cpu" finds them.
  if (backend != "nccl")
    fp.library_versions += "; cpu kernels " + std::string(backends::to_string(backends::active_cpu_isa())) +
                           "; host " + db::cpu_model_name();
#ifdef CPTUNE_HAVE_CUDA
  if (backend == "nccl")
    fp.library_versions = "nccl " + std::to_string(NCCL_MAJOR) + "." + std::to_string(NCCL_MINOR) + "." +
                          std::to_string(NCCL_PATCH) + "; " + fp.library_versions;
#endif
  fp.cptune_version = CPTUNE_VERSION_STRING;
  return fp;
}

}  // namespace cptune::tuner
