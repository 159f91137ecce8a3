// Direct depthwise 2-D convolution kernels (stride 1, "same" padding, odd square kernels) on
// contiguous NCHW tensors, accumulating in acc_t (float for half / bfloat16 / float, double for
// double). How they work and why: docs/en/advanced_guides/depthwise_op.md.
//
// - Forward (and input gradient: the same with the flipped filter): a block stages a tile of its
//   planes with the K - 1 halo in shared memory and each thread slides a register window along
//   a row of outputs; filter rows that read only padding are skipped.
// - Weight gradient: block (c, part) sums grad_out * shifted input over its share of the
//   channel's items in registers and writes one partial sum per tap into a workspace that a
//   second kernel reduces in a fixed order (deterministic, no atomics).
// - The "_k" kernels take K = 7, 13 or 31 at compile time (unrolled filter loops, windows in
//   registers); the others take it at run time, for any odd size and fp64. Maps of at most 16x16
//   are computed whole per block (TileShape), without the FMAs on padding.
// Shared memory is only ever the dynamic buffer (extern __shared__), which the tests' CUDA
// emulator poisons with NaN before every block (tests/test_ops/csrc/cuda_emulator.h).
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

// Stage the rows x cols box at (h0 - pad, w0 - pad) of a plane into rows of pitch `pitch` (zeros
// outside the image, and everywhere if in_plane is null); this is thread `first` of `stride`.
// Each thread owns columns, not elements: with stride >= cols it takes column first % cols of every
// (stride / cols)-th row (the stride % cols left-over threads idle), else columns first, first +
// stride, ... of every row. A column's rows inside the image are a range found once, so an element
// costs a load, a store and pointer increments instead of a division and bounds tests.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_input_tile(acc_t* s_in, const scalar_t* __restrict__ in_plane,
                                                 int height, int width, int h0, int w0, int pad,
                                                 int rows, int cols, int pitch, int first,
                                                 int stride) {
  const bool by_rows = stride >= cols;
  const int r_first = by_rows ? first / cols : 0, r_step = by_rows ? stride / cols : 1;
  if (r_first >= r_step) return;  // a left-over thread
  const int q_step = by_rows ? cols : stride;
  const int ih0 = h0 - pad, iw0 = w0 - pad;
  for (int q = by_rows ? first % cols : first; q < cols; q += q_step) {
    acc_t* dst = s_in + q;
    // rows [r_lo, r_hi) of this column are inside the image
    const bool column_inside =
        in_plane != nullptr && static_cast<unsigned>(iw0 + q) < static_cast<unsigned>(width);
    const int r_lo = column_inside ? min(max(-ih0, 0), rows) : rows;
    const int r_hi = max(r_lo, min(height - ih0, rows));
    int r = r_first;
    for (; r < r_lo; r += r_step) dst[r * pitch] = acc_t(0);
    if (r < r_hi) {
      const scalar_t* src = in_plane + static_cast<int64_t>(ih0 + r) * width + iw0 + q;
      const int64_t src_step = static_cast<int64_t>(r_step) * width;
#pragma unroll 4
      for (; r < r_hi; r += r_step, src += src_step) dst[r * pitch] = static_cast<acc_t>(*src);
    }
    for (; r < rows; r += r_step) dst[r * pitch] = acc_t(0);
  }
}

// stage grad_out's th x tw tile of a plane (zeros outside the image) in rows of pitch `pitch`:
// the walk of stage_input_tile without halo (rows and columns past the image read as zeros)
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void stage_grad_tile(acc_t* s_g, const scalar_t* __restrict__ g_plane,
                                                int height, int width, int h0, int w0, int th,
                                                int tw, int pitch, int first, int stride) {
  stage_input_tile(s_g, g_plane, height, width, h0, w0, 0, th, tw, pitch, first, stride);
}

// The (n, tile) items part, part + parts, ... of a weight-gradient block, of the batch x
// tiles_per_plane items of its channel, advanced with a carry (parts = gridDim.y) rather than
// divided out of a 64-bit item index. The steps are recomputed from the launch constants rather
// than held in registers for the whole kernel.
struct ItemWalk {
  int n, tile;
  __device__ ItemWalk(int tiles_per_plane)
      : n(static_cast<int>(blockIdx.y) / tiles_per_plane),
        tile(static_cast<int>(blockIdx.y) % tiles_per_plane) {}
  __device__ void next(int tiles_per_plane) {
    const int parts = static_cast<int>(gridDim.y);
    n += parts / tiles_per_plane;
    tile += parts % tiles_per_plane;
    if (tile >= tiles_per_plane) {
      tile -= tiles_per_plane;
      ++n;
    }
  }
};

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
  const int taps = ksize * ksize;
  const int64_t plane_size = static_cast<int64_t>(height) * width;

  acc_t acc[kMaxTapsPerThread];
