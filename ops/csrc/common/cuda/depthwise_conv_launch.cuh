// Launch logic of the depthwise convolution kernels (depthwise_conv_kernel.cuh), written once for
// any "launcher": a callable `launch(kernel, grid, block, smem_bytes, args...)` with methods
// `multiprocessors()` (the device's SM count) and `resident_blocks(kernel, threads, smem_bytes)`
// (the kernel's blocks that fit on one SM at once), which size the weight gradient's grid, and
// `tensor_cores()` (whether the device runs half / bfloat16 wmma: sm_80 and newer).
//
// ops/csrc/pytorch/cuda/depthwise_conv_cuda.cu instantiates it with a launcher that runs
// `kernel<<<grid, block, smem_bytes, stream>>>(args...)` on the current stream;
// tests/csrc/depthwise_conv_emulated.cpp instantiates it with a CPU emulation of the CUDA
// execution model, so that the grid, tiling, shared-memory sizing and workspace logic below and the
// kernels themselves are tested in CI on machines without a GPU.
#pragma once

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <vector>

#include "depthwise_conv_kernel.cuh"

namespace mmunirep {

inline int ceil_div(int64_t a, int64_t b) { return static_cast<int>((a + b - 1) / b); }

// The default dynamic shared memory a block may use without an opt-in attribute (all archs).
constexpr size_t kMaxDefaultSmem = 48 * 1024;

// MMUNIREP_DWCONV_GENERIC=1 runs the run-time-K kernels for every size (to compare them).
inline bool use_generic_kernels() {
  const char* v = std::getenv("MMUNIREP_DWCONV_GENERIC");
  return v != nullptr && v[0] == '1';
}

// The kernel variants for this thread's calls, set around each call by mmunirep.ops' autotuner
// (mmunirep/ops/autotune.py, through the extension's set_variants): -1 leaves a choice to its
// environment variable below (or the default). Per thread, as the autograd engine runs a
// backward pass on its own thread.
struct Variants {
  int forward_tile = -1;    // MMUNIREP_DWCONV_FWD_TILE: 0 the default tile, 1 16x32x2, 2 32x32x2
  int forward_tc = -1;      // MMUNIREP_DWCONV_FWD_TC: 0 or 1
  int weight_grad_tc = -1;  // MMUNIREP_DWCONV_WGRAD_TC: 0 or 1
  int pipelined = -1;       // MMUNIREP_DWCONV_PIPELINE: 0 or 1
  // the weight gradient's parts per channel (MMUNIREP_DWCONV_WGRAD_PARTS): 0 the rule's count
  // (weight_grad_parts), 1 half of it, 2 twice it; see choose_weight_grad_parts
  int weight_grad_parts = -1;
  int forward_pipelined = -1;  // MMUNIREP_DWCONV_FWD_PIPELINE: 0 or 1
};
// In an unnamed namespace: a thread_local inside an inline function is one object for the whole
// process (a GNU unique symbol, even across libraries loaded RTLD_LOCAL), which the tests'
// emulated kernels would share with the extension, whatever the two were built from.
namespace {
inline Variants& thread_variants() {
  thread_local Variants variants;
  return variants;
}
}  // namespace
inline void set_thread_variants(int64_t forward_tile, int64_t forward_tc, int64_t weight_grad_tc,
                                int64_t pipelined, int64_t weight_grad_parts = -1,
                                int64_t forward_pipelined = -1) {
  TORCH_CHECK(forward_tile >= -1 && forward_tile <= 2 && forward_tc >= -1 && forward_tc <= 1 &&
                  weight_grad_tc >= -1 && weight_grad_tc <= 1 && pipelined >= -1 &&
                  pipelined <= 1 && weight_grad_parts >= -1 && weight_grad_parts <= 2 &&
                  forward_pipelined >= -1 && forward_pipelined <= 1,
              "set_variants: expected forward_tile and weight_grad_parts in -1..2 and the others "
              "in -1..1, got (", forward_tile, ", ", forward_tc, ", ", weight_grad_tc, ", ",
              pipelined, ", ", weight_grad_parts, ", ", forward_pipelined, ")");
  thread_variants() = Variants{static_cast<int>(forward_tile), static_cast<int>(forward_tc),
                               static_cast<int>(weight_grad_tc), static_cast<int>(pipelined),
                               static_cast<int>(weight_grad_parts),
                               static_cast<int>(forward_pipelined)};
}

// MMUNIREP_DWCONV_PIPELINE=1 runs the pipelined weight-gradient kernels where there are some
// (compile-time K, maps larger than 16x16), to measure them against the default ones.
inline bool use_pipelined_weight_grad() {
  if (thread_variants().pipelined >= 0) return thread_variants().pipelined == 1;
  const char* v = std::getenv("MMUNIREP_DWCONV_PIPELINE");
  return v != nullptr && v[0] == '1';
}

// MMUNIREP_DWCONV_FWD_PIPELINE=1 runs the pipelined forward and input gradient (depthwise_conv2d_
// forward_pipelined_kernel: float, compile-time K whose two staging buffers fit in 48 KiB, i.e. 7
// and 13, on whichever forward tile the map takes), to measure it.
inline bool use_pipelined_forward() {
  if (thread_variants().forward_pipelined >= 0) return thread_variants().forward_pipelined == 1;
  const char* v = std::getenv("MMUNIREP_DWCONV_FWD_PIPELINE");
  return v != nullptr && v[0] == '1';
}

// MMUNIREP_DWCONV_WGRAD_TC=1 runs the tensor-core weight gradient (depthwise_conv2d_weight_grad_
// tc_kernel) for half and bfloat16 where there is one (compile-time K, maps larger than 16x16), to
// measure it against the default FMA kernels. Unset, empty or 0: the default; anything else is an
// error, and so is 1 on a GPU without half / bfloat16 tensor cores (before sm_80).
// MMUNIREP_DWCONV_FWD_TC=1 does the same for the forward and input gradient (depthwise_conv2d_
// forward_tc_kernel; K = 7 and 13).
template <typename Launch>
bool use_tensor_cores(const Launch& launch, const char* name, int chosen) {
  std::string value;  // the autotuner's choice (set_variants), else the environment's
  if (chosen >= 0) {
    value = chosen == 1 ? "1" : "0";
  } else if (const char* v = std::getenv(name)) {
    value = v;
  }
  if (value.empty() || value == "0") return false;
  TORCH_CHECK(value == "1", name, ": expected 1 or 0 (or unset), got '", value, "'");
  TORCH_CHECK(launch.tensor_cores(), name, "=1: the tensor-core kernels need a GPU of compute "
              "capability 8.0 or newer");
  return true;
}
template <typename Launch>
bool use_tensor_core_weight_grad(const Launch& launch) {
  return use_tensor_cores(launch, "MMUNIREP_DWCONV_WGRAD_TC", thread_variants().weight_grad_tc);
}
template <typename Launch>
bool use_tensor_core_forward(const Launch& launch) {
  return use_tensor_cores(launch, "MMUNIREP_DWCONV_FWD_TC", thread_variants().forward_tc);
}

// Calls f(std::integral_constant<int, K>) for the kernel sizes with compile-time kernels; false
// for the others. float / half / bfloat16 only: double always takes the run-time-K kernels.
template <typename scalar_t, typename F>
bool with_compiled_ksize(int ksize, F&& f) {
  if constexpr (std::is_same_v<scalar_t, double>) {
    return false;
  } else {
    if (use_generic_kernels()) return false;
    switch (ksize) {
      case 7: f(std::integral_constant<int, 7>{}); return true;
      case 13: f(std::integral_constant<int, 13>{}); return true;
      case 31: f(std::integral_constant<int, 31>{}); return true;
      default: return false;
    }
  }
}

// Calls f(Tile{}) with the tile shape for an H x W map (TileShape in the kernel header): whole
// maps of 8 planes per block where they fit in 8x8 or 16x16, else 16x32 tiles of 4 planes (K <=
// 13: the shared memory of 8 or 4 planes of a larger kernel exceeds 48 KiB; 2 planes for it). The
// whole-map tiles rely on it: they are only ever given maps of at most TH x TW.
template <int K, typename F>
void with_tile_shape(int height, int width, F&& f) {
  if constexpr (K <= 13) {
    if (height <= 8 && width <= 8) return f(TileSmall{});
    if (height <= 16 && width <= 16) return f(TileMedium{});
    f(TileLarge{});
  } else {
    f(TileLargeBigK{});
  }
}

// MMUNIREP_DWCONV_FWD_TILE picks another forward tile for maps larger than 16x16 at K <= 13, to
// measure it against the default (TileLarge): 16x32x2 (TileLarge2Planes) or 32x32x2 (TileTall).
// Unset or empty: the default; anything else is an error rather than silently the default.
inline int forward_tile_variant() {
  if (thread_variants().forward_tile >= 0) return thread_variants().forward_tile;
  const char* v = std::getenv("MMUNIREP_DWCONV_FWD_TILE");
  if (v == nullptr || v[0] == '\0') return 0;
  const std::string name(v);
  if (name == "16x32x2") return 1;
  if (name == "32x32x2") return 2;
  TORCH_CHECK(false, "MMUNIREP_DWCONV_FWD_TILE: expected 16x32x2 or 32x32x2 (or unset), got '",
              name, "'");
  return 0;
}

// with_tile_shape for the forward kernels (forward and input gradient), with the tile of
// forward_tile_variant() where it applies
template <int K, typename F>
void with_forward_tile_shape(int height, int width, F&& f) {
  if constexpr (K <= 13) {
    if (height > 16 || width > 16) {
      switch (forward_tile_variant()) {
        case 1: return f(TileLarge2Planes{});
        case 2: return f(TileTall{});
        default: break;
      }
    }
  }
  with_tile_shape<K>(height, width, f);
}

inline int64_t count_tiles(int height, int width, int th, int tw) {
  const int64_t tiles = static_cast<int64_t>(ceil_div(height, th)) * ceil_div(width, tw);
  TORCH_CHECK(tiles <= 65535, "depthwise_conv2d: feature map ", height, "x", width,
              " needs more than 65535 tiles of ", th, "x", tw);
  return tiles;
}

// Parts of each channel's `items` for the weight gradient's channels x parts blocks, which each
// sum their items in registers before the fixed-order reduction over parts. The blocks run in
// waves of `slots` (the SMs times the kernel's resident blocks per SM: its occupancy), and a
// block takes about its items' time plus a fixed cost (its start, with nothing to hide its first
// staging, and its reduction), assumed half an item's. So the grid takes about
//   ceil(channels * parts / slots) waves x (ceil(items / parts) + 1/2) items,
// which this minimizes over 1 <= parts <= min(items, 64), the fewest parts among equals (a
// smaller workspace and reduction). It counts a last, partial wave as a whole one, where a block
// alone on its SM runs faster than among others. The rule it replaces (legacy_weight_grad_parts)
// aimed at one wave of 2048 / threads blocks per SM, but registers allow fewer: on the H100 12 of
// the K = 7 kernel's 112-thread blocks where it counted 18, so its 7 parts of (64, 384, 32, 32)
// make 1.70 waves of 19 items (this picks 4: 0.97 of a wave of 32 items; with the 10 blocks per
// SM that ncu saw before the item walk lost its divisions, 2.04 waves against 10 parts' 2.91 of
// 13). The benchmark's --parts-sweep measures both against every count
// (MMUNIREP_DWCONV_WGRAD_PARTS).
inline int weight_grad_parts(int64_t items, int64_t channels, int64_t slots) {
  TORCH_CHECK(items >= 1 && channels >= 1 && slots >= 1, "weight_grad_parts: items ", items,
              ", channels ", channels, ", slots ", slots, " (each at least 1 expected)");
  int64_t best = 1, best_cost = INT64_MAX;
  for (int64_t parts = 1; parts <= std::min<int64_t>(items, 64); ++parts) {
    const int64_t waves = (channels * parts + slots - 1) / slots;
    const int64_t cost = waves * (2 * ((items + parts - 1) / parts) + 1);  // in half items
    if (cost < best_cost) best = parts, best_cost = cost;
  }
  return static_cast<int>(best);
}

// The rule before weight_grad_parts, kept to measure against it: about one wave of
// 2048 / threads blocks per SM, at most one part per item and 64 parts.
inline int legacy_weight_grad_parts(int64_t items, int64_t channels, int threads,
                                    int multiprocessors) {
  const int64_t wave = static_cast<int64_t>(multiprocessors) * std::max(1, 2048 / threads);
  const int64_t parts = (wave + channels - 1) / channels;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({parts, items, 64})));
}

