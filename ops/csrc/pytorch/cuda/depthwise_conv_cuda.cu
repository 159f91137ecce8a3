// CUDA entry points of the depthwise convolution: the launch logic of
// common/cuda/depthwise_conv_launch.cuh run with `<<<>>>` on the current stream.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <utility>

#include "depthwise_conv_launch.cuh"

namespace mmunirep {

namespace {

struct CudaLaunch {
  cudaStream_t stream;
  int multiprocessors() const { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }
  // half / bfloat16 wmma (the tensor-core weight gradient): sm_80 and newer
  bool tensor_cores() const { return at::cuda::getCurrentDeviceProperties()->major >= 8; }
  // the CUDA occupancy calculator: registers, shared memory, threads and the SM's block limit
  template <typename... Params>
  int resident_blocks(void (*kernel)(Params...), int threads, size_t smem) const {
    int blocks = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem));
    return blocks;
  }
  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                  Args&&... args) const {
    kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

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
