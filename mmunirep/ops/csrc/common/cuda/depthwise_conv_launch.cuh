// Launch logic of the depthwise convolution kernels (depthwise_conv_kernel.cuh), written once for
// any "launcher": a callable `launch(kernel, grid, block, smem_bytes, args...)` with a method
// `multiprocessors()` (the device's SM count, which sizes the weight gradient's grid).
//
// ../../pytorch/cuda/depthwise_conv_cuda.cu instantiates it with a launcher that runs
// `kernel<<<grid, block, smem_bytes, stream>>>(args...)` on the current stream;
// tests/test_ops/csrc/depthwise_conv_emulated.cpp instantiates it with a CPU emulation of the CUDA
// execution model, so that the grid, tiling, shared-memory sizing and workspace logic below and
// the kernels themselves are tested on machines without a GPU.
#pragma once

#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
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

inline int64_t count_tiles(int height, int width, int th, int tw) {
  const int64_t tiles = static_cast<int64_t>(ceil_div(height, th)) * ceil_div(width, tw);
  TORCH_CHECK(tiles <= 65535, "depthwise_conv2d: feature map ", height, "x", width,
              " needs more than 65535 tiles of ", th, "x", tw);
  return tiles;
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
          with_tile_shape<K>(height, width, [&](auto tile) {
            using Tile = decltype(tile);
            const int64_t tiles = count_tiles(height, width, Tile::TH, Tile::TW);
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

// Blocks (c, part) of the weight gradient: about one wave of resident blocks over the GPU's
// multiprocessors (2048 threads each), at most one part per item and 64 parts, so that each block
// sums several items in registers before the fixed-order reduction over parts.
inline int weight_grad_parts(int64_t items, int64_t channels, int threads, int multiprocessors) {
  const int64_t wave = static_cast<int64_t>(multiprocessors) * std::max(1, 2048 / threads);
  const int64_t parts = (wave + channels - 1) / channels;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({parts, items, 64})));
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
        // items of th x tw tiles of `samples` samples: the grid, and a workspace with one slice
        // per part
        auto plan = [&](int th, int tw, int samples, int threads) {
          const int tiles_per_plane = static_cast<int>(count_tiles(height, width, th, tw));
          parts = weight_grad_parts((batch + samples - 1) / samples * tiles_per_plane, channels,
                                    threads, launch.multiprocessors());
          workspace = at::empty({parts, channels, ksize * ksize}, input.options().dtype(acc_dtype));
          return std::make_pair(dim3(static_cast<unsigned>(channels), static_cast<unsigned>(parts)),
                                tiles_per_plane);
        };
        if (!with_compiled_ksize<scalar_t>(ksize, [&](auto k) {
              constexpr int K = decltype(k)::value;
              with_tile_shape<K>(height, width, [&](auto tile) {
                using Tile = decltype(tile);
                const int threads = Tile::weight_grad_threads(K, height);
                const auto [grid, tiles_per_plane] =
                    plan(Tile::TH, Tile::TW, Tile::kWgradSamples, threads);
                constexpr size_t smem = sizeof(acc_t) * Tile::weight_grad_smem_elems(K);
                static_assert(smem <= kMaxDefaultSmem, "weight_grad_k: too much shared memory");
                launch(depthwise_conv2d_weight_grad_k_kernel<scalar_t, acc_t, K, Tile>, grid,
                       dim3(threads), smem, input.data_ptr<scalar_t>(),
                       grad_out.data_ptr<scalar_t>(), workspace.data_ptr<acc_t>(),
                       static_cast<int>(batch), static_cast<int>(channels), height, width,
                       ceil_div(width, Tile::TW), tiles_per_plane);
              });
            })) {
          const auto [grid, tiles_per_plane] = plan(kTileH, kTileW, 1, kWgradThreads);
          const size_t smem = sizeof(acc_t) * ((kTileH + ksize - 1) * (kTileW + ksize - 1) +
                                               kTileH * kTileW);
          TORCH_CHECK(smem <= kMaxDefaultSmem, "depthwise_conv2d: ", smem,
                      " bytes of shared memory");
          launch(depthwise_conv2d_weight_grad_kernel<scalar_t, acc_t>, grid, dim3(kWgradThreads),
                 smem, input.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
                 workspace.data_ptr<acc_t>(), static_cast<int>(batch),
                 static_cast<int>(channels), height, width, ksize, ceil_div(width, kTileW),
                 tiles_per_plane);
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
