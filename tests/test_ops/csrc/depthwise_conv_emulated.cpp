// mmunirep's CUDA depthwise-convolution kernels and their launch logic
// (mmunirep/ops/csrc/common/cuda/depthwise_conv_{kernel,launch}.cuh), compiled unchanged for the
// CPU and run under the CUDA emulation of cuda_emulator.h. Built on the fly by tests/conftest.py.
#include <c10/core/CPUAllocator.h>
#include <torch/extension.h>

#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "cuda_emulator.h"
#include "depthwise_conv_launch.cuh"

namespace mmunirep {
// the kernels' `extern __shared__ unsigned char smem_raw[]`: one buffer, as blocks run in turn
alignas(16) unsigned char smem_raw[cuda_emu::kSmemCapacity];
}  // namespace mmunirep

namespace {

// what was launched, so that the tests can see which kernels ran
int64_t g_blocks_run = 0;
std::vector<unsigned> g_block_sizes;  // threads per block of each launch
std::vector<size_t> g_smem_sizes;     // dynamic shared memory bytes of each launch
std::vector<int64_t> g_kernels;       // the kernel (its address) of each launch
cuda_emu::Schedule g_schedule = cuda_emu::Schedule::kForward;

struct EmuLaunch {
  // a small emulated GPU, so that the weight gradient's blocks loop over several items
  int multiprocessors() const { return 2; }
  template <typename... Params, typename... Args>
  void operator()(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                  Args&&... args) const {
    const unsigned threads = block.x * block.y * block.z;
    TORCH_CHECK(grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.y <= 65535 && grid.z <= 65535,
                "emulated launch: invalid grid (", grid.x, ", ", grid.y, ", ", grid.z, ")");
    TORCH_CHECK(threads >= 1 && threads <= 1024, "emulated launch: ", threads,
                " threads per block");
    TORCH_CHECK(smem <= mmunirep::kMaxDefaultSmem && smem <= cuda_emu::kSmemCapacity,
                "emulated launch: ", smem, " bytes of dynamic shared memory");
    g_block_sizes.push_back(threads);
    g_smem_sizes.push_back(smem);
    g_kernels.push_back(static_cast<int64_t>(reinterpret_cast<uintptr_t>(kernel)));
    const std::function<void()> body = [&] { kernel(args...); };
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          // NaN bytes: a read of shared memory that the block did not write poisons its result
          std::memset(mmunirep::smem_raw, 0xFF, sizeof(mmunirep::smem_raw));
          cuda_emu::run_block(dim3(bx, by, bz), block, grid, g_schedule, body);
          ++g_blocks_run;
        }
  }
};

// While the emulated op runs, new CPU tensors (its outputs, the weight gradient's workspace) start
// as NaN bytes, so that an element the kernels fail to write cannot pass for a right one (it
// could otherwise hold a previous, identical result from memory the allocator reuses).
struct PoisonAllocator final : c10::Allocator {
  c10::Allocator* base = nullptr;
  c10::DataPtr allocate(size_t n) override {
    c10::DataPtr ptr = base->allocate(n);
    if (n > 0) std::memset(ptr.get(), 0xFF, n);
    return ptr;
  }
  c10::DeleterFnPtr raw_deleter() const override { return base->raw_deleter(); }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    std::memcpy(dest, src, count);
  }
};

class PoisonNewTensors {
 public:
  PoisonNewTensors() {
    poison_.base = c10::GetCPUAllocator();
    previous_ = poison_.base;
    c10::SetCPUAllocator(&poison_, /*priority=*/255);
  }
  ~PoisonNewTensors() { c10::SetCPUAllocator(previous_, /*priority=*/255); }

 private:
  static inline PoisonAllocator poison_;
  c10::Allocator* previous_;
};

at::Tensor forward(const at::Tensor& input, const at::Tensor& weight,
                   const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(input.is_contiguous() && weight.is_contiguous(), "contiguous tensors expected");
  PoisonNewTensors poison;
  return mmunirep::depthwise_conv2d_forward_impl(EmuLaunch{}, input, weight, bias);
}

std::vector<at::Tensor> backward(const at::Tensor& grad_out, const at::Tensor& input,
                                 const at::Tensor& weight, bool need_input, bool need_weight,
                                 bool need_bias) {
  TORCH_CHECK(grad_out.is_contiguous() && input.is_contiguous() && weight.is_contiguous(),
              "contiguous tensors expected");
  PoisonNewTensors poison;
  return mmunirep::depthwise_conv2d_backward_impl(EmuLaunch{}, grad_out, input, weight,
                                                  need_input, need_weight, need_bias);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("depthwise_conv2d_forward", &forward, "the CUDA forward kernel, emulated on the CPU");
  m.def("depthwise_conv2d_backward", &backward, "the CUDA backward kernels, emulated on the CPU");
  m.def("blocks_run", [] { return g_blocks_run; }, "emulated blocks run so far");
  m.def(
      "set_schedule",
      [](const std::string& name) {
        if (name == "threads") g_schedule = cuda_emu::Schedule::kThreads;
        else if (name == "forward") g_schedule = cuda_emu::Schedule::kForward;
        else if (name == "reverse") g_schedule = cuda_emu::Schedule::kReverse;
        else TORCH_CHECK(false, "schedule: expected threads, forward or reverse, got ", name);
      },
      "how the threads of a block run (cuda_emulator.h)");
  m.def("block_sizes", [] { auto out = g_block_sizes; g_block_sizes.clear(); return out; },
        "threads per block of each launch since the last call");
  m.def(
      "launches",
      [] {
        std::vector<std::pair<int64_t, size_t>> out;
        for (size_t i = 0; i < g_kernels.size(); ++i)
          out.emplace_back(g_kernels[i], g_smem_sizes[i]);
        g_kernels.clear();
        g_smem_sizes.clear();
        return out;
      },
      "(kernel address, dynamic shared memory bytes) of each launch since the last call");
}
