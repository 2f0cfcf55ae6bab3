// The CPU half of the device layer (always built), and the "no CUDA" answers when pp is built
// without the CUDA backend.
#include <unistd.h>

#include <fstream>
#include <sstream>
#include <string>

#include "pp/kernels/device.h"

namespace pp::kernels {

DeviceInfo cpu_device() {
  DeviceInfo d;
  d.index = -1;
  d.name = "cpu";
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) d.name = line.substr(colon + 2);
      break;
    }
  }
  std::ifstream meminfo("/proc/meminfo");
  for (std::string line; std::getline(meminfo, line);) {
    std::istringstream is(line);
    std::string key;
    int64_t kib = 0;
    is >> key >> kib;
    if (key == "MemTotal:") d.total_bytes = kib * 1024;
    if (key == "MemAvailable:") d.free_bytes = kib * 1024;
  }
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  d.multiprocessors = n > 0 ? int(n) : 1;
  return d;
}

#if !defined(PP_HAVE_CUDA)
bool built_with_cuda() { return false; }
std::vector<DeviceInfo> cuda_devices() { return {}; }
Result<DeviceInfo> cuda_device(int index) {
  return not_found("cuda:{} requested but pp was built without CUDA", index);
}
#endif

}  // namespace pp::kernels