#pragma unroll
  for (int j = 0; j < kMaxTapsPerThread; ++j) acc[j] = acc_t(0);

  for (ItemWalk it(tiles_per_plane); it.n < batch; it.next(tiles_per_plane)) {
    const int n = it.n;
    const int h0 = (it.tile / tiles_w) * kTileH;
    const int w0 = (it.tile % tiles_w) * kTileW;
    const int64_t plane = static_cast<int64_t>(n) * channels + c;
    const scalar_t* in_plane = input + plane * plane_size;
    const scalar_t* g_plane = grad_out + plane * plane_size;
    __syncthreads();  // the previous item's tiles are no longer read
    stage_input_tile(s_in, in_plane, height, width, h0, w0, pad, sh, sw, sw,
                     static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
    stage_grad_tile(s_g, g_plane, height, width, h0, w0, kTileH, kTileW, kTileW,
                    static_cast<int>(threadIdx.x), static_cast<int>(blockDim.x));
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

// Write the n <= P outputs acc + b of a thread to out[0, n). A full run of P at a 16-byte aligned
// address goes out in 16-byte stores: whole 32-byte sectors from fewer instructions, where the
// scalar stores of a warp (P outputs apart per lane) each touch a sector per lane.
template <int P, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_outputs(scalar_t* __restrict__ out, const acc_t (&acc)[P],
                                              acc_t b, int n) {
  constexpr int kPack = 16 / static_cast<int>(sizeof(scalar_t));
  struct alignas(16) Pack {
    scalar_t v[kPack];
  };
  if constexpr (P % kPack == 0) {
    if (n == P && reinterpret_cast<uintptr_t>(out) % 16 == 0) {
#pragma unroll
      for (int i = 0; i < P; i += kPack) {
        Pack pack;
#pragma unroll
        for (int j = 0; j < kPack; ++j) pack.v[j] = static_cast<scalar_t>(acc[i + j] + b);
        *reinterpret_cast<Pack*>(out + i) = pack;
      }
      return;
    }
  }
#pragma unroll
  for (int p = 0; p < P; ++p)
    if (p < n) out[p] = static_cast<scalar_t>(acc[p] + b);
}

// ------------------------------------------------------------------------------------------------
// Kernels for a compile-time kernel size K and tile shape (see the top of this file)
// ------------------------------------------------------------------------------------------------
// The most distinct 4-byte words that one of the 32 banks serves to the n lanes of a warp that
// read words[0, n) in one shared-memory load (1: conflict-free; equal words are a broadcast).
constexpr int warp_bank_ways(const int* words, int n) {
  int ways[32] = {};  // distinct words per bank: each counted at the first lane that reads it
  for (int lane = 0; lane < n; ++lane) {
    bool first = true;
    for (int prev = 0; prev < lane && first; ++prev) first = words[prev] != words[lane];
    ways[((words[lane] % 32) + 32) % 32] += first ? 1 : 0;
  }
  int worst = 0;
  for (int bank = 0; bank < 32; ++bank) worst = ways[bank] > worst ? ways[bank] : worst;
  return worst;
}
constexpr int max_of(int a, int b, int c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

// The weight gradient's (filter row kh, output row r) pairs of a whole-map tile (below) whose
// input row r + kh - k / 2 lies inside a map of `height` rows, numbered by kh, then r: thread t of
// the block takes pair t. The other pairs would multiply padding only. At K = 13 a 7-row map has
// 49 pairs of the 13 x 8 that a K x TH thread grid would run.
struct WholeMapRows {
  int k, height;
  struct Pair {
    int kh, r;  // kh == k: past the last pair
  };
  constexpr int first_row(int kh) const { return k / 2 - kh > 0 ? k / 2 - kh : 0; }
  constexpr int count(int kh) const {
    const int end = height + k / 2 - kh < height ? height + k / 2 - kh : height;
    return end > first_row(kh) ? end - first_row(kh) : 0;
  }
  constexpr int first_pair(int kh) const {
    int t = 0;
    for (int i = 0; i < kh; ++i) t += count(i);
    return t;
  }
  constexpr int pairs() const { return first_pair(k); }
  constexpr Pair pair(int t) const {
    for (int kh = 0; kh < k; t -= count(kh), ++kh)
      if (t < count(kh)) return {kh, first_row(kh) + t};
    return {k, 0};
  }
};

// A tile shape: TH x TW outputs of each of PLANES consecutive (n, c) planes per forward block, P
// consecutive outputs of a row per thread. Large maps: 16x32 tiles of 4 planes (2 for K > 13),
// 16 outputs per thread (per filter row 16 * K FMAs for 16 + K - 1 + K shared-memory loads: 208
// for 41 at K = 13, where 8 outputs per thread do 104 for 33). Maps that fit in 8x8 or 16x16:
// one block covers whole maps of 8 planes, a whole row per thread, so that small maps
// (classification's 14x14 and 7x7) do not leave most threads idle.
//
// Whole-map tiles (WHOLE; with_tile_shape uses them only for maps of at most TH x TW, so a tile
// starts at row and column 0 and everything of it past the map is padding): the halo around the
// map is all padding, so they stage the map alone, and the kernels leave out, at compile time,
// every FMA whose input column lies left or right of the map's TW columns (window_in_map), and
// the weight gradient runs only the (filter row, output row) pairs whose input row is inside it
// (WholeMapRows). At K = 13 a 7x7 map's forward row of 8 outputs takes 62 FMAs instead of 104;
// its weight gradient 49 pairs of 62 FMAs instead of 104 pairs of 104.
//
// Forward threads: a warp covers 8 consecutive rows of kWarpPlanes planes (up to 4) in
// kWarpCols column groups (P outputs of each row; 1 where the block has 4 planes), so that a
// column group past the map's right edge is whole warps that return at once, and 8 rows past the
// map's bottom too. With odd row pitches the 8 rows fall in different banks, the column
// groups of a warp add multiples of P, and each plane's staging area (plane_stride) is padded so
// that the planes of a warp take the other banks: every shared-memory load of the forward loop is
// conflict-free (forward_bank_ways below checks it at compile time).
template <int TH_, int TW_, int PLANES_, int P_, bool WHOLE_>
struct TileShape {
  static constexpr int TH = TH_, TW = TW_, PLANES = PLANES_;
  static constexpr int kPerThread = P_;  // forward outputs per thread, along W
  static constexpr bool kWholeMap = WHOLE_;
  static constexpr int kColGroups = TW / kPerThread;
  static constexpr int kWarpPlanes = PLANES < 4 ? PLANES : 4;
  static constexpr int kWarpCols = 4 / kWarpPlanes;
  static constexpr int kFwdThreads = PLANES * TH * kColGroups;
  static_assert(TW % kPerThread == 0, "a tile row must be whole threads' outputs");
  static_assert(4 % kWarpPlanes == 0 && PLANES % kWarpPlanes == 0 && kColGroups % kWarpCols == 0 &&
                    TH % 8 == 0,
                "a warp covers 8 rows of kWarpPlanes whole planes in kWarpCols column groups");
  static_assert(!kWholeMap || kColGroups == 1, "a whole-map tile gives a thread a whole row");
  // The staged box: the tile and its K - 1 halo, or a whole map alone. Staged (row, column) =
  // (i, j) of the tile with its halo, less staged_offset (the halo's pad rows and columns).
  static constexpr int halo(int k) { return kWholeMap ? 0 : k - 1; }
  static constexpr int staged_offset(int k) { return kWholeMap ? k / 2 : 0; }
  static constexpr int staged_rows(int k) { return TH + halo(k); }
  // odd pitches: the threads of a warp that read different rows hit different banks
  static constexpr int staged_pitch(int k) { return TW + halo(k) + 1; }  // TW even, k odd
  static constexpr int kGradPitch = TW + 1;
  // whether column j of a thread's window (j = 0 .. P + K - 2, the tile's column j - K / 2) can
  // be inside the map: always but for whole-map tiles, whose columns past TW are padding
  static constexpr bool window_in_map(int k, int j) {
    return !kWholeMap || (j >= k / 2 && j < k / 2 + TW);
  }
  // one plane's staged input rows and filter, padded (by the least of 0 to 31 elements) so that
  // the planes of a warp start in the banks that make its loads conflict-free
  static constexpr int plane_stride(int k) {
    const int n = staged_rows(k) * staged_pitch(k) + k * k;
    for (int pad = 0; pad < 32; ++pad)
      if (forward_bank_ways_with(k, n + pad) == 1) return n + pad;
    return n;  // none: the static_assert in the forward kernel reports it
  }
  static constexpr int forward_smem_elems(int k) { return PLANES * plane_stride(k); }
  // weight gradient: samples per item, so that an item's rows hold 32 outputs as a 16x32 tile's
  static constexpr int kWgradSamples = 32 / TW;
  static constexpr int weight_grad_smem_elems(int k) {
    // the staged tiles during the loop, then the first round of the row reduction
    const int staged = kWgradSamples * (staged_rows(k) * staged_pitch(k) + TH * kGradPitch);
    const int reduce = kWholeMap ? TH * k * k : (TH / 2) * k * k;  // [pairs][k] or [TH / 2][k * k]
    return staged > reduce ? staged : reduce;
  }

  // forward thread -> (plane of the block, output row, first output column) of its P outputs
  struct Position {
    int plane, row, col;
  };
  static constexpr Position forward_position(int tid) {
    // lanes: row fastest, then column group, then plane; warps: column groups fastest, then
    // rows, then planes
    const int lane = tid % 32, warp = tid / 32;
    const int col_warps = kColGroups / kWarpCols, row_groups = TH / 8;
    const int cols = (warp % col_warps) * kWarpCols + (lane / 8) % kWarpCols;
    const int rows = (warp / col_warps) % row_groups;
    const int planes = warp / (col_warps * row_groups);
    return {planes * kWarpPlanes + lane / (8 * kWarpCols), rows * 8 + lane % 8,
            cols * kPerThread};
  }

  // The most distinct 4-byte words one bank serves to a warp in one shared-memory load of the
  // forward loop: the first input of each thread's window and the filter tap (its other loads
  // shift all lanes by the same offset). 1 means conflict-free.
  static constexpr int forward_bank_ways(int k) {
    return forward_bank_ways_with(k, plane_stride(k));
  }
  static constexpr int forward_bank_ways_with(int k, int stride) {
    int worst = 1;
    for (int warp = 0; warp < kFwdThreads / 32; ++warp) {
      int inputs[32] = {}, taps[32] = {};
      for (int lane = 0; lane < 32; ++lane) {
        const Position p = forward_position(warp * 32 + lane);
        inputs[lane] = p.plane * stride + p.row * staged_pitch(k) + p.col;
        taps[lane] = p.plane * stride + (TH + k - 1) * staged_pitch(k);
      }
      worst = max_of(worst, warp_bank_ways(inputs, 32), warp_bank_ways(taps, 32));
    }
    return worst;
  }
  // Weight-gradient threads: thread (kh, r) of a K x TH grid owns the K taps of filter row kh for
  // output row r of the tile, numbered by 8-row group, then kh, then r, so that the warps of a
  // group past the map's bottom edge skip their items' work together; whole-map tiles run the
  // WholeMapRows pairs only, in whole warps.
  struct WgradThread {
    int kh, r;
    bool active;
  };
  static constexpr WgradThread weight_grad_thread(int k, int height, int tid) {
    if constexpr (kWholeMap) {
      const WholeMapRows::Pair p = WholeMapRows{k, height}.pair(tid);
      return {p.kh, p.r, p.kh < k};
    } else {
      const int group = tid / (8 * k), in_group = tid % (8 * k);
      return {in_group / 8, group * 8 + in_group % 8, true};
    }
  }
  static constexpr int weight_grad_threads(int k, int height) {
    return kWholeMap ? (WholeMapRows{k, height}.pairs() + 31) / 32 * 32 : k * TH;
  }
  // the kernel's __launch_bounds__: whole warps of up to K x TH pairs (a launch with more threads
  // than its bounds fails on a GPU, and the emulator cannot see them: weight_grad_threads_fit)
  static constexpr int weight_grad_max_threads(int k) {
    return kWholeMap ? (k * TH + 31) / 32 * 32 : k * TH;
  }
  static constexpr bool weight_grad_threads_fit(int k) {
    for (int height = 1; height <= TH; ++height)
      if (weight_grad_threads(k, height) > weight_grad_max_threads(k)) return false;
    return true;
  }
  // The same as forward_bank_ways for the weight-gradient loop: its first staged input and
  // gradient, for every map height a whole-map tile serves (idle lanes read nothing).
  static constexpr int weight_grad_bank_ways(int k) {
    int worst = 1;
    for (int height = kWholeMap ? 1 : TH; height <= TH; ++height) {
      const int threads = weight_grad_threads(k, height);
      for (int warp = 0; warp * 32 < threads; ++warp) {
        int inputs[32] = {}, grads[32] = {}, lanes = 0;
        for (int lane = 0; lane < 32 && warp * 32 + lane < threads; ++lane) {
          const WgradThread t = weight_grad_thread(k, height, warp * 32 + lane);
          if (!t.active) continue;
          inputs[lanes] = (t.r + t.kh - staged_offset(k)) * staged_pitch(k);
          grads[lanes++] = t.r * kGradPitch;
        }
        worst = max_of(worst, warp_bank_ways(inputs, lanes), warp_bank_ways(grads, lanes));
      }
    }
    return worst;
  }
};
using TileLarge = TileShape<16, 32, 4, 16, false>;
using TileLargeBigK = TileShape<16, 32, 2, 16, false>;  // K > 13: 4 planes' halos exceed 48 KiB
using TileMedium = TileShape<16, 16, 8, 16, true>;
using TileSmall = TileShape<8, 8, 8, 8, true>;

template <typename scalar_t, typename acc_t, int K, typename Tile>
__global__ void __launch_bounds__(Tile::kFwdThreads)
depthwise_conv2d_forward_k_kernel(const scalar_t* __restrict__ input,
                                  const scalar_t* __restrict__ weight,
                                  const scalar_t* __restrict__ bias,
                                  scalar_t* __restrict__ output, int64_t planes, int channels,
                                  int height, int width, int tiles_w, bool flip) {
  constexpr int TH = Tile::TH, TW = Tile::TW, PLANES = Tile::PLANES, P = Tile::kPerThread;
  constexpr int pad = K / 2;
  constexpr int sh = Tile::staged_rows(K);
  constexpr int sw = Tile::staged_pitch(K);
  constexpr int off = Tile::staged_offset(K);
  constexpr int stage = Tile::plane_stride(K);  // one plane's staged input and filter
  static_assert(sizeof(acc_t) != 4 || Tile::forward_bank_ways(K) == 1,
                "forward_k: bank conflicts in the forward loop's shared-memory loads");
  extern __shared__ unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);

  const int64_t plane0 = static_cast<int64_t>(blockIdx.x) * PLANES;
  const int h0 = (blockIdx.y / tiles_w) * TH;
  const int w0 = (blockIdx.y % tiles_w) * TW;
  const int64_t plane_size = static_cast<int64_t>(height) * width;

  {  // stage every plane's filter and input tile; each plane's share of the threads does its own
    constexpr int threads_per_plane = Tile::kFwdThreads / PLANES;
    const int p_idx = threadIdx.x / threads_per_plane;
    const int t_in_plane = threadIdx.x % threads_per_plane;
    const int64_t plane = plane0 + p_idx;
    const bool plane_valid = plane < planes;
    const int c = static_cast<int>(plane % channels);
    acc_t* s_in = smem + p_idx * stage;
    acc_t* s_w = s_in + sh * sw;
    for (int i = t_in_plane; i < K * K; i += threads_per_plane)
      s_w[i] = plane_valid ? static_cast<acc_t>(weight[static_cast<int64_t>(c) * K * K +
                                                       (flip ? K * K - 1 - i : i)])
                           : acc_t(0);
    stage_input_tile(s_in, plane_valid ? input + plane * plane_size : nullptr, height, width,
                     h0, w0, pad - off, sh, TW + Tile::halo(K), sw, t_in_plane,
                     threads_per_plane);
  }
  __syncthreads();

  const auto pos = Tile::forward_position(static_cast<int>(threadIdx.x));
  const int64_t plane = plane0 + pos.plane;
  const int row = pos.row, col = pos.col;
  const int oh = h0 + row;
  if (plane >= planes || oh >= height || w0 + col >= width) return;  // nothing of it in the image
  const acc_t* s_in = smem + pos.plane * stage;
  const acc_t* s_w = s_in + sh * sw;
  acc_t acc[P];
#pragma unroll
  for (int p = 0; p < P; ++p) acc[p] = acc_t(0);
  const int kh_begin = max(0, pad - oh);  // filter rows that read only padding are skipped
  const int kh_end = min(K, height + pad - oh);
  // the rows' addresses advance by a constant, rather than being recomputed from the thread's
  // position, which ptxas would rematerialize inside the loop
  const acc_t* s_row = s_in + (row + kh_begin - off) * sw + col;
  const acc_t* w_row = s_w + kh_begin * K;
  for (int kh = kh_begin; kh < kh_end; ++kh, s_row += sw, w_row += K) {
    acc_t x[P + K - 1];  // the row's window: x[j] is column j - pad of the thread's first output
#pragma unroll
    for (int j = 0; j < P + K - 1; ++j)
      x[j] = Tile::window_in_map(K, j) ? s_row[j - off] : acc_t(0);
#pragma unroll
    for (int kw = 0; kw < K; ++kw) {
      const acc_t wv = w_row[kw];
#pragma unroll
      for (int p = 0; p < P; ++p)
        if (Tile::window_in_map(K, p + kw)) acc[p] += x[p + kw] * wv;  // folded at compile time
    }
  }
  const int c = static_cast<int>(plane % channels);
  const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[c]) : acc_t(0);
  store_outputs<P>(output + plane * plane_size + static_cast<int64_t>(oh) * width + w0 + col, acc,
                   b, min(P, width - w0 - col));
}

// Block (c, part): thread (kh, r) accumulates the K taps of filter row kh over output row r of
// each of the block's items (Tile::weight_grad_thread: every (kh, r) of a K x TH grid, or for a
// whole-map tile only the pairs whose input row is inside the map, in Tile::weight_grad_threads
// threads). An item is one tile of Tile::kWgradSamples consecutive samples n of the block's
// channel (Tile::PLANES is the forward's), so that an item of a small-map tile holds as many
// 8-output steps as a 16x32 tile's row and the per-item work (barriers, staging set-up, the item
// walk) is spread as thinly.
template <typename scalar_t, typename acc_t, int K, typename Tile>
__global__ void __launch_bounds__(Tile::weight_grad_max_threads(K))
depthwise_conv2d_weight_grad_k_kernel(const scalar_t* __restrict__ input,
                                      const scalar_t* __restrict__ grad_out,
                                      acc_t* __restrict__ workspace,  // [parts, C, K*K]
                                      int batch, int channels, int height, int width, int tiles_w,
                                      int tiles_per_plane) {
  constexpr int TH = Tile::TH, TW = Tile::TW, S = Tile::kWgradSamples;
  constexpr int pad = K / 2;
  constexpr int sh = Tile::staged_rows(K);
  constexpr int sw = Tile::staged_pitch(K);
  constexpr int off = Tile::staged_offset(K);
  constexpr int stage = sh * sw + TH * Tile::kGradPitch;  // one sample's input and grad tiles
  constexpr int Q = 8;  // outputs per inner step
  static_assert(sizeof(acc_t) != 4 || Tile::weight_grad_bank_ways(K) == 1,
                "weight_grad_k: bank conflicts in the weight-gradient loop's shared-memory loads");
  static_assert(Tile::weight_grad_threads_fit(K),
                "weight_grad_k: a launch would exceed the kernel's __launch_bounds__");
  extern __shared__ unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);

  const int c = blockIdx.x;
  const int part = blockIdx.y;
  // the K x TH grid's threads: a compile-time count, which spares the staging loops a division
  const int threads = Tile::kWholeMap ? static_cast<int>(blockDim.x) : K * TH;
  const auto me = Tile::weight_grad_thread(K, height, static_cast<int>(threadIdx.x));
  const int kh = me.kh;  // this thread's filter row
  const int r = me.r;    // and output row of the tile
  const int64_t plane_size = static_cast<int64_t>(height) * width;
  const int groups = (batch + S - 1) / S;  // items per tile position

  acc_t acc[K];
#pragma unroll
  for (int j = 0; j < K; ++j) acc[j] = acc_t(0);

  for (ItemWalk it(tiles_per_plane); it.n < groups; it.next(tiles_per_plane)) {
    const int h0 = (it.tile / tiles_w) * TH;
    const int w0 = (it.tile % tiles_w) * TW;
    const int samples = min(S, batch - it.n * S);
    __syncthreads();  // the previous item's tiles are no longer read
    if constexpr (Tile::kWholeMap) {
      // The S samples' maps, each thread the same positions of every one: a whole-map tile has
      // about one position per thread, so stage_input_tile's set-up for each of the 2 * S
      // tiles (~30 instructions) would cost more than the copying.
      static_assert(sw == Tile::kGradPitch, "whole maps: input and gradient share a layout");
      const int64_t first = (static_cast<int64_t>(it.n) * S * channels + c) * plane_size;
      const int64_t step = static_cast<int64_t>(channels) * plane_size;  // to the next sample
      for (int pos = threadIdx.x; pos < TH * TW; pos += threads) {
        const int i = pos / TW, j = pos % TW;
        const bool inside = i < height && j < width;
        const int64_t src = first + (inside ? i * width + j : 0);
#pragma unroll
        for (int p = 0; p < S; ++p) {
          const bool read = inside && p < samples;  // a sample past the batch is staged as zeros
          smem[p * stage + i * sw + j] =
              read ? static_cast<acc_t>(input[src + p * step]) : acc_t(0);
          smem[p * stage + sh * sw + i * sw + j] =
              read ? static_cast<acc_t>(grad_out[src + p * step]) : acc_t(0);
        }
      }
    } else {
#pragma unroll
      for (int p = 0; p < S; ++p) {
        const int64_t plane = static_cast<int64_t>(it.n * S + p) * channels + c;
        acc_t* s_in = smem + p * stage;
        // a sample past the batch is staged as zeros (and skipped below)
        stage_input_tile(s_in, p < samples ? input + plane * plane_size : nullptr, height,
                         width, h0, w0, pad, sh, TW + K - 1, sw, static_cast<int>(threadIdx.x),
                         threads);
        stage_grad_tile(s_in + sh * sw, p < samples ? grad_out + plane * plane_size : nullptr,
                        height, width, h0, w0, TH, TW, Tile::kGradPitch,
                        static_cast<int>(threadIdx.x), threads);
      }
    }
    __syncthreads();
    // no pair, or this output row is outside the image (its grads are 0)
    if (!me.active || h0 + r >= height) continue;
#pragma unroll
    for (int p = 0; p < S; ++p) {
      if (p >= samples) break;
      const acc_t* g_row = smem + p * stage + sh * sw + r * Tile::kGradPitch;
      const acc_t* i_row = smem + p * stage + (r + kh - off) * sw;
#pragma unroll
      for (int q0 = 0; q0 < TW; q0 += Q) {
        if (w0 + q0 >= width) break;  // the rest of the row is outside the image
        // x[j]: column q0 + j - pad of the tile (whole-map tiles: not staged, and skipped,
        // outside the map's TW columns)
        acc_t g[Q], x[Q + K - 1];
#pragma unroll
        for (int j = 0; j < Q; ++j) g[j] = g_row[q0 + j];
#pragma unroll
        for (int j = 0; j < Q + K - 1; ++j)
          x[j] = Tile::window_in_map(K, q0 + j) ? i_row[q0 + j - off] : acc_t(0);
#pragma unroll
        for (int kw = 0; kw < K; ++kw) {
#pragma unroll
          for (int j = 0; j < Q; ++j)
            if (Tile::window_in_map(K, q0 + j + kw)) acc[kw] += g[j] * x[j + kw];
        }
      }
    }
  }

  const int64_t out = (static_cast<int64_t>(part) * channels + c) * K * K;
  if constexpr (Tile::kWholeMap) {
    // each tap's sum over the pairs of its filter row, in their order, through shared memory
    const WholeMapRows rows{K, height};
    acc_t* red = reinterpret_cast<acc_t*>(smem_raw);  // [pairs][K]
    __syncthreads();
    if (me.active) {
#pragma unroll
      for (int kw = 0; kw < K; ++kw) red[threadIdx.x * K + kw] = acc[kw];
    }
    __syncthreads();
    for (int tap = threadIdx.x; tap < K * K; tap += threads) {
      const int tap_kh = tap / K, first = rows.first_pair(tap_kh), count = rows.count(tap_kh);
      acc_t sum = acc_t(0);
      for (int i = 0; i < count; ++i) sum += red[(first + i) * K + tap % K];
      workspace[out + tap] = sum;
    }
  } else {
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
      for (int kw = 0; kw < K; ++kw) workspace[out + kh * K + kw] = acc[kw];
    }
  }
}

}  // namespace mmunirep