// weight_grad_parts for `kernel`'s blocks of `threads` threads and `smem` bytes of shared memory:
// the slots are the SMs times the blocks that fit on one (the launcher's occupancy calculator)
template <typename Launch, typename Kernel>
int parts_by_occupancy(const Launch& launch, Kernel kernel, int threads, size_t smem,
                       int64_t items, int64_t channels) {
  const int64_t slots = static_cast<int64_t>(launch.multiprocessors()) *
                        launch.resident_blocks(kernel, threads, smem);
  TORCH_CHECK(slots >= 1, "depthwise_conv2d: a kernel cannot run ", threads, " threads with ",
              smem, " bytes of shared memory on this device");
  return weight_grad_parts(items, channels, slots);
}

// The input gradient is the forward computation with the flipped filter and no bias.
template <typename Launch>
void launch_forward(const Launch& launch, const at::Tensor& input, const at::Tensor& weight,
                    const at::Tensor* bias, at::Tensor& output, bool flip) {
  const int64_t batch = input.size(0), channels = input.size(1);
  const int height = static_cast<int>(input.size(2)), width = static_cast<int>(input.size(3));
  const int ksize = static_cast<int>(weight.size(-1));
  TORCH_CHECK(batch * channels <= INT32_MAX, "depthwise_conv2d: N*C = ", batch * channels,
              " exceeds 2^31-1");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                  "depthwise_conv2d_forward", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    const scalar_t* bias_ptr = bias != nullptr ? bias->data_ptr<scalar_t>() : nullptr;
    if (with_compiled_ksize<scalar_t>(ksize, [&](auto k) {
          constexpr int K = decltype(k)::value;
          if constexpr (sizeof(scalar_t) == 2 && K <= 13) {  // half, bfloat16
            if ((height > 16 || width > 16) && use_tensor_core_forward(launch)) {
              using Shape = TensorCoreFwd<K>;
              constexpr size_t smem = Shape::smem_bytes(sizeof(scalar_t));
              static_assert(smem <= kMaxDefaultSmem, "forward_tc: too much shared memory");
              const auto kernel = depthwise_conv2d_forward_tc_kernel<scalar_t, K>;
              // blocks (c, part) walk a channel's 32x32 tiles as the weight gradient's walk
              // theirs, and the same wave model sizes the grid (its fixed cost per block now
              // stands for building the channel's Toeplitz matrices; not measured either)
              const int64_t items = batch * count_tiles(height, width, Shape::TH, Shape::TW);
              const int parts =
                  parts_by_occupancy(launch, kernel, Shape::kThreads, smem, items, channels);
              launch(kernel, dim3(static_cast<unsigned>(channels), static_cast<unsigned>(parts)),
                     dim3(Shape::kThreads), smem, input.data_ptr<scalar_t>(),
                     weight.data_ptr<scalar_t>(), bias_ptr, output.data_ptr<scalar_t>(),
                     static_cast<int>(batch), static_cast<int>(channels), height, width, flip,
                     ItemGrid::make(static_cast<int>(batch), ceil_div(height, Shape::TH),
                                    ceil_div(width, Shape::TW), parts));
              return;
            }
          }
          with_forward_tile_shape<K>(height, width, [&](auto tile) {
            using Tile = decltype(tile);
            const int64_t tiles = count_tiles(height, width, Tile::TH, Tile::TW);
            if constexpr (std::is_same_v<scalar_t, float> &&
                          2 * sizeof(acc_t) * Tile::forward_smem_elems(K) <= kMaxDefaultSmem) {
              if (use_pipelined_forward()) {
                constexpr size_t smem = 2 * sizeof(acc_t) * Tile::forward_smem_elems(K);
                const auto kernel = depthwise_conv2d_forward_pipelined_kernel<scalar_t, acc_t, K,
                                                                              Tile>;
                // one wave of blocks (the SMs times the blocks that fit on one), each walking
                // every blocks-th (plane group, tile) item
                const int groups = ceil_div(batch * channels, Tile::PLANES);
                const int64_t items = static_cast<int64_t>(groups) * tiles;
                const int64_t slots = static_cast<int64_t>(launch.multiprocessors()) *
                                      launch.resident_blocks(kernel, Tile::kFwdThreads, smem);
                TORCH_CHECK(slots >= 1, "depthwise_conv2d: the pipelined forward cannot run ",
                            Tile::kFwdThreads, " threads with ", smem,
                            " bytes of shared memory on this device");
                const int blocks = static_cast<int>(std::min(items, slots));
                launch(kernel, dim3(static_cast<unsigned>(blocks)), dim3(Tile::kFwdThreads), smem,
                       input.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), bias_ptr,
                       output.data_ptr<scalar_t>(), batch * channels,
                       static_cast<int>(channels), height, width, flip,
                       ItemGrid::make(groups, ceil_div(height, Tile::TH),
                                      ceil_div(width, Tile::TW), blocks));
                return;
              }
            }
            const dim3 grid(static_cast<unsigned>(ceil_div(batch * channels, Tile::PLANES)),
                            static_cast<unsigned>(tiles));
            constexpr size_t smem = sizeof(acc_t) * Tile::forward_smem_elems(K);
            static_assert(smem <= kMaxDefaultSmem, "forward_k: too much shared memory");
            launch(depthwise_conv2d_forward_k_kernel<scalar_t, acc_t, K, Tile>, grid,
                   dim3(Tile::kFwdThreads), smem, input.data_ptr<scalar_t>(),
                   weight.data_ptr<scalar_t>(), bias_ptr, output.data_ptr<scalar_t>(),
                   batch * channels, static_cast<int>(channels), height, width,
                   ceil_div(width, Tile::TW), flip);
          });
        }))
      return;
    const int64_t tiles = count_tiles(height, width, kTileH, kTileW);
    const dim3 grid(static_cast<unsigned>(batch * channels), static_cast<unsigned>(tiles));
    const size_t smem = sizeof(acc_t) * ((kTileH + ksize - 1) * (kTileW + ksize - 1) +
                                         ksize * ksize);
    TORCH_CHECK(smem <= kMaxDefaultSmem, "depthwise_conv2d: ", smem, " bytes of shared memory");
    launch(depthwise_conv2d_forward_kernel<scalar_t, acc_t>, grid, dim3(kThreads), smem,
           input.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(), bias_ptr,
           output.data_ptr<scalar_t>(), static_cast<int>(channels), height, width, ksize,
           ceil_div(width, kTileW), flip);
  });
}

