// Choosing a stage backend by device: the one place that knows there are two.
#include "pp/pipeline/stage-backend.h"

#include "pp/kernels/device.h"

namespace pp::pipeline {

Result<int> parse_device(const std::string& d) {
  if (d == "cpu") return -1;
  if (d == "cuda") return 0;
  if (d.rfind("cuda:", 0) == 0 && d.size() > 5 &&
      d.find_first_not_of("0123456789", 5) == std::string::npos && d.size() < 10) {
    return std::stoi(d.substr(5));
  }
  return invalid_argument("bad device '{}': expected cpu, cuda or cuda:N", d);
}

Result<kernels::DeviceInfo> device_info(const std::string& device) {
  PP_ASSIGN_OR_RETURN(const int index, parse_device(device));
  if (index < 0) return kernels::cpu_device();
  if (!kernels::built_with_cuda()) {
    return unimplemented("device '{}': this pp-stage was built without CUDA", device);
  }
  return kernels::cuda_device(index);
}

Result<std::unique_ptr<StageBackend>> make_stage_backend(const StageSpec& spec,
                                                         const StageEnv& env) {
  if (spec.rank < 0 || size_t(spec.rank) >= spec.devices.size()) {
    return invalid_argument("rank {} of a stage group of {} devices", spec.rank,
                            spec.devices.size());
  }
  PP_ASSIGN_OR_RETURN(const int device, parse_device(spec.device()));
  for (const std::string& d : spec.devices) {
    PP_ASSIGN_OR_RETURN(const int other, parse_device(d));
    if ((other < 0) != (device < 0)) {
      return invalid_argument("stage {} mixes CPU and GPU ranks ({} and {})", spec.stage,
                              spec.device(), d);
    }
  }
  return device < 0 ? make_cpu_stage(spec, env) : make_gpu_stage(spec, env);
}

}  // namespace pp::pipeline
