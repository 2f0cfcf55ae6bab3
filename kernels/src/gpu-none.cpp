// gpu.h in a build without CUDA: nothing is available, and every call says so in one line
// (kUnimplemented), so a tool asked for a GPU fails clearly instead of crashing.
#if !defined(PP_HAVE_CUDA)

#include "pp/kernels/gpu.h"

namespace pp::kernels::gpu {
namespace {
Status no_cuda() { return unimplemented("pp was built without CUDA: no GPU backend"); }
}  // namespace

bool available() { return false; }
Status set_device(int) { return no_cuda(); }
Result<MemInfo> mem_info() { return no_cuda(); }

Result<DeviceBuffer> DeviceBuffer::allocate(size_t) { return no_cuda(); }
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  std::swap(p_, o.p_);
  std::swap(bytes_, o.bytes_);
  return *this;
}
DeviceBuffer::~DeviceBuffer() = default;
Result<HostBuffer> HostBuffer::allocate(size_t) { return no_cuda(); }
HostBuffer& HostBuffer::operator=(HostBuffer&& o) noexcept {
  std::swap(p_, o.p_);
  std::swap(bytes_, o.bytes_);
  return *this;
}
HostBuffer::~HostBuffer() = default;

Result<Stream> Stream::create(bool) { return no_cuda(); }
Stream& Stream::operator=(Stream&& o) noexcept {
  std::swap(s_, o.s_);
  return *this;
}
Stream::~Stream() = default;
Status Stream::synchronize() { return no_cuda(); }

Result<Event> Event::create(bool) { return no_cuda(); }
Event& Event::operator=(Event&& o) noexcept {
  std::swap(e_, o.e_);
  return *this;
}
Event::~Event() = default;
Status Event::record(Stream&) { return no_cuda(); }
Status Event::wait_on(Stream&) const { return no_cuda(); }
Status Event::synchronize() const { return no_cuda(); }
Result<bool> Event::done() const { return no_cuda(); }
Result<float> Event::elapsed_since(const Event&) const { return no_cuda(); }

Status Graph::begin_capture(Stream&) { return no_cuda(); }
Result<Graph> Graph::end_capture(Stream&) { return no_cuda(); }
Graph& Graph::operator=(Graph&& o) noexcept {
  std::swap(g_, o.g_);
  std::swap(exec_, o.exec_);
  return *this;
}
Graph::~Graph() = default;
Status Graph::launch(Stream&) const { return no_cuda(); }

Status copy_async(void*, const void*, size_t, Stream&) { return no_cuda(); }
Status zero_async(void*, size_t, Stream&) { return no_cuda(); }
Status copy_2d_async(void*, size_t, const void*, size_t, size_t, size_t, Stream&) {
  return no_cuda();
}
Status upload_bf16(Bf16*, const float*, size_t) { return no_cuda(); }
Status busy_wait(int64_t, Stream&) { return no_cuda(); }
Status fill_random(Bf16*, size_t, uint64_t, float, float, Stream&) { return no_cuda(); }
Status embedding(const Bf16*, const int32_t*, Bf16*, int64_t, int64_t, int64_t, Stream&) {
  return no_cuda();
}
Status rms_norm(const Bf16*, Bf16*, const Bf16*, Bf16*, int64_t, int64_t, float, Stream&) {
  return no_cuda();
}
Status rope_kv_write(const RopeKvArgs&, Stream&) { return no_cuda(); }
size_t attention_workspace_bytes(const AttentionArgs&) { return 0; }
Status attention(const AttentionArgs&, Stream&) { return no_cuda(); }
Status swiglu(const Bf16*, Bf16*, int64_t, int64_t, Stream&) { return no_cuda(); }
Status apply_penalties(float*, int64_t, int64_t, const PenaltyEntry*, int64_t, const PenaltyRow*,
                       Stream&) {
  return no_cuda();
}
Status apply_logit_constraints(float*, int64_t, int64_t, const LogitBias*, int64_t, const uint32_t*,
                               const int32_t*, int64_t, Stream&) {
  return no_cuda();
}
Status sample(const SampleArgs&, Stream&) { return no_cuda(); }

struct Blas::Impl {};
Blas::Blas() = default;
Blas::~Blas() = default;
Result<std::unique_ptr<Blas>> Blas::create() { return no_cuda(); }
Status Blas::linear(const LinearArgs&, Stream&) { return no_cuda(); }
Status Blas::reserve_fp8(int64_t, int64_t, int64_t, int64_t) { return no_cuda(); }
Result<LinearPath> Blas::path_for(const LinearArgs&) { return no_cuda(); }
void Blas::set_log(std::function<void(const std::string&)>) {}
void Blas::set_fp8_activations(bool) {}
void Blas::set_programmatic_launch(bool) {}
Status quantize_fp8_rows(const Bf16*, void*, float*, int64_t, int64_t, Stream&) {
  return no_cuda();
}

Result<NcclId> NcclComm::unique_id() { return no_cuda(); }
Result<std::unique_ptr<NcclComm>> NcclComm::init(const NcclId&, int, int) { return no_cuda(); }
NcclComm::~NcclComm() = default;
Status NcclComm::send(const void*, size_t, int, Stream&) { return no_cuda(); }
Status NcclComm::recv(void*, size_t, int, Stream&) { return no_cuda(); }
Status NcclComm::all_reduce_sum(Bf16*, size_t, Stream&) { return no_cuda(); }
Status NcclComm::all_reduce_sum(float*, size_t, Stream&) { return no_cuda(); }
Status NcclComm::all_gather(const void*, void*, size_t, Stream&) { return no_cuda(); }

}  // namespace pp::kernels::gpu

#endif  // !PP_HAVE_CUDA
