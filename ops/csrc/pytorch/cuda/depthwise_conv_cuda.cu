// Launchers of the depthwise convolution kernels (see common/cuda/depthwise_conv_kernel.cuh).
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "depthwise_conv_kernel.cuh"

namespace mmunirep {

namespace {

int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// The input gradient is the forward computation with the flipped filter and no bias.
void launch_forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor* bias,
                    at::Tensor& output, bool flip) {
  const int64_t batch = input.size(0), channels = input.size(1);
  const int height = static_cast<int>(input.size(2)), width = static_cast<int>(input.size(3));
  const int ksize = static_cast<int>(weight.size(-1));
  const int tiles_w = ceil_div(width, kTileW);
  const int tiles = ceil_div(height, kTileH) * tiles_w;
  TORCH_CHECK(tiles <= 65535, "depthwise_conv2d: feature map ", height, "x", width,
              " needs more than 65535 tiles of ", kTileH, "x", kTileW);
  TORCH_CHECK(batch * channels <= INT32_MAX, "depthwise_conv2d: N*C = ", batch * channels,
              " exceeds 2^31-1");
  const dim3 grid(static_cast<unsigned>(batch * channels), static_cast<unsigned>(tiles));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "depthwise_conv2d_forward", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const size_t smem = sizeof(acc_t) * ((kTileH + ksize - 1) * (kTileW + ksize - 1) +
                                         ksize * ksize);
    depthwise_conv2d_forward_kernel<scalar_t, acc_t><<<grid, kThreads, smem, stream>>>(
        input.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
        bias != nullptr ? bias->data_ptr<scalar_t>() : nullptr, output.data_ptr<scalar_t>(),
        static_cast<int>(channels), height, width, ksize, tiles_w, flip);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

at::Tensor depthwise_conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias) {
  const c10::cuda::CUDAGuard guard(input.device());
  auto output = at::empty_like(input, at::MemoryFormat::Contiguous);
  if (output.numel() == 0) return output;
  launch_forward(input, weight, bias.has_value() ? &bias.value() : nullptr, output, false);
  return output;
}

std::vector<at::Tensor> depthwise_conv2d_backward_cuda(const at::Tensor& grad_out,
                                                       const at::Tensor& input,
                                                       const at::Tensor& weight,
                                                       bool need_input, bool need_weight,
                                                       bool need_bias) {
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor grad_input, grad_weight, grad_bias;
  if (need_input) {
    grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);
    if (grad_input.numel() > 0) launch_forward(grad_out, weight, nullptr, grad_input, true);
  }
  if (need_weight) {
    const int64_t batch = input.size(0), channels = input.size(1);
    const int height = static_cast<int>(input.size(2)), width = static_cast<int>(input.size(3));
    const int ksize = static_cast<int>(weight.size(-1));
    const int tiles_w = ceil_div(width, kTileW);
    const int tiles_per_plane = ceil_div(height, kTileH) * tiles_w;
    const int64_t items = batch * tiles_per_plane;
    // enough blocks to fill the GPU, few enough that the reduction stays small
    const int parts = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(items, 64)));
    const auto acc_dtype = at::toAccumulateType(input.scalar_type(), /*is_cuda=*/true);
    auto workspace = at::empty({parts, channels, ksize * ksize}, input.options().dtype(acc_dtype));
    grad_weight = at::empty_like(weight, at::MemoryFormat::Contiguous);
    auto stream = at::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "depthwise_conv2d_weight_grad", [&] {
      using acc_t = at::acc_type<scalar_t, true>;
      if (items == 0) {
        grad_weight.zero_();
        return;
      }
      const size_t smem = sizeof(acc_t) * ((kTileH + ksize - 1) * (kTileW + ksize - 1) +
                                           kTileH * kTileW);
      const dim3 grid(static_cast<unsigned>(channels), static_cast<unsigned>(parts));
      depthwise_conv2d_weight_grad_kernel<scalar_t, acc_t><<<grid, kWgradThreads, smem, stream>>>(
          input.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
          workspace.data_ptr<acc_t>(), static_cast<int>(batch), static_cast<int>(channels),
          height, width, ksize, tiles_w, tiles_per_plane);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int64_t count = channels * ksize * ksize;
      depthwise_conv2d_reduce_parts_kernel<scalar_t, acc_t>
          <<<ceil_div(count, 256), 256, 0, stream>>>(workspace.data_ptr<acc_t>(),
                                                       grad_weight.data_ptr<scalar_t>(), parts,
                                                       count);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  if (need_bias) {
    grad_bias = grad_out.sum({0, 2, 3}, /*keepdim=*/false,
                             at::toAccumulateType(grad_out.scalar_type(), true))
                    .to(grad_out.scalar_type());
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace mmunirep
