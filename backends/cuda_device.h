#pragma once
// The executor's device for NCCL runs (device.h): buffers in the rank's GPU memory, copies and
// the CUDA attention kernel enqueued on the NcclComm's stream, so they order with its
// collectives without host syncs; synchronize() waits within the comm's timeout.
#include <memory>

#include "backends/device.h"

namespace cptune::backends {

class Comm;

// The DeviceFactory NcclComm registers for "nccl": `comm` must be an NcclComm, and it (or the
// comm it was split from) must outlive the device.
std::unique_ptr<Device> make_cuda_device(Comm& comm);

}  // namespace cptune::backends
