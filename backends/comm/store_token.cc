#include "backends/comm/store_token.h"

#include <cstdlib>
#include <string_view>

#include "core/error.h"

namespace cptune::backends {
namespace {

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

}  // namespace

StoreToken store_token_from_environment() {
  if (const char* own = std::getenv("CPTUNE_STORE_TOKEN")) {
    if (!*own) throw Error("CPTUNE_STORE_TOKEN is set but empty; give every rank the same non-empty secret");
    return {own, "CPTUNE_STORE_TOKEN"};
  }
  // The variable's name goes into the token: equal ids of two launchers never match.
  // torchrun's id is "none" unless --rdzv-id (or --standalone) gave one: the agent's port then
  // tells two jobs apart.
  const std::string run_id = env("TORCHELASTIC_RUN_ID");
  if (!run_id.empty())
    return {"TORCHELASTIC_RUN_ID=" + run_id + ";MASTER_PORT=" + env("MASTER_PORT"), "TORCHELASTIC_RUN_ID"};
  const std::string slurm_job = env("SLURM_JOB_ID");
  if (!slurm_job.empty())
    return {"SLURM_JOB_ID=" + slurm_job + "." + env("SLURM_STEP_ID"), "SLURM_JOB_ID and SLURM_STEP_ID"};
  for (const char* name : {"OMPI_MCA_orte_precondition_transports", "PMIX_NAMESPACE"}) {
    const std::string id = env(name);
    if (!id.empty()) return {std::string(name) + "=" + id, name};
  }
  throw Error(
      "env:// rendezvous: no shared token for the store: set CPTUNE_STORE_TOKEN to the same secret on every rank "
      "(under torchrun --rdzv-id, srun or mpirun one is derived from the job id)");
}

}  // namespace cptune::backends
