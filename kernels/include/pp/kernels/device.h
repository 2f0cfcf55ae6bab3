// The device layer's plain-C++ face: which compute devices this process can use and how much
// memory they have. Implemented over the CUDA runtime when pp is built with CUDA, and as "no
// GPUs" otherwise, so libpp and the tools never include a CUDA header.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pp/status.h"

namespace pp::kernels {

struct DeviceInfo {
  int index = -1;              // CUDA ordinal; -1 for the CPU
  std::string name;            // "NVIDIA H200", or the CPU model
  int compute_capability = 0;  // 90 for sm_90; 0 for the CPU
  int64_t total_bytes = 0;     // device memory (host memory for the CPU)
  int64_t free_bytes = 0;      // free now
  int multiprocessors = 0;     // SMs; CPU: cores
};

// True when pp was built with CUDA support (whether or not a GPU is present).
bool built_with_cuda();
// The CUDA devices visible to this process (empty without CUDA or without a GPU).
std::vector<DeviceInfo> cuda_devices();
// One CUDA device by ordinal; kNotFound when it does not exist.
Result<DeviceInfo> cuda_device(int index);
// The host as a device: name from /proc/cpuinfo, memory from /proc/meminfo.
DeviceInfo cpu_device();

}  // namespace pp::kernels
