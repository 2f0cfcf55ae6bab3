// The CUDA half of the device layer: device enumeration and memory, over the CUDA runtime.
#include <cuda_runtime.h>

#include "pp/kernels/device.h"

namespace pp::kernels {

bool built_with_cuda() { return true; }

Result<DeviceInfo> cuda_device(int index) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    count = 0;
  }
  if (index < 0 || index >= count) {
    return not_found("cuda:{} does not exist ({} CUDA devices visible)", index, count);
  }
  cudaDeviceProp prop{};
  cudaError_t err = cudaGetDeviceProperties(&prop, index);
  if (err != cudaSuccess) return internal_error("cuda:{}: {}", index, cudaGetErrorString(err));
  DeviceInfo d;
  d.index = index;
  d.name = prop.name;
  d.compute_capability = prop.major * 10 + prop.minor;
  d.multiprocessors = prop.multiProcessorCount;
  int prev = 0;
  cudaGetDevice(&prev);
  size_t free_b = 0, total_b = 0;
  if (cudaSetDevice(index) == cudaSuccess && cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
    d.free_bytes = int64_t(free_b);
    d.total_bytes = int64_t(total_b);
  } else {
    cudaGetLastError();
    d.total_bytes = int64_t(prop.totalGlobalMem);
  }
  cudaSetDevice(prev);
  return d;
}

std::vector<DeviceInfo> cuda_devices() {
  std::vector<DeviceInfo> out;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return out;
  }
  for (int i = 0; i < count; ++i) {
    auto d = cuda_device(i);
    if (d.ok()) out.push_back(*d);
  }
  return out;
}

}  // namespace pp::kernels
