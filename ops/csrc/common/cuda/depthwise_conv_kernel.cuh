// Direct depthwise 2-D convolution kernels (stride 1, "same" padding, odd square kernels).
//
// Layout: NCHW, contiguous; a "plane" is one (n, c) image of H x W. Accumulation is in acc_t
// (float for half / bfloat16 / float, double for double).
//
// Forward (and input gradient, which is the same computation with the flipped filter): a block
// computes a TILE_H x TILE_W tile of one plane. It stages the input tile plus its K-1 halo and the
// plane's K x K filter in shared memory (zeros outside the image), then each thread keeps
// PER_THREAD consecutive outputs of one row in registers and slides a register window along the
// row; filter rows that fall entirely outside the image are skipped.
//
// Weight gradient: block (c, part) accumulates, for every tap, the sum over its share of
// (n, tile) items of grad_out * shifted input in registers, and writes one partial sum per tap
// into a workspace [parts, C, K*K]; a second kernel adds the parts in a fixed order
// (deterministic, no atomics).
//
// Those kernels take the kernel size at run time and work for any odd size and every dtype. For
// the sizes that matter (13: UniRepLKNet's large kernels; 7 and 31: RepLKNet's benchmark) and the
// float / half / bfloat16 inputs, the "_k" kernels below take it at compile time, which lets the
// compiler unroll the filter loops and keep the sliding windows in registers without moves:
// - forward / input gradient: 8 outputs per thread; per filter row a thread loads its 8 + K - 1
//   inputs once and does 8 * K FMAs; tiles of 16x32 outputs of one plane, or, for maps that fit,
//   whole 16x16 or 8x8 maps of 8 planes per block (TileShape);
// - weight gradient: thread (kh, r) owns the K taps of filter row kh for output row r of the tile
//   and accumulates them in registers over all its items (8 outputs at a time: 8 + K - 1 inputs
//   and 8 gradients loaded for 8 * K FMAs), then the block sums its 16 rows through shared memory
//   in a fixed tree order (deterministic).
// Shared-memory rows have an odd pitch, so the threads of a warp that read different rows hit
// different banks. Shared memory is only ever the dynamic buffer (extern __shared__): the tests'
// CUDA emulator poisons it with NaN before every block (tests/csrc/cuda_emulator.h).
#pragma once

#include <cstdint>