// MMUNIREP_DWCONV_WGRAD_PARTS picks the weight gradient's parts per channel, to measure the rule
// above: a count from 1 to 64 (fewer where a channel has fewer items), or "legacy" for
// legacy_weight_grad_parts. Unset or empty: weight_grad_parts. Anything else is an error.
// The autotuner's choice (Variants::weight_grad_parts) comes first: the rule's count, half of it
// or twice it, within 1..min(items, 64), as the rule's wave model is not measured on every GPU.
template <typename Launch, typename Kernel>
int choose_weight_grad_parts(const Launch& launch, Kernel kernel, int threads, size_t smem,
                             int64_t items, int64_t channels) {
  const int scale = thread_variants().weight_grad_parts;
  if (scale >= 0) {
    const int64_t rule = parts_by_occupancy(launch, kernel, threads, smem, items, channels);
    const int64_t parts = scale == 1 ? (rule + 1) / 2 : scale == 2 ? 2 * rule : rule;
    return static_cast<int>(std::clamp<int64_t>(parts, 1, std::min<int64_t>(items, 64)));
  }
  const char* v = std::getenv("MMUNIREP_DWCONV_WGRAD_PARTS");
  const std::string forced = v != nullptr ? v : "";
  if (forced == "legacy")
    return legacy_weight_grad_parts(items, channels, threads, launch.multiprocessors());
  if (!forced.empty()) {
    char* end = nullptr;
    const long parts = std::strtol(forced.c_str(), &end, 10);
    TORCH_CHECK(*end == '\0' && parts >= 1 && parts <= 64,
                "MMUNIREP_DWCONV_WGRAD_PARTS: expected a count from 1 to 64 or legacy (or "
                "unset), got '", forced, "'");
    return static_cast<int>(std::min<int64_t>(parts, items));
  }
  return parts_by_occupancy(launch, kernel, threads, smem, items, channels);
}

