// Python bindings of the depthwise convolution: argument checks and device dispatch.
#include <torch/extension.h>

#include <string>
#include <vector>

namespace mmunirep {

at::Tensor depthwise_conv2d_forward_cpu(const at::Tensor&, const at::Tensor&,
                                        const c10::optional<at::Tensor>&);
std::vector<at::Tensor> depthwise_conv2d_backward_cpu(const at::Tensor&, const at::Tensor&,
                                                      const at::Tensor&, bool, bool, bool);
#ifdef MMUNIREP_WITH_CUDA
at::Tensor depthwise_conv2d_forward_cuda(const at::Tensor&, const at::Tensor&,
                                         const c10::optional<at::Tensor>&);
std::vector<at::Tensor> depthwise_conv2d_backward_cuda(const at::Tensor&, const at::Tensor&,
                                                       const at::Tensor&, bool, bool, bool);
std::string depthwise_conv2d_built_archs();
std::string depthwise_conv2d_missing_kernels(int64_t index);
#endif

namespace {

void check_args(const at::Tensor& input, const at::Tensor& weight,
                const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.dim() == 4, "depthwise_conv2d: expected a 4-D NCHW input, got ",
              input.dim(), "-D");
  TORCH_CHECK(input.is_contiguous(), "depthwise_conv2d: expected a contiguous NCHW input");
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1 && weight.size(0) == input.size(1),
              "depthwise_conv2d: expected weight [C, 1, K, K] with C = ", input.size(1),
              ", got ", weight.sizes());
  TORCH_CHECK(weight.is_contiguous(), "depthwise_conv2d: expected a contiguous weight");
  const int64_t k = weight.size(3);
  TORCH_CHECK(weight.size(2) == k && k % 2 == 1 && k >= 1 && k <= 31,
              "depthwise_conv2d: expected an odd square kernel of size 1 to 31, got ",
              weight.size(2), "x", k);
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), "depthwise_conv2d: input is ",
              input.scalar_type(), " but weight is ", weight.scalar_type());
  TORCH_CHECK(weight.device() == input.device(), "depthwise_conv2d: input on ",
              input.device(), " but weight on ", weight.device());
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == input.size(1) && bias->is_contiguous(),
                "depthwise_conv2d: expected a contiguous bias [", input.size(1), "], got ",
                bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type() && bias->device() == input.device(),
                "depthwise_conv2d: bias must match the input's dtype and device");
  }
}

}  // namespace

at::Tensor depthwise_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                                    const c10::optional<at::Tensor>& bias) {
  check_args(input, weight, bias);
  if (input.is_cuda()) {
#ifdef MMUNIREP_WITH_CUDA
    return depthwise_conv2d_forward_cuda(input, weight, bias);
#else
    TORCH_CHECK(false, "mmunirep._ext was built without CUDA");
#endif
  }
  return depthwise_conv2d_forward_cpu(input, weight, bias);
}

std::vector<at::Tensor> depthwise_conv2d_backward(const at::Tensor& grad_out,
                                                  const at::Tensor& input,
                                                  const at::Tensor& weight, bool need_input,
                                                  bool need_weight, bool need_bias) {
  check_args(input, weight, c10::nullopt);
  TORCH_CHECK(grad_out.sizes() == input.sizes() && grad_out.is_contiguous() &&
                  grad_out.scalar_type() == input.scalar_type(),
              "depthwise_conv2d: grad_out must be a contiguous tensor like the input");
  if (input.is_cuda()) {
#ifdef MMUNIREP_WITH_CUDA
    return depthwise_conv2d_backward_cuda(grad_out, input, weight, need_input, need_weight,
                                          need_bias);
#else
    TORCH_CHECK(false, "mmunirep._ext was built without CUDA");
#endif
  }
  return depthwise_conv2d_backward_cpu(grad_out, input, weight, need_input, need_weight,
                                       need_bias);
}

}  // namespace mmunirep

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("depthwise_conv2d_forward", &mmunirep::depthwise_conv2d_forward,
        "depthwise conv2d forward (NCHW, stride 1, same padding)", py::arg("input"),
        py::arg("weight"), py::arg("bias"));
  m.def("depthwise_conv2d_backward", &mmunirep::depthwise_conv2d_backward,
        "depthwise conv2d backward: grads of input, weight, bias", py::arg("grad_out"),
        py::arg("input"), py::arg("weight"), py::arg("need_input"), py::arg("need_weight"),
        py::arg("need_bias"));
#ifdef MMUNIREP_WITH_CUDA
  m.attr("with_cuda") = true;
  m.attr("cuda_archs") = mmunirep::depthwise_conv2d_built_archs();
  m.def("missing_kernels", &mmunirep::depthwise_conv2d_missing_kernels,
        "empty if the kernels run on CUDA device `index`, else the CUDA runtime's reason",
        py::arg("index"));
#else
  m.attr("with_cuda") = false;
#endif
}
