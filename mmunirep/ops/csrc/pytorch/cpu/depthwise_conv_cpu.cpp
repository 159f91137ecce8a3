// CPU path of the extension: PyTorch's own convolution (the compiled kernels are CUDA-only).
#include <torch/extension.h>

namespace mmunirep {

at::Tensor depthwise_conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                                        const c10::optional<at::Tensor>& bias) {
  const int64_t k = weight.size(-1);
  return at::conv2d(input, weight, bias, /*stride=*/1, /*padding=*/k / 2, /*dilation=*/1,
                    /*groups=*/input.size(1)).contiguous();
}

std::vector<at::Tensor> depthwise_conv2d_backward_cpu(const at::Tensor& grad_out,
                                                      const at::Tensor& input,
                                                      const at::Tensor& weight, bool need_input,
                                                      bool need_weight, bool need_bias) {
  const int64_t k = weight.size(-1);
  auto grads = at::convolution_backward(
      grad_out, input, weight, /*bias_sizes=*/std::vector<int64_t>{weight.size(0)},
      /*stride=*/{1, 1}, /*padding=*/{k / 2, k / 2}, /*dilation=*/{1, 1}, /*transposed=*/false,
      /*output_padding=*/{0, 0}, /*groups=*/input.size(1), {need_input, need_weight, need_bias});
  return {std::get<0>(grads), std::get<1>(grads), std::get<2>(grads)};
}

}  // namespace mmunirep