template <typename Launch>
at::Tensor depthwise_conv2d_forward_impl(const Launch& launch, const at::Tensor& input,
                                         const at::Tensor& weight,
                                         const c10::optional<at::Tensor>& bias) {
  auto output = at::empty_like(input, at::MemoryFormat::Contiguous);
  if (output.numel() == 0) return output;
  launch_forward(launch, input, weight, bias.has_value() ? &bias.value() : nullptr, output, false);
  return output;
}

template <typename Launch>
std::vector<at::Tensor> depthwise_conv2d_backward_impl(const Launch& launch,
                                                       const at::Tensor& grad_out,
                                                       const at::Tensor& input,
                                                       const at::Tensor& weight, bool need_input,
                                                       bool need_weight, bool need_bias) {
  at::Tensor grad_input, grad_weight, grad_bias;
  if (need_input) {
    grad_input = at::empty_like(input, at::MemoryFormat::Contiguous);
    if (grad_input.numel() > 0) launch_forward(launch, grad_out, weight, nullptr, grad_input, true);
  }
  if (need_weight) {
    const int64_t batch = input.size(0), channels = input.size(1);
    const int height = static_cast<int>(input.size(2)), width = static_cast<int>(input.size(3));
    const int ksize = static_cast<int>(weight.size(-1));
    const auto acc_dtype = at::toAccumulateType(input.scalar_type(), /*is_cuda=*/true);
    grad_weight = at::empty_like(weight, at::MemoryFormat::Contiguous);
    if (batch == 0 || channels == 0 || height == 0 || width == 0) {
      grad_weight.zero_();
    } else {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                      "depthwise_conv2d_weight_grad", [&] {
        using acc_t = at::acc_type<scalar_t, true>;
        at::Tensor workspace;  // [parts, C, K*K]
        int parts = 0;
        // items of th x tw tiles of `samples` samples for `kernel`: the grid, the items' walk,
        // and a workspace with one slice per part
        auto plan = [&](auto kernel, int threads, size_t smem, int th, int tw, int samples) {
          const int tiles_per_plane = static_cast<int>(count_tiles(height, width, th, tw));
          const int groups = ceil_div(batch, samples);
          parts = choose_weight_grad_parts(launch, kernel, threads, smem,
                                           static_cast<int64_t>(groups) * tiles_per_plane,
                                           channels);
          workspace = at::empty({parts, channels, ksize * ksize}, input.options().dtype(acc_dtype));
          return std::make_pair(dim3(static_cast<unsigned>(channels), static_cast<unsigned>(parts)),
                                ItemGrid::make(groups, ceil_div(height, th), ceil_div(width, tw),
                                               parts));
        };
        if (!with_compiled_ksize<scalar_t>(ksize, [&](auto k) {
              constexpr int K = decltype(k)::value;
              with_tile_shape<K>(height, width, [&](auto tile) {
                using Tile = decltype(tile);
                const int threads = Tile::weight_grad_threads(K, height);
                auto run = [&](auto pipelined) {
                  constexpr bool kPipelined = decltype(pipelined)::value;
                  constexpr size_t smem =
                      sizeof(acc_t) * Tile::weight_grad_smem_elems(K, kPipelined);
                  static_assert(smem <= kMaxDefaultSmem, "weight_grad_k: too much shared memory");
                  const auto kernel =
                      depthwise_conv2d_weight_grad_k_kernel<scalar_t, acc_t, K, Tile, kPipelined>;
                  const auto [grid, items] =
                      plan(kernel, threads, smem, Tile::TH, Tile::TW, Tile::kWgradSamples);
                  launch(kernel, grid, dim3(threads), smem, input.data_ptr<scalar_t>(),
                         grad_out.data_ptr<scalar_t>(), workspace.data_ptr<acc_t>(),
                         static_cast<int>(batch), static_cast<int>(channels), height, width,
                         items);
                };
                if constexpr (!Tile::kWholeMap) {
                  if constexpr (sizeof(scalar_t) == 2) {  // half, bfloat16
                    if (use_tensor_core_weight_grad(launch)) {
                      using Shape = TensorCoreWgrad<K>;
                      static_assert(Shape::TH == Tile::TH && Shape::TW == Tile::TW &&
                                        Tile::kWgradSamples == 1,
                                    "weight_grad_tc: TileLarge's items");
                      constexpr size_t smem = Shape::smem_bytes(sizeof(scalar_t));
                      static_assert(smem <= kMaxDefaultSmem, "weight_grad_tc: shared memory");
                      const auto kernel = depthwise_conv2d_weight_grad_tc_kernel<scalar_t, K>;
                      const auto [grid, items] =
                          plan(kernel, Shape::kThreads, smem, Shape::TH, Shape::TW, 1);
                      launch(kernel, grid, dim3(Shape::kThreads), smem,
                             input.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
                             workspace.data_ptr<acc_t>(), static_cast<int>(batch),
                             static_cast<int>(channels), height, width, items);
                      return;
                    }
                  }
                  if (use_pipelined_weight_grad()) return run(std::true_type{});
                }
                run(std::false_type{});
              });
            })) {
          const size_t smem = sizeof(acc_t) * ((kTileH + ksize - 1) * (kTileW + ksize - 1) +
                                               kTileH * kTileW);
          TORCH_CHECK(smem <= kMaxDefaultSmem, "depthwise_conv2d: ", smem,
                      " bytes of shared memory");
          const auto kernel = depthwise_conv2d_weight_grad_kernel<scalar_t, acc_t>;
          const auto [grid, items] = plan(kernel, kWgradThreads, smem, kTileH, kTileW, 1);
          launch(kernel, grid, dim3(kWgradThreads), smem, input.data_ptr<scalar_t>(),
                 grad_out.data_ptr<scalar_t>(), workspace.data_ptr<acc_t>(),
                 static_cast<int>(channels), height, width, ksize, items);
        }
        const int64_t count = channels * ksize * ksize;
        launch(depthwise_conv2d_reduce_parts_kernel<scalar_t, acc_t>,
               dim3(static_cast<unsigned>(ceil_div(count, 256))), dim3(256), size_t{0},
               static_cast<const acc_t*>(workspace.data_ptr<acc_t>()),
               grad_weight.data_ptr<scalar_t>(), parts, count);
      });
    }
  }
  if (need_bias) {
    grad_bias = grad_out.sum({0, 2, 3}, /*keepdim=*/false,
                             at::toAccumulateType(grad_out.scalar_type(), true))
                    .to(grad_out.scalar_type());
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace mmunirep
