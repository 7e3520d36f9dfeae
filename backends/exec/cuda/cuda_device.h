#pragma once
// The executor's device for NCCL runs (device.h): buffers in the rank's GPU memory, copies and
// the CUDA attention kernel enqueued on the NcclComm's stream, so they order with its
// collectives without host syncs; synchronize() waits within the comm's timeout.
#include <memory>

#include "backends/exec/device.h"

namespace cptune::backends {

class NcclComm;

// The GPU of an NcclComm's rank; the comm (or the comm it was split from) must outlive the device.
std::unique_ptr<Device> make_cuda_device(NcclComm& comm);

}  // namespace cptune::backends