namespace mmunirep {

constexpr int kTileH = 16;
constexpr int kTileW = 32;
constexpr int kPerThread = 4;   // outputs per thread, along W
constexpr int kThreads = 128;   // kTileH * kTileW / kPerThread
constexpr int kMaxKernel = 31;
constexpr int kWgradThreads = 256;
constexpr int kMaxTapsPerThread = (kMaxKernel * kMaxKernel + kWgradThreads - 1) / kWgradThreads;

// stage the input tile of a plane with its halo (zeros outside the image) in rows of pitch `pitch`
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_input_tile(acc_t* s_in, const scalar_t* __restrict__ in_plane,
                                                 int height, int width, int h0, int w0, int pad,
                                                 int rows, int cols, int pitch, int first,
                                                 int stride) {
  for (int i = first; i < rows * cols; i += stride) {
    const int r = i / cols, q = i % cols;
    const int ih = h0 - pad + r, iw = w0 - pad + q;
    s_in[r * pitch + q] = (in_plane != nullptr && ih >= 0 && ih < height && iw >= 0 && iw < width)
                              ? static_cast<acc_t>(in_plane[static_cast<int64_t>(ih) * width + iw])
                              : acc_t(0);
  }
}

// stage grad_out's th x tw tile of a plane (zeros outside the image) in rows of pitch `pitch`
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_grad_tile(acc_t* s_g, const scalar_t* __restrict__ g_plane,
                                                int height, int width, int h0, int w0, int th,
                                                int tw, int pitch) {
  for (int i = threadIdx.x; i < th * tw; i += blockDim.x) {
    const int oh = h0 + i / tw, ow = w0 + i % tw;
    s_g[(i / tw) * pitch + i % tw] =
        (oh < height && ow < width)
            ? static_cast<acc_t>(g_plane[static_cast<int64_t>(oh) * width + ow])
            : acc_t(0);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
depthwise_conv2d_forward_kernel(const scalar_t* __restrict__ input,
                                const scalar_t* __restrict__ weight,
                                const scalar_t* __restrict__ bias,
                                scalar_t* __restrict__ output,
                                int channels, int height, int width, int ksize,
                                int tiles_w, bool flip) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* s_in = reinterpret_cast<acc_t*>(smem_raw);
  const int pad = ksize / 2;
  const int sh = kTileH + ksize - 1;
  const int sw = kTileW + ksize - 1;
  acc_t* s_w = s_in + sh * sw;

  const int64_t plane = blockIdx.x;
  const int c = static_cast<int>(plane % channels);
  const int h0 = (blockIdx.y / tiles_w) * kTileH;
  const int w0 = (blockIdx.y % tiles_w) * kTileW;
  const int64_t plane_size = static_cast<int64_t>(height) * width;
  const scalar_t* in_plane = input + plane * plane_size;

  const int taps = ksize * ksize;
  for (int i = threadIdx.x; i < taps; i += blockDim.x) {
    const int src = flip ? (taps - 1 - i) : i;
    s_w[i] = static_cast<acc_t>(weight[static_cast<int64_t>(c) * taps + src]);
  }
  stage_input_tile(s_in, in_plane, height, width, h0, w0, pad, sh, sw, sw,
                   static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
  __syncthreads();

  const int row = threadIdx.x / (kTileW / kPerThread);
  const int col = (threadIdx.x % (kTileW / kPerThread)) * kPerThread;
  const int oh = h0 + row;
  if (oh >= height) return;
  acc_t acc[kPerThread];
#pragma unroll
  for (int p = 0; p < kPerThread; ++p) acc[p] = acc_t(0);
  // rows of the filter that read only padding contribute nothing: skip them
  const int kh_begin = max(0, pad - oh);
  const int kh_end = min(ksize, height + pad - oh);
  for (int kh = kh_begin; kh < kh_end; ++kh) {
    const acc_t* s_row = s_in + (row + kh) * sw + col;
    const acc_t* w_row = s_w + kh * ksize;
    acc_t window[kPerThread];
#pragma unroll
    for (int p = 0; p < kPerThread; ++p) window[p] = s_row[p];
    for (int kw = 0; kw < ksize; ++kw) {
      const acc_t wv = w_row[kw];
#pragma unroll
      for (int p = 0; p < kPerThread; ++p) acc[p] += window[p] * wv;
      if (kw + 1 < ksize) {  // slide the window: s_row[kPerThread + kw] is inside the halo
#pragma unroll
        for (int p = 0; p < kPerThread - 1; ++p) window[p] = window[p + 1];
        window[kPerThread - 1] = s_row[kPerThread + kw];
      }
    }
  }
  const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
  scalar_t* out_row = output + plane * plane_size + static_cast<int64_t>(oh) * width;
#pragma unroll
  for (int p = 0; p < kPerThread; ++p) {
    const int ow = w0 + col + p;
    if (ow < width) out_row[ow] = static_cast<scalar_t>(acc[p] + b);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kWgradThreads)
depthwise_conv2d_weight_grad_kernel(const scalar_t* __restrict__ input,
                                    const scalar_t* __restrict__ grad_out,
                                    acc_t* __restrict__ workspace,  // [parts, C, K*K]
                                    int batch, int channels, int height, int width, int ksize,
                                    int tiles_w, int tiles_per_plane) {
  extern __shared__ unsigned char smem_raw[];
  acc_t* s_in = reinterpret_cast<acc_t*>(smem_raw);
  const int pad = ksize / 2;
  const int sh = kTileH + ksize - 1;
  const int sw = kTileW + ksize - 1;
  acc_t* s_g = s_in + sh * sw;

  const int c = blockIdx.x;
  const int part = blockIdx.y;
  const int parts = gridDim.y;
  const int taps = ksize * ksize;
  const int64_t plane_size = static_cast<int64_t>(height) * width;
  const int64_t items = static_cast<int64_t>(batch) * tiles_per_plane;

  acc_t acc[kMaxTapsPerThread];
#pragma unroll
  for (int j = 0; j < kMaxTapsPerThread; ++j) acc[j] = acc_t(0);

  for (int64_t item = part; item < items; item += parts) {
    const int n = static_cast<int>(item / tiles_per_plane);
    const int tile = static_cast<int>(item % tiles_per_plane);
    const int h0 = (tile / tiles_w) * kTileH;
    const int w0 = (tile % tiles_w) * kTileW;
    const int64_t plane = static_cast<int64_t>(n) * channels + c;
    const scalar_t* in_plane = input + plane * plane_size;
    const scalar_t* g_plane = grad_out + plane * plane_size;
    __syncthreads();  // the previous item's tiles are no longer read
    stage_input_tile(s_in, in_plane, height, width, h0, w0, pad, sh, sw, sw,
                     static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
    stage_grad_tile(s_g, g_plane, height, width, h0, w0, kTileH, kTileW, kTileW);
    __syncthreads();
    const int rows = min(kTileH, height - h0);
    const int cols = min(kTileW, width - w0);
#pragma unroll
    for (int j = 0; j < kMaxTapsPerThread; ++j) {
      const int tap = threadIdx.x + j * blockDim.x;
      if (tap < taps) {
        const int kh = tap / ksize;
        const int kw = tap % ksize;
        acc_t sum = acc_t(0);
        for (int r = 0; r < rows; ++r) {
          const acc_t* g_row = s_g + r * kTileW;
          const acc_t* i_row = s_in + (r + kh) * sw + kw;
          for (int q = 0; q < cols; ++q) sum += g_row[q] * i_row[q];
        }
        acc[j] += sum;
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kMaxTapsPerThread; ++j) {
    const int tap = threadIdx.x + j * blockDim.x;
    if (tap < taps)
      workspace[(static_cast<int64_t>(part) * channels + c) * taps + tap] = acc[j];
  }
}

template <typename scalar_t, typename acc_t>
__global__ void depthwise_conv2d_reduce_parts_kernel(const acc_t* __restrict__ workspace,
                                                     scalar_t* __restrict__ grad_weight,
                                                     int parts, int64_t count) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  acc_t sum = acc_t(0);
  for (int p = 0; p < parts; ++p) sum += workspace[static_cast<int64_t>(p) * count + i];
  grad_weight[i] = static_cast<scalar_t>(sum);
}

// ------------------------------------------------------------------------------------------------
// Kernels for a compile-time kernel size K and tile shape (see the top of this file)
// ------------------------------------------------------------------------------------------------
// A tile shape: TH x TW outputs of each of PLANES consecutive (n, c) planes per forward block.
// 16x32 x 1 plane for large maps; for maps that fit in 16x16 or 8x8 one block covers whole maps
// of 8 planes, so that small maps (classification's 14x14 and 7x7) do not leave most threads idle.
template <int TH_, int TW_, int PLANES_>
struct TileShape {
  static constexpr int TH = TH_, TW = TW_, PLANES = PLANES_;
  static constexpr int kPerThread = 8;  // forward outputs per thread, along W
  static constexpr int kFwdThreads = PLANES * TH * (TW / kPerThread);
  static_assert(TW % kPerThread == 0, "tile width must be a multiple of 8");
  // odd pitches: the threads of a warp that read different rows hit different banks
  static constexpr int staged_pitch(int k) { return TW + k; }  // TW + k - 1 values, made odd
  static constexpr int kGradPitch = TW + 1;
  static constexpr int forward_smem_elems(int k) {
    return PLANES * ((TH + k - 1) * staged_pitch(k) + k * k);
  }
  static constexpr int weight_grad_smem_elems(int k) {
    // the staged tiles during the loop, then the first round of the row reduction
    return (TH + k - 1) * staged_pitch(k) + TH * kGradPitch > (TH / 2) * k * k
               ? (TH + k - 1) * staged_pitch(k) + TH * kGradPitch
               : (TH / 2) * k * k;
  }
};
using TileLarge = TileShape<16, 32, 1>;
using TileMedium = TileShape<16, 16, 8>;
using TileSmall = TileShape<8, 8, 8>;

template <typename scalar_t, typename acc_t, int K, typename Tile>
__global__ void __launch_bounds__(Tile::kFwdThreads)
depthwise_conv2d_forward_k_kernel(const scalar_t* __restrict__ input,
                                  const scalar_t* __restrict__ weight,
                                  const scalar_t* __restrict__ bias,
                                  scalar_t* __restrict__ output, int64_t planes, int channels,
                                  int height, int width, int tiles_w, bool flip) {
  constexpr int TH = Tile::TH, TW = Tile::TW, PLANES = Tile::PLANES, P = Tile::kPerThread;
  constexpr int pad = K / 2;
  constexpr int sh = TH + K - 1;
  constexpr int sw = Tile::staged_pitch(K);
  constexpr int stage = sh * sw + K * K;  // one plane's staged input and filter
  extern __shared__ unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);

  const int64_t plane0 = static_cast<int64_t>(blockIdx.x) * PLANES;
  const int h0 = (blockIdx.y / tiles_w) * TH;
  const int w0 = (blockIdx.y % tiles_w) * TW;
  const int64_t plane_size = static_cast<int64_t>(height) * width;

  // stage every plane's filter and input tile; each plane's share of the threads does its own
  constexpr int threads_per_plane = Tile::kFwdThreads / PLANES;
  const int p_idx = threadIdx.x / threads_per_plane;
  const int t_in_plane = threadIdx.x % threads_per_plane;
  const int64_t plane = plane0 + p_idx;
  const bool plane_valid = plane < planes;
  const int c = static_cast<int>(plane % channels);
  acc_t* s_in = smem + p_idx * stage;
  acc_t* s_w = s_in + sh * sw;
  for (int i = t_in_plane; i < K * K; i += threads_per_plane)
    s_w[i] = plane_valid ? static_cast<acc_t>(
                               weight[static_cast<int64_t>(c) * K * K + (flip ? K * K - 1 - i : i)])
                         : acc_t(0);
  stage_input_tile(s_in, plane_valid ? input + plane * plane_size : nullptr, height, width, h0,
                   w0, pad, sh, TW + K - 1, sw, t_in_plane, threads_per_plane);
  __syncthreads();

  const int row = t_in_plane / (TW / P);
  const int col = (t_in_plane % (TW / P)) * P;
  const int oh = h0 + row;
  if (!plane_valid || oh >= height || w0 + col >= width) return;  // nothing of it in the image
  acc_t acc[P];
#pragma unroll
  for (int p = 0; p < P; ++p) acc[p] = acc_t(0);
  const int kh_begin = max(0, pad - oh);  // filter rows that read only padding are skipped
  const int kh_end = min(K, height + pad - oh);
  for (int kh = kh_begin; kh < kh_end; ++kh) {
    const acc_t* s_row = s_in + (row + kh) * sw + col;
    const acc_t* w_row = s_w + kh * K;
    acc_t x[P + K - 1];
#pragma unroll
    for (int j = 0; j < P + K - 1; ++j) x[j] = s_row[j];
#pragma unroll
    for (int kw = 0; kw < K; ++kw) {
      const acc_t wv = w_row[kw];
#pragma unroll
      for (int p = 0; p < P; ++p) acc[p] += x[p + kw] * wv;
    }
  }
  const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
  scalar_t* out_row = output + plane * plane_size + static_cast<int64_t>(oh) * width;
#pragma unroll
  for (int p = 0; p < P; ++p) {
    const int ow = w0 + col + p;
    if (ow < width) out_row[ow] = static_cast<scalar_t>(acc[p] + b);
  }
}

// Block (c, part): thread (kh, r) accumulates the K taps of filter row kh over output row r of
// each of the block's (n, tile) items. Tile::PLANES is not used: the items of a block are already
// several planes (the samples n) of its channel.
template <typename scalar_t, typename acc_t, int K, typename Tile>
__global__ void __launch_bounds__(K * Tile::TH)
depthwise_conv2d_weight_grad_k_kernel(const scalar_t* __restrict__ input,
                                      const scalar_t* __restrict__ grad_out,
                                      acc_t* __restrict__ workspace,  // [parts, C, K*K]
                                      int batch, int channels, int height, int width, int tiles_w,
                                      int tiles_per_plane) {
  constexpr int TH = Tile::TH, TW = Tile::TW;
  constexpr int pad = K / 2;
  constexpr int sh = TH + K - 1;
  constexpr int sw = Tile::staged_pitch(K);
  constexpr int Q = 8;  // outputs per inner step
  extern __shared__ unsigned char smem_raw[];
  acc_t* s_in = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* s_g = s_in + sh * sw;

  const int c = blockIdx.x;
  const int part = blockIdx.y;
  const int parts = gridDim.y;
  const int kh = threadIdx.x / TH;  // this thread's filter row
  const int r = threadIdx.x % TH;   // and output row of the tile
  const int64_t plane_size = static_cast<int64_t>(height) * width;
  const int64_t items = static_cast<int64_t>(batch) * tiles_per_plane;

  acc_t acc[K];
#pragma unroll
  for (int j = 0; j < K; ++j) acc[j] = acc_t(0);

  for (int64_t item = part; item < items; item += parts) {
    const int n = static_cast<int>(item / tiles_per_plane);
    const int tile = static_cast<int>(item % tiles_per_plane);
    const int h0 = (tile / tiles_w) * TH;
    const int w0 = (tile % tiles_w) * TW;
    const int64_t plane = static_cast<int64_t>(n) * channels + c;
    const scalar_t* g_plane = grad_out + plane * plane_size;
    __syncthreads();  // the previous item's tiles are no longer read
    stage_input_tile(s_in, input + plane * plane_size, height, width, h0, w0, pad, sh,
                     TW + K - 1, sw, static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
    stage_grad_tile(s_g, g_plane, height, width, h0, w0, TH, TW, Tile::kGradPitch);
    __syncthreads();
    if (h0 + r >= height) continue;  // this output row is outside the image (its grads are 0)
    const acc_t* g_row = s_g + r * Tile::kGradPitch;
    const acc_t* i_row = s_in + (r + kh) * sw;
#pragma unroll
    for (int q0 = 0; q0 < TW; q0 += Q) {
      if (w0 + q0 >= width) break;  // the rest of the row is outside the image
      acc_t g[Q], x[Q + K - 1];
#pragma unroll
      for (int j = 0; j < Q; ++j) g[j] = g_row[q0 + j];
#pragma unroll
      for (int j = 0; j < Q + K - 1; ++j) x[j] = i_row[q0 + j];
#pragma unroll
      for (int kw = 0; kw < K; ++kw) {
#pragma unroll
        for (int j = 0; j < Q; ++j) acc[kw] += g[j] * x[j + kw];
      }
    }
  }

  // sum the TH row partials of each tap in a fixed tree order through shared memory
  acc_t* red = reinterpret_cast<acc_t*>(smem_raw);  // [TH / 2][K * K]
  for (int half = TH / 2; half >= 1; half /= 2) {
    __syncthreads();
    if (r >= half && r < 2 * half) {
#pragma unroll
      for (int kw = 0; kw < K; ++kw) red[(r - half) * K * K + kh * K + kw] = acc[kw];
    }
    __syncthreads();
    if (r < half) {
#pragma unroll
      for (int kw = 0; kw < K; ++kw) acc[kw] += red[r * K * K + kh * K + kw];
    }
  }
  if (r == 0) {
#pragma unroll
    for (int kw = 0; kw < K; ++kw)
      workspace[(static_cast<int64_t>(part) * channels + c) * K * K + kh * K + kw] = acc[kw];
  }
}

}  // namespace mmunirep
