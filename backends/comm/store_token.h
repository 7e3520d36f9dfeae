#pragma once
// The shared secret every client of the env:// store presents (tcp_store.h). Every rank of one
// job must find the same one in its environment, and another job (or a stranger on the network)
// a different one.
#include <string>

namespace cptune::backends {

struct StoreToken {
  std::string value;   // never printed
  std::string source;  // the variable it came from, for messages
};

// CPTUNE_STORE_TOKEN when set (the one to use where others on the network can read the job's
// environment or guess its id); else derived from the launcher's job: TORCHELASTIC_RUN_ID with
// MASTER_PORT (torchrun; its id is "none" without --rdzv-id), SLURM_JOB_ID with SLURM_STEP_ID (srun),
// OMPI_MCA_orte_precondition_transports (mpirun's random per-job key) or PMIX_NAMESPACE. Throws
// Error saying to set CPTUNE_STORE_TOKEN when none is there or it is empty. A derived token
// keeps strays and other jobs out; job ids are not secret (squeue, ps), so only
// CPTUNE_STORE_TOKEN keeps out someone who sets out to join.
StoreToken store_token_from_environment();

}  // namespace cptune::backends
