// CUDA entry points of the depthwise convolution: the launch logic of
// common/cuda/depthwise_conv_launch.cuh run with `<<<>>>` on the current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <string>
#include <utility>

#include "depthwise_conv_launch.cuh"

namespace mmunirep {

namespace {

struct CudaLaunch {
  cudaStream_t stream;
  int multiprocessors() const { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }
  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                  Args&&... args) const {
    kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

// The architectures nvcc compiled this file for (its __CUDA_ARCH_LIST__, e.g. "800,860,900"):
// what the extension was built for, for the message of a GPU it has no kernels for.
#define MMUNIREP_STRINGIFY_ARGS(...) #__VA_ARGS__
#define MMUNIREP_STRINGIFY(...) MMUNIREP_STRINGIFY_ARGS(__VA_ARGS__)
std::string depthwise_conv2d_built_archs() {
#ifdef __CUDA_ARCH_LIST__
  return MMUNIREP_STRINGIFY(__CUDA_ARCH_LIST__);
#else
  return "";
#endif
}

// Empty if the extension has machine code for device `index` (or PTX the driver compiles for it),
// else the CUDA runtime's reason. A GPU missing from TORCH_CUDA_ARCH_LIST at build time would
// otherwise fail at the first launch with "no kernel image is available"; the Python module asks
// here first and falls back to F.conv2d. Every kernel of the extension is in one fatbinary built
// for the same architectures, so asking for one kernel answers for all.
std::string depthwise_conv2d_missing_kernels(int64_t index) {
  const int64_t devices = c10::cuda::device_count();
  TORCH_CHECK(index >= 0 && index < devices, "depthwise_conv2d: no CUDA device ", index, " (",
              devices, " visible)");
  const c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(index));
  cudaFuncAttributes attributes;
  const cudaError_t err =
      cudaFuncGetAttributes(&attributes, depthwise_conv2d_forward_kernel<float, float>);
  if (err == cudaSuccess) return "";
  (void)cudaGetLastError();  // not a sticky error: clear it so that torch's next check passes
  return cudaGetErrorString(err);
}

at::Tensor depthwise_conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias) {
  const c10::cuda::CUDAGuard guard(input.device());
  return depthwise_conv2d_forward_impl(CudaLaunch{at::cuda::getCurrentCUDAStream()}, input,
                                       weight, bias);
}

std::vector<at::Tensor> depthwise_conv2d_backward_cuda(const at::Tensor& grad_out,
                                                       const at::Tensor& input,
                                                       const at::Tensor& weight,
                                                       bool need_input, bool need_weight,
                                                       bool need_bias) {
  const c10::cuda::CUDAGuard guard(input.device());
  return depthwise_conv2d_backward_impl(CudaLaunch{at::cuda::getCurrentCUDAStream()}, grad_out,
                                        input, weight, need_input, need_weight, need_bias);
}

}  // namespace mmunirep
