// mmunirep's CUDA depthwise-convolution kernels and their launch logic
// (ops/csrc/common/cuda/depthwise_conv_{kernel,launch}.cuh), compiled unchanged for the CPU and run
// under the CUDA emulation of cuda_emulator.h. Built on the fly by tests/test_ops_emulated.py.
#include <c10/core/CPUAllocator.h>
#include <torch/extension.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <utility>
#include <vector>

#include "cuda_emulator.h"
#include "depthwise_conv_launch.cuh"

namespace mmunirep {
// the kernels' `extern __shared__ unsigned char smem_raw[]`: one buffer, as blocks run in turn,
// aligned as the GPU's dynamic shared memory is at least (wmma's fragments need 32 bytes)
alignas(128) unsigned char smem_raw[cuda_emu::kSmemCapacity];
}  // namespace mmunirep

namespace {

// what was launched, so that the tests can see which kernels ran
int64_t g_blocks_run = 0;
std::vector<unsigned> g_block_sizes;  // threads per block of each launch
std::vector<size_t> g_smem_sizes;     // dynamic shared memory bytes of each launch
std::vector<int64_t> g_kernels;       // the kernel (its address) of each launch
std::vector<unsigned> g_grid_y;       // gridDim.y of each launch (the weight gradient's parts)
cuda_emu::Schedule g_schedule = cuda_emu::Schedule::kForward;

struct EmuLaunch {
  // a small emulated GPU, so that the weight gradient's blocks loop over several items: 2 SMs
  // that each hold 2048 threads in whole warps, 32 blocks and 100 KiB of shared memory (the
  // registers, which the GPU's occupancy calculator also counts, are not known here)
  int multiprocessors() const { return 2; }
  bool tensor_cores() const { return true; }  // the emulated wmma (cuda_emulator.h)
  template <typename... Params>
  int resident_blocks(void (*)(Params...), int threads, size_t smem) const {
    const int by_threads = 2048 / ((threads + 31) / 32 * 32);
    const int by_smem = smem > 0 ? static_cast<int>(100 * 1024 / smem) : 32;
    return std::min({32, by_threads, by_smem});
  }
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
    g_grid_y.push_back(grid.y);
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

// Kernels that use wmma wrongly, to show that the emulator catches it (test_ops_emulated.py):
// a call by some lanes of a warp only, lanes that pass different pointers, a misaligned pointer.
void wmma_misuse_kernel(int kind) {
  namespace wmma = nvcuda::wmma;
  auto* tile = reinterpret_cast<c10::Half*>(mmunirep::smem_raw);
  for (int i = threadIdx.x; i < 512; i += blockDim.x) tile[i] = c10::Half(1.0f);
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, c10::Half, wmma::row_major> a;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  if (kind == 0 && lane < 16) wmma::load_matrix_sync(a, tile, 16);           // half the lanes
  if (kind == 1) wmma::load_matrix_sync(a, tile + (lane < 8 ? 0 : 16), 16);  // two pointers
  if (kind == 2) wmma::load_matrix_sync(a, tile + 8, 16);                   // 16-byte aligned
  if (kind == 3) wmma::load_matrix_sync(a, tile, 16);                       // right
}

// A kernel that uses cp.async (the kernels' async_copy) wrongly, or for "right" rightly, to show
// that the emulator catches it: each thread copies element t of `src` into buffer 0 and every
// thread then sums buffer 0 into out[t] (64 threads).
// - early_read: reads the buffer before it waits for the copies (NaN where they land at the
//   wait);
// - overwrite: issues copies into a buffer that other threads still read, without a barrier
//   between (wrong where the copies land when issued);
// - never_waited: commits copies and ends without waiting for them.
void async_misuse_kernel(int kind, const float* src, float* out) {
  float* buffer = reinterpret_cast<float*>(mmunirep::smem_raw);
  const int t = static_cast<int>(threadIdx.x);
  mmunirep::async_copy(buffer + t, src + t);
  mmunirep::async_copy_commit();
  if (kind == 2) return;  // never_waited
  if (kind != 0) mmunirep::async_copy_wait_all();
  __syncthreads();
  float sum = 0;
  for (int i = 0; i < 64; ++i) sum += buffer[i];
  if (kind == 0) mmunirep::async_copy_wait_all();  // early_read: too late
  if (kind == 1) {  // overwrite: the next copies into the buffer the others still sum
    mmunirep::async_copy(buffer + t, src + 64 + t);
    mmunirep::async_copy_commit();
    mmunirep::async_copy_wait_all();
  }
  out[t] = sum;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("depthwise_conv2d_forward", &forward, "the CUDA forward kernel, emulated on the CPU");
  m.def("depthwise_conv2d_backward", &backward, "the CUDA backward kernels, emulated on the CPU");
  m.def(
      "wmma_misuse",
      [](const std::string& kind) {
        const int k = kind == "partial" ? 0 : kind == "divergent" ? 1 : kind == "misaligned" ? 2
                      : kind == "right" ? 3 : -1;
        TORCH_CHECK(k >= 0, "wmma_misuse: expected partial, divergent, misaligned or right");
        EmuLaunch{}(wmma_misuse_kernel, dim3(1), dim3(64), size_t{1024}, k);
      },
      "run a kernel that uses wmma wrongly (or, for 'right', rightly) in the emulator");
  m.def(
      "async_misuse",
      [](const std::string& kind, const at::Tensor& src) {
        const int k = kind == "early_read" ? 0 : kind == "overwrite" ? 1
                      : kind == "never_waited" ? 2 : kind == "right" ? 3 : -1;
        TORCH_CHECK(k >= 0, "async_misuse: expected early_read, overwrite, never_waited or right");
        TORCH_CHECK(src.dtype() == at::kFloat && src.is_contiguous() && src.numel() == 128,
                    "async_misuse: 128 contiguous floats expected");
        at::Tensor out = at::full({64}, std::nanf(""), src.options());
        EmuLaunch{}(async_misuse_kernel, dim3(1), dim3(64), size_t{256}, k,
                    static_cast<const float*>(src.data_ptr<float>()), out.data_ptr<float>());
        return out;
      },
      "run a kernel that uses cp.async wrongly (or, for 'right', rightly) in the emulator: each "
      "of 64 threads' sum of the 64 elements its block copied");
  m.def("set_variants", &mmunirep::set_thread_variants,
        "the kernel variants of this thread's next calls (as the extension's)",
        py::arg("forward_tile"), py::arg("forward_tc"), py::arg("weight_grad_tc"),
        py::arg("pipelined"), py::arg("weight_grad_parts") = -1,
        py::arg("forward_pipelined") = -1);
  m.attr("variant_fields") = 6;  // set_variants' arguments (mmunirep.ops.autotune checks them)
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
  m.def("grid_y", [] { auto out = g_grid_y; g_grid_y.clear(); return out; },
        "gridDim.y of each launch since the last call");
  m.def("weight_grad_parts", &mmunirep::weight_grad_parts,
        "the weight gradient's parts per channel for (items, channels, slots)");
  m.def(
      "item_walks",
      [](int groups, int tiles_h, int tiles_w, int parts) {
        // the (group, tile row, tile column) items that each block (part) walks, in order
        const auto grid = mmunirep::ItemGrid::make(groups, tiles_h, tiles_w, parts);
        std::vector<std::vector<std::tuple<int, int, int>>> out(parts);
        for (int part = 0; part < parts; ++part) {
          cuda_emu::tl_block_idx = dim3(0, part, 0);
          cuda_emu::tl_grid_dim = dim3(1, parts, 1);
          for (mmunirep::ItemWalk it(grid); it.valid(grid); it.next(grid)) {
            out[part].emplace_back(it.n, it.th, it.tw);
            TORCH_CHECK(out[part].size() <= static_cast<size_t>(groups) * tiles_h * tiles_w,
                        "item_walks: part ", part, " walks more items than there are");
          }
        }
        return out;
      },
      "the weight gradient's walk over items (ItemGrid / ItemWalk) for each part");
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
