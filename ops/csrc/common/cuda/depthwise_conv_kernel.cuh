// Direct depthwise 2-D convolution kernels (stride 1, "same" padding, odd square kernels).
//
// Layout: NCHW, contiguous; a "plane" is one (n, c) image of H x W. Accumulation is in acc_t
// (float for half / bfloat16 / float, double for double).
//
// Forward (and input gradient, which is the same computation with the flipped filter): a block
// computes a TILE_H x TILE_W tile of one plane. It stages the input tile plus its K-1 halo and the
// plane's K x K filter in shared memory (zeros outside the image), then each thread keeps
// PER_THREAD consecutive outputs of one row in registers and slides a register window along the
// row; filter rows that fall entirely outside the image are skipped (and, for maps that fit in
// one tile, the columns outside it: whole-map tiles below).
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
// - forward / input gradient: P outputs per thread; per filter row a thread loads its P + K - 1
//   inputs once and does P * K FMAs; 16x32 tiles of 4 planes (2 for K = 31) with P = 16, or, for
//   maps that fit, whole 16x16 or 8x8 maps of 8 planes per block with a row per thread
//   (TileShape; MMUNIREP_DWCONV_FWD_TILE picks other large-map tiles, to measure them, and
//   MMUNIREP_DWCONV_FWD_PIPELINE=1 a pipelined kernel for fp32 on any tile: one wave of blocks
//   walking the tiles, the next one copied in by cp.async during this one's FMAs);
// - weight gradient: thread (kh, r) owns the K taps of filter row kh for output row r of the tile
//   and accumulates them in registers over all its items (8 outputs at a time: 8 + K - 1 inputs
//   and 8 gradients loaded for 8 * K FMAs; an item is a 16x32 tile of one sample, or a 16x16 /
//   8x8 tile of 2 / 4 samples), then the block sums its rows through shared memory in a fixed
//   order (deterministic); a pipelined variant for large maps (MMUNIREP_DWCONV_PIPELINE=1, not
//   the default until a GPU measures it) loads the next item while it computes this one (fp16 /
//   bf16: into registers, stored after; fp32: by cp.async straight into shared memory), with two
//   sets of staging buffers and one barrier per item;
// - whole-map tiles (maps of at most 16x16) stage the map without its halo and leave out, at
//   compile time, the FMAs on padding left and right of the map, and their weight gradient runs
//   only the (kh, r) whose input row is inside the map (TileShape::kWholeMap, WholeMapRows).
//   Larger maps skip the filter rows above and below the image; their tiles at the image's left
//   and right edges still multiply the halo's zeros (a run-time test per FMA would cost more than
//   the K / 2 columns of an edge tile it saves).
// Shared-memory rows have an odd pitch and the planes of a block are padded apart, so that every
// shared-memory load of the forward and weight-gradient loops is conflict-free: TileShape's
// forward_bank_ways / weight_grad_bank_ways compute it from the kernels' own thread mapping and a
// static_assert in each kernel requires it. Tiles are staged column by column (stage_input_tile),
// and a thread's P forward outputs go out in 16-byte stores where the row allows.
// Shared memory is only ever the dynamic buffer (extern __shared__): the tests'
// CUDA emulator poisons it with NaN before every block (tests/csrc/cuda_emulator.h).
// At the end of this file, tensor-core (wmma) kernels for half / bfloat16, opt-in until a GPU
// measures them: the weight gradient (MMUNIREP_DWCONV_WGRAD_TC=1) and the forward / input
// gradient (MMUNIREP_DWCONV_FWD_TC=1), as products whose diagonals, or Toeplitz matrices of the
// filter rows, hold the taps.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#endif

namespace mmunirep {

constexpr int kTileH = 16;
constexpr int kTileW = 32;
constexpr int kPerThread = 4;   // outputs per thread, along W
constexpr int kThreads = 128;   // kTileH * kTileW / kPerThread
constexpr int kMaxKernel = 31;
constexpr int kWgradThreads = 256;
constexpr int kMaxTapsPerThread = (kMaxKernel * kMaxKernel + kWgradThreads - 1) / kWgradThreads;

// cp.async: a 4-byte element from global to shared memory without passing through registers
// (sm_80 and newer; older GPUs copy it at once, and the tests' emulator, MMUNIREP_CUDA_EMULATOR,
// copies it when waited for or at once, depending on its schedule). A thread commits its copies
// as a group (async_copy_commit) and async_copy_wait_all waits for all of its own: other threads
// see them after a __syncthreads() that follows the wait.
template <typename T>
__device__ __forceinline__ void async_copy(T* smem_dst, const T* __restrict__ src) {
  static_assert(sizeof(T) == 4, "async_copy: 4-byte elements");
#if defined(MMUNIREP_CUDA_EMULATOR)
  ::cuda_emu::async_copy(smem_dst, src, sizeof(T));
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem_dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src) : "memory");
#else
  *smem_dst = *src;
#endif
}
__device__ __forceinline__ void async_copy_commit() {
#if defined(MMUNIREP_CUDA_EMULATOR)
  ::cuda_emu::async_copy_commit();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void async_copy_wait_all() {
#if defined(MMUNIREP_CUDA_EMULATOR)
  ::cuda_emu::async_copy_wait_all();
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
#endif
}

// Stage the rows x cols box at (h0 - pad, w0 - pad) of a plane into rows of pitch `pitch` (zeros
// outside the image, and everywhere if in_plane is null); this is thread `first` of `stride`.
// ASYNC: the elements inside the image by async_copy (scalar_t is acc_t), the zeros by stores.
// Each thread owns columns, not elements: with stride >= cols it takes column first % cols of every
// (stride / cols)-th row (the stride % cols left-over threads idle), else columns first, first +
// stride, ... of every row. A column's rows inside the image are a range found once, so an element
// costs a load, a store and pointer increments: an element-wise walk (a division, a 64-bit
// product and both bounds tests per element) took about 30 instructions per element, which was a
// quarter of a forward block's instructions for large maps and more for small ones.
template <typename scalar_t, typename acc_t, bool ASYNC = false>
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
      for (; r < r_hi; r += r_step, src += src_step) {
        if constexpr (ASYNC) async_copy(dst + r * pitch, src);
        else dst[r * pitch] = static_cast<acc_t>(*src);
      }
    }
    for (; r < rows; r += r_step) dst[r * pitch] = acc_t(0);
  }
}

// stage grad_out's th x tw tile of a plane (zeros outside the image) in rows of pitch `pitch`:
// the walk of stage_input_tile without halo (rows and columns past the image read as zeros)
template <typename scalar_t, typename acc_t, bool ASYNC = false>
__device__ __forceinline__ void stage_grad_tile(acc_t* s_g, const scalar_t* __restrict__ g_plane,
                                                int height, int width, int h0, int w0, int th,
                                                int tw, int pitch, int first, int stride) {
  stage_input_tile<scalar_t, acc_t, ASYNC>(s_g, g_plane, height, width, h0, w0, 0, th, tw, pitch,
                                           first, stride);
}

// The weight gradient's items of a channel: `groups` groups of samples (one sample, or a whole-map
// tile's few) times tiles_h x tiles_w tiles, numbered by group, then tile row, then tile column.
// Block (c, part) takes items part, part + parts, ... (parts = gridDim.y); the host splits that
// step into whole groups, tile rows and tile columns (make), so that the kernels walk their items
// with additions and carries. Dividing an item index by the tile counts on the GPU costs an
// integer division routine (~25 instructions each): two per item were about 55 of the ~460
// instructions of a K = 7 item loop besides its staging. As kernel parameters the steps sit in
// the constant bank, not in registers.
struct ItemGrid {
  int groups, tiles_h, tiles_w;
  int step_n, step_h, step_w;  // parts items = step_n groups + step_h tile rows + step_w columns
  static ItemGrid make(int groups, int tiles_h, int tiles_w, int parts) {
    const int tiles = tiles_h * tiles_w, rest = parts % tiles;
    return {groups, tiles_h, tiles_w, parts / tiles, rest / tiles_w, rest % tiles_w};
  }
};

// A block's walk over its items (ItemGrid): sample group n, tile row th and tile column tw.
struct ItemWalk {
  int n, th, tw;
  __device__ explicit ItemWalk(const ItemGrid& g) : ItemWalk(g, static_cast<int>(blockIdx.y)) {}
  // the walk of `part` (the weight gradient's blockIdx.y; the pipelined forward's blockIdx.x)
  __device__ ItemWalk(const ItemGrid& g, int part) {
    const int tiles = g.tiles_h * g.tiles_w;
    n = part / tiles;
    th = part % tiles / g.tiles_w;
    tw = part % tiles % g.tiles_w;
  }
  __device__ bool valid(const ItemGrid& g) const { return n < g.groups; }
  __device__ void next(const ItemGrid& g) {
    tw += g.step_w;
    th += g.step_h;
    n += g.step_n;
    if (tw >= g.tiles_w) {
      tw -= g.tiles_w;
      ++th;
    }
    if (th >= g.tiles_h) {
      th -= g.tiles_h;
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
                                    int channels, int height, int width, int ksize,
                                    ItemGrid items) {  // groups: the batch
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

  for (ItemWalk it(items); it.valid(items); it.next(items)) {
    const int n = it.n;
    const int h0 = it.th * kTileH;
    const int w0 = it.tw * kTileW;
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

// A thread's share of a ROWS x COLS box staged by THREADS threads, held in registers between a
// load from global memory and the store to shared memory, so that the loads of the next item are
// in flight while the current one is computed (the pipelined weight gradient below). The walk is
// stage_input_tile's with compile-time sizes: with THREADS >= COLS thread t takes column t % COLS
// of rows t / COLS + i * (THREADS / COLS), i < kRows (the THREADS % COLS left-over threads
// none); else columns t + j * THREADS of every row. Values outside the image load as zeros.
template <typename scalar_t, typename acc_t, int ROWS, int COLS, int THREADS>
struct BoxPrefetch {
  static constexpr bool kByRows = THREADS >= COLS;
  static constexpr int kRowStep = kByRows ? THREADS / COLS : 1;
  static constexpr int kRows = (ROWS + kRowStep - 1) / kRowStep;
  static constexpr int kCols = kByRows ? 1 : (COLS + THREADS - 1) / THREADS;
  scalar_t v[kCols][kRows];

  static __device__ __forceinline__ int first_row(int t) { return kByRows ? t / COLS : 0; }
  static __device__ __forceinline__ int column(int t, int j) {
    return kByRows ? t % COLS : t + j * THREADS;
  }
  // the box at (h0 - pad, w0 - pad) of a plane (all zeros if `plane` is null)
  __device__ __forceinline__ void load(const scalar_t* __restrict__ plane, int height, int width,
                                       int h0, int w0, int pad, int t) {
    const int r0 = first_row(t), ih0 = h0 - pad + r0;
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      const int q = column(t, j), iw = w0 - pad + q;
      const bool column_inside = plane != nullptr && r0 < kRowStep && q < COLS &&
                                 static_cast<unsigned>(iw) < static_cast<unsigned>(width);
      const int64_t first = column_inside ? static_cast<int64_t>(ih0) * width + iw : 0;
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const int ih = ih0 + i * kRowStep;
        const bool inside = column_inside && r0 + i * kRowStep < ROWS &&
                            static_cast<unsigned>(ih) < static_cast<unsigned>(height);
        v[j][i] = inside ? plane[first + static_cast<int64_t>(i) * kRowStep * width]
                         : scalar_t(0);
      }
    }
  }
  // into rows of pitch `pitch` at dst
  __device__ __forceinline__ void store(acc_t* dst, int pitch, int t) const {
    const int r0 = first_row(t);
    if (r0 >= kRowStep) return;  // a left-over thread
#pragma unroll
    for (int j = 0; j < kCols; ++j) {
      const int q = column(t, j);
      if (q >= COLS) continue;
#pragma unroll
      for (int i = 0; i < kRows; ++i)
        if (r0 + i * kRowStep < ROWS)
          dst[(r0 + i * kRowStep) * pitch + q] = static_cast<acc_t>(v[j][i]);
    }
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
// column group past the map's right edge is whole warps that return at once (with lanes of both
// column groups, a 40-wide map's second 16x32 tile ran its warps for its 8 columns), and 8 rows
// past the map's bottom too. With odd row pitches the 8 rows fall in different banks, the column
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
  static constexpr int weight_grad_smem_elems(int k, bool pipelined = false) {
    // the staged tiles during the loop (two sets when pipelined), then the first round of the
    // row reduction
    const int staged = (pipelined ? 2 : 1) * kWgradSamples *
                       (staged_rows(k) * staged_pitch(k) + TH * kGradPitch);
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
  // group past the map's bottom edge skip their items' work together (numbered by kh, then r, a
  // warp held 2 filter rows of all 16 output rows); whole-map tiles run the WholeMapRows pairs
  // only, in whole warps.
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
// Forward tiles of large maps to measure against TileLarge (MMUNIREP_DWCONV_FWD_TILE, forward and
// input gradient at K = 7 and 13 only): 2 planes per block, half the shared memory (twice the
// resident blocks that shared memory allows, which limited the forward's occupancy to 9 blocks
// of 4 warps on the H100); and 32x32 tiles of 2 planes, whose K - 1 halo is a smaller share of
// the staged box (44 x 44 inputs for 1024 outputs at K = 13 against 28 x 44 for 512).
using TileLarge2Planes = TileLargeBigK;
using TileTall = TileShape<32, 32, 2, 16, false>;
using TileMedium = TileShape<16, 16, 8, 16, true>;
using TileSmall = TileShape<8, 8, 8, 8, true>;

// Stage the filters and input tiles of the PLANES planes from plane0 of a forward block at (h0, w0)
// into smem (Tile::plane_stride apart): each plane's share of the threads does its own. The
// caller passes plane_size, which the outputs' addresses use too: computed here as well, it cost
// the 8x8 whole-map kernel at K = 7 eight more registers (nvcc 13.0, sm_90). ASYNC
// (the pipelined kernel, float only): the elements inside the image by cp.async, which the caller
// commits and waits for (async_copy), the zeros by plain stores.
template <typename scalar_t, typename acc_t, int K, typename Tile, bool ASYNC = false>
__device__ __forceinline__ void stage_forward_block(acc_t* smem,
                                                    const scalar_t* __restrict__ input,
                                                    const scalar_t* __restrict__ weight,
                                                    int64_t planes, int channels, int height,
                                                    int width, int64_t plane_size, int64_t plane0,
                                                    int h0, int w0, bool flip) {
  constexpr int sh = Tile::staged_rows(K), sw = Tile::staged_pitch(K);
  constexpr int threads_per_plane = Tile::kFwdThreads / Tile::PLANES;
  const int p_idx = threadIdx.x / threads_per_plane;  // unsigned: a shift and a mask
  const int t_in_plane = threadIdx.x % threads_per_plane;
  const int64_t plane = plane0 + p_idx;
  const bool plane_valid = plane < planes;
  const int c = static_cast<int>(plane % channels);
  acc_t* s_in = smem + p_idx * Tile::plane_stride(K);
  acc_t* s_w = s_in + sh * sw;
  for (int i = t_in_plane; i < K * K; i += threads_per_plane) {
    const int64_t tap = static_cast<int64_t>(c) * K * K + (flip ? K * K - 1 - i : i);
    if constexpr (ASYNC) {
      if (plane_valid) async_copy(s_w + i, weight + tap);
      else s_w[i] = acc_t(0);
    } else {
      s_w[i] = plane_valid ? static_cast<acc_t>(weight[tap]) : acc_t(0);
    }
  }
  stage_input_tile<scalar_t, acc_t, ASYNC>(
      s_in, plane_valid ? input + plane * plane_size : nullptr, height, width, h0, w0,
      K / 2 - Tile::staged_offset(K), sh, Tile::TW + Tile::halo(K), sw, t_in_plane,
      threads_per_plane);
}

// Forward thread `pos` of a block whose PLANES planes from plane0 are staged at smem, for the tile
// at (h0, w0): its P outputs, if any of them is in the image. Shared by the forward kernels, so
// that the default and the pipelined one add the same products in the same order.
template <typename scalar_t, typename acc_t, int K, typename Tile>
__device__ __forceinline__ void forward_thread_outputs(const acc_t* smem,
                                                       typename Tile::Position pos,
                                                       const scalar_t* __restrict__ bias,
                                                       scalar_t* __restrict__ output,
                                                       int64_t planes, int channels, int height,
                                                       int width, int64_t plane_size,
                                                       int64_t plane0, int h0, int w0) {
  constexpr int P = Tile::kPerThread, pad = K / 2;
  constexpr int sh = Tile::staged_rows(K);
  constexpr int sw = Tile::staged_pitch(K);
  constexpr int off = Tile::staged_offset(K);
  const int64_t plane = plane0 + pos.plane;
  const int row = pos.row, col = pos.col;
  const int oh = h0 + row;
  if (plane >= planes || oh >= height || w0 + col >= width) return;  // nothing of it in the image
  const acc_t* s_in = smem + pos.plane * Tile::plane_stride(K);
  const acc_t* s_w = s_in + sh * sw;
  acc_t acc[P];
#pragma unroll
  for (int p = 0; p < P; ++p) acc[p] = acc_t(0);
  const int kh_begin = max(0, pad - oh);  // filter rows that read only padding are skipped
  const int kh_end = min(K, height + pad - oh);
  // the rows' addresses advance by a constant (recomputing them from the thread's position cost
  // the loop ~30 instructions when ptxas rematerialized that position to save registers)
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

template <typename scalar_t, typename acc_t, int K, typename Tile>
__global__ void __launch_bounds__(Tile::kFwdThreads)
depthwise_conv2d_forward_k_kernel(const scalar_t* __restrict__ input,
                                  const scalar_t* __restrict__ weight,
                                  const scalar_t* __restrict__ bias,
                                  scalar_t* __restrict__ output, int64_t planes, int channels,
                                  int height, int width, int tiles_w, bool flip) {
  static_assert(sizeof(acc_t) != 4 || Tile::forward_bank_ways(K) == 1,
                "forward_k: bank conflicts in the forward loop's shared-memory loads");
  extern __shared__ unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t plane0 = static_cast<int64_t>(blockIdx.x) * Tile::PLANES;
  const int h0 = (blockIdx.y / tiles_w) * Tile::TH;
  const int w0 = (blockIdx.y % tiles_w) * Tile::TW;
  const int64_t plane_size = static_cast<int64_t>(height) * width;
  stage_forward_block<scalar_t, acc_t, K, Tile>(smem, input, weight, planes, channels, height,
                                                width, plane_size, plane0, h0, w0, flip);
  __syncthreads();
  forward_thread_outputs<scalar_t, acc_t, K, Tile>(
      smem, Tile::forward_position(static_cast<int>(threadIdx.x)), bias, output, planes, channels,
      height, width, plane_size, plane0, h0, w0);
}

// Forward / input gradient, pipelined (MMUNIREP_DWCONV_FWD_PIPELINE=1; float at K = 7 and 13, on
// each forward tile, whole-map ones included; not the default until a GPU measures it). ncu saw the
// default kernel's warps without an eligible instruction a third of the time: a block stages its
// tile (global loads, then a barrier) with nothing else to do, and the blocks of an SM start
// together. Here a grid of at most one wave of blocks walks the (plane group, tile) items
// (ItemGrid over gridDim.x: group PLANES consecutive planes, then tile row and column), and each
// block copies its next item into the other of two staging buffers with cp.async (no registers
// held, unlike the weight gradient's BoxPrefetch: a forward block's box is ~40 elements per
// thread) while it computes the current one: one barrier per item. Twice the shared memory per
// block: 4 resident blocks of the default 16x32x4 tile per SM where there were 9 (the 2-plane
// tiles keep more; the whole-map tiles of small maps, whose staging ncu saw exposed too, about
// half as many as their default kernel, down from shared memory's limit). The same products
// in the same order as the default kernel (forward_thread_outputs): bitwise its result.
template <typename scalar_t, typename acc_t, int K, typename Tile>
__global__ void __launch_bounds__(Tile::kFwdThreads)
depthwise_conv2d_forward_pipelined_kernel(const scalar_t* __restrict__ input,
                                          const scalar_t* __restrict__ weight,
                                          const scalar_t* __restrict__ bias,
                                          scalar_t* __restrict__ output, int64_t planes,
                                          int channels, int height, int width, bool flip,
                                          ItemGrid items) {  // groups: of Tile::PLANES planes
  static_assert(std::is_same_v<scalar_t, acc_t> && sizeof(acc_t) == 4,
                "forward_pipelined: float (cp.async copies without converting)");
  static_assert(Tile::forward_bank_ways(K) == 1,
                "forward_pipelined: bank conflicts in the forward loop's shared-memory loads");
  constexpr int buffer = Tile::forward_smem_elems(K);  // one item's staged planes
  extern __shared__ unsigned char smem_raw[];
  acc_t* smem = reinterpret_cast<acc_t*>(smem_raw);
  const int64_t plane_size = static_cast<int64_t>(height) * width;
  const auto stage = [&](const ItemWalk& it, acc_t* to) {
    stage_forward_block<scalar_t, acc_t, K, Tile, true>(
        to, input, weight, planes, channels, height, width, plane_size,
        static_cast<int64_t>(it.n) * Tile::PLANES, it.th * Tile::TH, it.tw * Tile::TW, flip);
    async_copy_commit();
  };
  ItemWalk it(items, static_cast<int>(blockIdx.x));
  if (!it.valid(items)) return;  // the whole block (the host launches no such block)
  stage(it, smem);
  const auto pos = Tile::forward_position(static_cast<int>(threadIdx.x));
  for (int cur = 0;; cur ^= 1) {
    async_copy_wait_all();  // this thread's copies of the item
    __syncthreads();        // everyone's; and everyone is done with the other buffer's item
    ItemWalk next = it;
    next.next(items);
    const bool more = next.valid(items);
    if (more) stage(next, smem + (cur ^ 1) * buffer);
    forward_thread_outputs<scalar_t, acc_t, K, Tile>(
        smem + cur * buffer, pos, bias, output, planes, channels, height, width, plane_size,
        static_cast<int64_t>(it.n) * Tile::PLANES, it.th * Tile::TH, it.tw * Tile::TW);
    if (!more) break;
    it = next;
  }
}

// The resident blocks per SM the pipelined weight gradient asks ptxas for (__launch_bounds__'
// second argument; 0: no request, as the default kernels): at K = 13 as many as the default
// kernel gets with its registers, so that the two differ in the pipelining alone. Left to itself
// ptxas gave the pipelined fp32 K = 13 kernel 67 registers per thread (4 blocks of 208 threads
// per SM against 5) and K = 7 64 (8 blocks of 112). With these it takes 55 or 56 at K = 13 (5
// blocks) and 56 at K = 7 (9 blocks), without local memory. The default K = 7 kernel takes 40
// (12 blocks) since its item walk lost its divisions (ItemWalk); the pipelined one would spill
// at 48 (10 blocks), so at K = 7 it trades 3 resident blocks for its prefetch. K = 31 keeps one
// block per SM either way (over 64 registers). Turing (sm_75) holds 1024 threads per SM, fewer
// than those blocks: no request there (ptxas would ignore it with a warning). The fp32 kernel
// stages by cp.async instead (no prefetch registers): at K = 7 it asks for the default kernel's
// 12 blocks, which it fits in 40 registers without spilling (left to itself ptxas took 48: 10
// blocks); at K = 13 it takes 54 without a request, the default 53: 5 blocks both.
template <typename scalar_t>
constexpr int pipelined_weight_grad_min_blocks(int k) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  return 0 * k;
#else
  if (std::is_same_v<scalar_t, float>) return k == 7 ? 12 : 0;
  return k == 13 ? 5 : k == 7 ? 9 : 0;
#endif
}

// Block (c, part): thread (kh, r) accumulates the K taps of filter row kh over output row r of
// each of the block's items (Tile::weight_grad_thread: every (kh, r) of a K x TH grid, or for a
// whole-map tile only the pairs whose input row is inside the map, in Tile::weight_grad_threads
// threads). An item is one tile of Tile::kWgradSamples consecutive samples n of the block's
// channel (Tile::PLANES is the forward's), so that an item of a small-map tile holds as many
// 8-output steps as a 16x32 tile's row and the per-item work (barriers, staging set-up, the item
// walk) is spread as thinly.
//
// PIPELINED (tiles of large maps only; MMUNIREP_DWCONV_PIPELINE=1 picks it, to be measured
// against the other): two sets of staging buffers, and each thread loads its share of the next
// item's tiles into registers (BoxPrefetch) before it computes the current item, then stores them
// into the other set. The global loads' latency is then spent computing rather than waiting, and
// an item costs one barrier instead of two, for 2x the staging memory and the registers of the
// prefetched values. ncu showed the plain kernel's warps without an eligible instruction for
// 38 to 40% of its cycles, at a register-limited occupancy: staging and barriers not hidden. In
// fp32 the next item goes straight into the other set by cp.async instead (as the pipelined
// forward's), which holds no registers and costs no stores: the register-limited occupancy that
// the prefetch lowered (9 blocks per SM against 12 at K = 7) is not its price there.
template <typename scalar_t, typename acc_t, int K, typename Tile, bool PIPELINED>
__global__ void __launch_bounds__(Tile::weight_grad_max_threads(K),
                                  PIPELINED ? pipelined_weight_grad_min_blocks<scalar_t>(K) : 0)
depthwise_conv2d_weight_grad_k_kernel(const scalar_t* __restrict__ input,
                                      const scalar_t* __restrict__ grad_out,
                                      acc_t* __restrict__ workspace,  // [parts, C, K*K]
                                      int batch, int channels, int height, int width,
                                      ItemGrid items) {  // groups: of Tile::kWgradSamples
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
  static_assert(!PIPELINED || !Tile::kWholeMap, "weight_grad_k: pipelined for large maps only");
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

  acc_t acc[K];
#pragma unroll
  for (int j = 0; j < K; ++j) acc[j] = acc_t(0);

  // this thread's taps over the item at (h0, w0) of `samples` samples staged at `item`
  const auto accumulate = [&](const acc_t* item, int h0, int w0, int samples) {
    // no pair, or this output row is outside the image (its grads are 0)
    if (!me.active || h0 + r >= height) return;
#pragma unroll
    for (int p = 0; p < S; ++p) {
      if (p >= samples) break;
      const acc_t* g_row = item + p * stage + sh * sw + r * Tile::kGradPitch;
      const acc_t* i_row = item + p * stage + (r + kh - off) * sw;
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
  };

  if constexpr (PIPELINED && std::is_same_v<scalar_t, float>) {
    // fp32: each thread copies its share of the next item into the other set with cp.async
    // (stage_input_tile's walk; no registers held), waits for its own copies before the barrier
    // that makes them everyone's, and the barrier also frees the set read one item ago
    const int t = static_cast<int>(threadIdx.x);
    const auto stage_item = [&](const ItemWalk& it, acc_t* item) {
      const int h0 = it.th * TH, w0 = it.tw * TW;
#pragma unroll
      for (int p = 0; p < S; ++p) {
        const bool valid = it.n * S + p < batch;  // a sample past the batch is staged as zeros
        const int64_t plane = static_cast<int64_t>(it.n * S + p) * channels + c;
        stage_input_tile<scalar_t, acc_t, true>(item + p * stage,
                                                valid ? input + plane * plane_size : nullptr,
                                                height, width, h0, w0, pad, sh, TW + K - 1, sw,
                                                t, threads);
        stage_grad_tile<scalar_t, acc_t, true>(item + p * stage + sh * sw,
                                               valid ? grad_out + plane * plane_size : nullptr,
                                               height, width, h0, w0, TH, TW, Tile::kGradPitch,
                                               t, threads);
      }
      async_copy_commit();
    };
    ItemWalk it(items);
    if (it.valid(items)) stage_item(it, smem);
    for (int set = 0; it.valid(items); set ^= 1) {
      async_copy_wait_all();
      __syncthreads();
      const int h0 = it.th * TH, w0 = it.tw * TW;
      const int samples = min(S, batch - it.n * S);
      it.next(items);
      if (it.valid(items)) stage_item(it, smem + (set ^ 1) * S * stage);
      accumulate(smem + set * S * stage, h0, w0, samples);
    }
  } else if constexpr (PIPELINED) {
    constexpr int T = K * TH;
    const int t = static_cast<int>(threadIdx.x);
    BoxPrefetch<scalar_t, acc_t, sh, TW + K - 1, T> in_next[S];
    BoxPrefetch<scalar_t, acc_t, TH, TW, T> grad_next[S];
    const auto prefetch = [&](const ItemWalk& it) {
      const int h0 = it.th * TH, w0 = it.tw * TW;
#pragma unroll
      for (int p = 0; p < S; ++p) {
        const bool valid = it.n * S + p < batch;  // a sample past the batch is staged as zeros
        const int64_t plane = static_cast<int64_t>(it.n * S + p) * channels + c;
        in_next[p].load(valid ? input + plane * plane_size : nullptr, height, width, h0, w0, pad,
                        t);
        grad_next[p].load(valid ? grad_out + plane * plane_size : nullptr, height, width, h0, w0,
                          0, t);
      }
    };
    ItemWalk it(items);
    if (it.valid(items)) prefetch(it);
    for (int set = 0; it.valid(items); set ^= 1) {
      acc_t* item = smem + set * S * stage;
#pragma unroll
      for (int p = 0; p < S; ++p) {
        in_next[p].store(item + p * stage, sw, t);
        grad_next[p].store(item + p * stage + sh * sw, Tile::kGradPitch, t);
      }
      // the item is staged; and every thread is done with the other set (read two items ago)
      __syncthreads();
      const int h0 = it.th * TH, w0 = it.tw * TW;
      const int samples = min(S, batch - it.n * S);
      it.next(items);
      if (it.valid(items)) prefetch(it);  // in flight while this item is computed
      accumulate(item, h0, w0, samples);
    }
  } else {
    for (ItemWalk it(items); it.valid(items); it.next(items)) {
      const int h0 = it.th * TH;
      const int w0 = it.tw * TW;
      const int samples = min(S, batch - it.n * S);
      __syncthreads();  // the previous item's tiles are no longer read
      if constexpr (Tile::kWholeMap) {
        // The S samples' maps, each thread the same positions of every one: a whole-map tile
        // has about one position per thread, so stage_input_tile's set-up for each of the 2 * S
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
            const bool read = inside && p < samples;  // a sample past the batch: zeros
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
                           width, h0, w0, pad, sh, TW + K - 1, sw,
                           static_cast<int>(threadIdx.x), threads);
          stage_grad_tile(s_in + sh * sw, p < samples ? grad_out + plane * plane_size : nullptr,
                          height, width, h0, w0, TH, TW, Tile::kGradPitch,
                          static_cast<int>(threadIdx.x), threads);
        }
      }
      __syncthreads();
      accumulate(smem, h0, w0, samples);
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

// ------------------------------------------------------------------------------------------------
// Tensor-core weight gradient (half / bfloat16, compile-time K, maps larger than 16x16)
// ------------------------------------------------------------------------------------------------
// MMUNIREP_DWCONV_WGRAD_TC=1 (not the default until a GPU measures it and checks it against
// fp64). For filter row kh, an item (a 16x32 tile of one sample, staged with its halo) adds
//   dW[kh][kw] += sum over r < 16, w < 32 of g[r][w] * x[r + kh][w + kw]    (staged coordinates)
// Split w = 16a + i (a = 0, 1; i < 16) and take the 16 x 16 matrices A_a[i][r] = g[r][16a + i]
// and the 16 x 16 NF matrices B_a[r][j] = x[r + kh][16a + j]: their products summed over a and
// the items, C[i][j] = sum of g[r][16a + i] * x[r + kh][16a + j], hold the taps on diagonals,
// dW[kh][kw] = sum over i of C[i][i + kw]. C is NF 16x16 accumulator fragments per filter row,
// each item adds 2 NF m16n16k16 products (wmma: the tensor cores, half or bfloat16 products
// exact in fp32, fp32 sums), and the block reads the diagonals at its end. Only K of every
// 16 NF columns of C are taps (K = 7: 7 of 32), but the tensor cores multiply about 15 times as
// fast as the fp32 FMAs (H100: ~990 against ~67 TFLOP/s dense), where the FMA weight gradient
// reaches 0.07 to 0.32 of the fp32 FMA floor in the H100 table. B_a's column blocks repeat across a
// (B_1's block f is B_0's block f + 1), so a filter row loads NF + 1 fragments of B, not 2 NF.
// A warp owns the accumulators of kRowsPerWarp filter rows (kh = warp, warp + kWarps, ...).
// What the emulator cannot show: the GPU's fragment layouts (wmma leaves them opaque, and the
// kernel only loads, multiplies and stores whole fragments) and the tensor cores' own order of
// their fp32 sums (the tests compare with fp64 within the dtype's tolerance).
template <int K>
struct TensorCoreWgrad {
  static constexpr int TH = 16, TW = 32;  // an item: a 16x32 tile of one sample (TileLarge's)
  static constexpr int NF = (16 + K - 1 + 15) / 16;  // C's 16-column blocks: j < 16 + K - 1
  static constexpr int kRowsPerWarp = (K + 7) / 8;   // at most 8 warps
  static constexpr int kWarps = (K + kRowsPerWarp - 1) / kRowsPerWarp;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kStagedRows = TH + K - 1;
  static constexpr int kStagedCols = TW + K - 1;
  // Row pitches in elements: wmma wants 32-byte aligned fragments, so multiples of 16; odd
  // multiples, so that 8 consecutive rows (one phase of a fragment load) start in 4 different
  // 32-byte groups of banks (2-way conflicts) where an even multiple puts them in 2 or 1.
  static constexpr int odd_multiple_of_16(int n) {
    const int m = (n + 15) / 16;
    return 16 * (m % 2 == 1 ? m : m + 1);
  }
  // B's column blocks 0 .. NF (16a + 16f, a <= 1, f < NF): past the staged box they read zeros
  static constexpr int kInPitch = odd_multiple_of_16(16 * (NF + 1));
  static constexpr int kGradPitch = odd_multiple_of_16(TW);
  static constexpr int kStagedElems = kStagedRows * kInPitch + TH * kGradPitch;
  static constexpr int kScratch = 16 * 16 * NF;  // floats: one filter row's C, per warp
  static constexpr size_t smem_bytes(size_t elem_size) {
    const size_t staged = kStagedElems * elem_size, scratch = sizeof(float) * kWarps * kScratch;
    return staged > scratch ? staged : scratch;
  }
  static_assert(kStagedCols <= 16 * (NF + 1) && 16 * (NF + 1) <= kInPitch, "B's columns");
  static_assert(K <= 32, "a tap per lane when the diagonals are summed");
};

// the element type of wmma's fragments for scalar_t (the emulator's wmma takes c10's own types)
template <typename T>
struct TensorCoreElement {
  using type = T;
};
#ifdef __CUDACC__
template <>
struct TensorCoreElement<c10::Half> {
  using type = __half;
};
template <>
struct TensorCoreElement<c10::BFloat16> {
  using type = __nv_bfloat16;
};
#endif

// The 16x16x16 wmma fragments of the tensor-core kernels: A in layout LayoutA, B row-major (rows
// of the staged input, or of a Toeplitz matrix), fp32 accumulators.
template <typename scalar_t, typename LayoutA>
struct TensorCoreFragments {
  using elem_t = typename TensorCoreElement<scalar_t>::type;
  using A = nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, elem_t, LayoutA>;
  using B = nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, elem_t,
                                   nvcuda::wmma::row_major>;
  using C = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
};

// wmma::load_matrix_sync from shared memory. nvcc 13.0 lowers the bfloat16 ones to generic loads
// (LD.E, each through the generic-to-shared window) and register transposes (MOVM), where the
// half ones become shared-memory matrix loads (LDSM); for bfloat16 the PTX instruction with its
// .shared state space gives the LDSM. The fragments' registers are those mma.h's own loads write
// (4 per bfloat16 fragment of 16x16: 8 elements per lane).
template <typename Frag, typename T>
__device__ __forceinline__ void load_shared_fragment(Frag& f, const T* p, unsigned ldm) {
  nvcuda::wmma::load_matrix_sync(f, p, ldm);
}
#ifdef __CUDACC__
template <typename Use, typename Layout>
__device__ __forceinline__ void load_shared_fragment(
    nvcuda::wmma::fragment<Use, 16, 16, 16, __nv_bfloat16, Layout>& f, const __nv_bfloat16* p,
    unsigned ldm) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  namespace wmma = nvcuda::wmma;
  static_assert(sizeof(f.x) == 16, "a bfloat16 16x16 fragment: 4 registers per lane");
  unsigned* r = reinterpret_cast<unsigned*>(&f.x[0]);
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(p));
#define MMUNIREP_WMMA_LOAD_BF16(ptx)                                      \
  asm volatile(ptx ".m16n16k16.shared.bf16 {%0, %1, %2, %3}, [%4], %5;" \
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])       \
               : "r"(addr), "r"(ldm))
  constexpr bool row = std::is_same_v<Layout, wmma::row_major>;
  if constexpr (std::is_same_v<Use, wmma::matrix_a>) {
    if constexpr (row) MMUNIREP_WMMA_LOAD_BF16("wmma.load.a.sync.aligned.row");
    else MMUNIREP_WMMA_LOAD_BF16("wmma.load.a.sync.aligned.col");
  } else {
    if constexpr (row) MMUNIREP_WMMA_LOAD_BF16("wmma.load.b.sync.aligned.row");
    else MMUNIREP_WMMA_LOAD_BF16("wmma.load.b.sync.aligned.col");
  }
#undef MMUNIREP_WMMA_LOAD_BF16
#endif
}
#endif

template <typename scalar_t, int K>
__global__ void __launch_bounds__(TensorCoreWgrad<K>::kThreads)
depthwise_conv2d_weight_grad_tc_kernel(const scalar_t* __restrict__ input,
                                       const scalar_t* __restrict__ grad_out,
                                       float* __restrict__ workspace,  // [parts, C, K*K]
                                       int batch, int channels, int height, int width,
                                       ItemGrid items) {  // groups: single samples
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // half / bfloat16 wmma needs sm_80; the launch logic never runs it on older GPUs
#else
  namespace wmma = nvcuda::wmma;
  using S = TensorCoreWgrad<K>;
  using Frag = TensorCoreFragments<scalar_t, wmma::col_major>;  // A: the gradient, transposed
  using elem_t = typename Frag::elem_t;
  using FragA = typename Frag::A;
  using FragB = typename Frag::B;
  using FragC = typename Frag::C;
  constexpr int NF = S::NF, R = S::kRowsPerWarp, IP = S::kInPitch, GP = S::kGradPitch;
  constexpr int extra = IP - S::kStagedCols;  // columns past the staged box
  static_assert(sizeof(scalar_t) == 2 && sizeof(elem_t) == 2, "weight_grad_tc: half or bfloat16");
  extern __shared__ unsigned char smem_raw[];
  scalar_t* s_in = reinterpret_cast<scalar_t*>(smem_raw);  // kStagedRows x IP
  scalar_t* s_g = s_in + S::kStagedRows * IP;               // TH x GP
  const elem_t* e_in = reinterpret_cast<const elem_t*>(s_in);
  const elem_t* e_g = reinterpret_cast<const elem_t*>(s_g);
  (void)batch;  // an item is one sample: the item grid's groups are the batch

  const int c = blockIdx.x;
  const int t = static_cast<int>(threadIdx.x), warp = t / 32;
  const int64_t plane_size = static_cast<int64_t>(height) * width;

  // the columns that B's last blocks read past the staged box: zeros, once (staging never
  // writes them); they meet only entries of C off the K diagonals, but stay finite
  for (int e = t; e < S::kStagedRows * extra; e += S::kThreads)
    s_in[(e / extra) * IP + S::kStagedCols + e % extra] = scalar_t(0);

  FragC acc[R][NF];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int f = 0; f < NF; ++f) wmma::fill_fragment(acc[i][f], 0.0f);

  for (ItemWalk it(items); it.valid(items); it.next(items)) {
    const int h0 = it.th * S::TH, w0 = it.tw * S::TW;
    const int64_t plane = static_cast<int64_t>(it.n) * channels + c;
    __syncthreads();  // the previous item's tiles are no longer read
    stage_input_tile(s_in, input + plane * plane_size, height, width, h0, w0, K / 2,
                     S::kStagedRows, S::kStagedCols, IP, t, S::kThreads);
    stage_grad_tile(s_g, grad_out + plane * plane_size, height, width, h0, w0, S::TH, S::TW, GP,
                    t, S::kThreads);
    __syncthreads();
    FragA a[2];  // A_a: columns 16a .. 16a + 15 of the gradient tile, as 16 x 16 col-major
    load_shared_fragment(a[0], e_g, GP);
    load_shared_fragment(a[1], e_g + 16, GP);
#pragma unroll
    for (int i = 0; i < R; ++i) {
      const int kh = warp + i * S::kWarps;
      if (kh >= K) break;  // the same for the whole warp
      FragB b[NF + 1];  // input rows kh .. kh + 15, column blocks 0 .. NF
#pragma unroll
      for (int s = 0; s <= NF; ++s) load_shared_fragment(b[s], e_in + kh * IP + 16 * s, IP);
#pragma unroll
      for (int f = 0; f < NF; ++f) {
        wmma::mma_sync(acc[i][f], a[0], b[f], acc[i][f]);
        wmma::mma_sync(acc[i][f], a[1], b[f + 1], acc[i][f]);
      }
    }
  }

  // each filter row's taps: the sums of C's K diagonals, in row order (deterministic), through
  // the warp's scratch; block-wide barriers (the emulator has no warp-level ones), taken by
  // every thread the same number of times
  const int64_t out = (static_cast<int64_t>(blockIdx.y) * channels + c) * K * K;
  float* scratch = reinterpret_cast<float*>(smem_raw) + warp * S::kScratch;  // 16 x 16 NF
  const int lane = t % 32;
#pragma unroll
  for (int i = 0; i < R; ++i) {
    const int kh = warp + i * S::kWarps;
    __syncthreads();  // the staged tiles, or the previous row's scratch, are no longer read
    if (kh < K) {
#pragma unroll
      for (int f = 0; f < NF; ++f)
        wmma::store_matrix_sync(scratch + 16 * f, acc[i][f], 16 * NF, wmma::mem_row_major);
    }
    __syncthreads();
    if (kh < K && lane < K) {
      float sum = 0.0f;
#pragma unroll
      for (int r = 0; r < 16; ++r) sum += scratch[r * 16 * NF + r + lane];
      workspace[out + kh * K + lane] = sum;
    }
  }
#endif
}

// ------------------------------------------------------------------------------------------------
// Tensor-core forward and input gradient (half / bfloat16, K = 7 and 13, maps larger than 16x16)
// ------------------------------------------------------------------------------------------------
// MMUNIREP_DWCONV_FWD_TC=1 (not the default until a GPU measures it and checks it against fp64).
// For filter row kh, 16 output columns 16a + i of 16 output rows r take
//   out[r][16a + i] += sum over j of x[r + kh][16a + j] * T_kh[j][i],  T_kh[j][i] = W[kh][j - i]
// (staged coordinates; T_kh is zero off its K diagonals): a 16 x 16 NF by 16 NF x 16 product of
// the staged input rows and a banded Toeplitz matrix of the filter row, NF m16n16k16 wmma
// products per filter row (NF as TensorCoreWgrad's; K of every 16 NF terms are taps: 7 / 32 at
// K = 7, 13 / 32 at K = 13). A block builds its channel's K matrices T_kh once in shared memory
// (the input gradient's from the flipped filter) and walks items, 32x32 tiles of one sample of
// that channel (ItemGrid, as the weight gradient's blocks), with a warp per 16x16 output block.
// K = 31 is left out: its 31 matrices T_kh take more than 48 KiB.
template <int K>
struct TensorCoreFwd {
  static_assert(K <= 13, "forward_tc: K <= 13 (the Toeplitz matrices of K = 31 exceed 48 KiB)");
  static constexpr int TH = 32, TW = 32;  // an item: a 32x32 tile of one sample
  static constexpr int NF = TensorCoreWgrad<K>::NF;
  static constexpr int kWarps = (TH / 16) * (TW / 16), kThreads = 32 * kWarps;
  static constexpr int kStagedRows = TH + K - 1;
  static constexpr int kStagedCols = TW + K - 1;
  static constexpr int kInPitch = TensorCoreWgrad<K>::odd_multiple_of_16(16 * (NF + 1));
  // T_kh: 16 NF rows of 16 columns at a pitch of 24 (48 bytes: the 8 rows of a fragment load's
  // phase start in 8 different 16-byte groups of banks; a multiple of 8, as wmma asks)
  static constexpr int kToeplitzPitch = 24;
  static constexpr int kToeplitzElems = 16 * NF * kToeplitzPitch;  // per filter row
  static constexpr int kScratchPitch = 20;                          // floats, per output row
  static constexpr int kInElems = kStagedRows * kInPitch;
  static constexpr size_t smem_bytes(size_t elem_size) {
    return elem_size * (K * kToeplitzElems + kInElems) +
           sizeof(float) * kWarps * 16 * kScratchPitch;
  }
  static_assert((16 * kToeplitzPitch * 2) % 32 == 0 && (kInElems * 2) % 32 == 0,
                "32-byte aligned fragments");
};

template <typename scalar_t, int K>
__global__ void __launch_bounds__(TensorCoreFwd<K>::kThreads)
depthwise_conv2d_forward_tc_kernel(const scalar_t* __restrict__ input,
                                   const scalar_t* __restrict__ weight,
                                   const scalar_t* __restrict__ bias,
                                   scalar_t* __restrict__ output, int batch, int channels,
                                   int height, int width, bool flip, ItemGrid items) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // half / bfloat16 wmma needs sm_80; the launch logic never runs it on older GPUs
#else
  namespace wmma = nvcuda::wmma;
  using S = TensorCoreFwd<K>;
  using Frag = TensorCoreFragments<scalar_t, wmma::row_major>;  // A: the staged input rows
  using elem_t = typename Frag::elem_t;
  using FragA = typename Frag::A;
  using FragB = typename Frag::B;
  using FragC = typename Frag::C;
  constexpr int NF = S::NF, IP = S::kInPitch, TP = S::kToeplitzPitch, pad = K / 2;
  constexpr int extra = IP - S::kStagedCols;  // columns past the staged box
  static_assert(sizeof(scalar_t) == 2 && sizeof(elem_t) == 2, "forward_tc: half or bfloat16");
  extern __shared__ unsigned char smem_raw[];
  scalar_t* s_t = reinterpret_cast<scalar_t*>(smem_raw);  // K x [16 NF][TP]
  scalar_t* s_in = s_t + K * S::kToeplitzElems;           // kStagedRows x IP
  float* s_out = reinterpret_cast<float*>(s_in + S::kInElems);
  const elem_t* e_t = reinterpret_cast<const elem_t*>(s_t);
  const elem_t* e_in = reinterpret_cast<const elem_t*>(s_in);
  (void)batch;  // an item is one sample: the item grid's groups are the batch

  const int c = blockIdx.x;
  const int t = static_cast<int>(threadIdx.x), warp = t / 32, lane = t % 32;
  const int64_t plane_size = static_cast<int64_t>(height) * width;

  // the channel's Toeplitz matrices (the input gradient: the flipped filter), and zeros in the
  // columns past the staged box that the last fragments of a row read (staging never writes them)
  for (int e = t; e < K * 16 * NF * 16; e += S::kThreads) {
    const int kh = e / (16 * NF * 16), j = e / 16 % (16 * NF), i = e % 16, kw = j - i;
    const int tap = kh * K + kw;
    s_t[kh * S::kToeplitzElems + j * TP + i] =
        kw >= 0 && kw < K ? weight[static_cast<int64_t>(c) * K * K + (flip ? K * K - 1 - tap : tap)]
                          : scalar_t(0);
  }
  for (int e = t; e < S::kStagedRows * extra; e += S::kThreads)
    s_in[(e / extra) * IP + S::kStagedCols + e % extra] = scalar_t(0);
  const float b = bias != nullptr ? static_cast<float>(bias[c]) : 0.0f;

  const int r0 = 16 * (warp / (S::TW / 16)), c0 = 16 * (warp % (S::TW / 16));  // the warp's block
  float* scratch = s_out + warp * 16 * S::kScratchPitch;
  for (ItemWalk it(items); it.valid(items); it.next(items)) {
    const int h0 = it.th * S::TH, w0 = it.tw * S::TW;
    const int64_t plane = static_cast<int64_t>(it.n) * channels + c;
    __syncthreads();  // the previous item's tile is no longer read
    stage_input_tile(s_in, input + plane * plane_size, height, width, h0, w0, pad,
                     S::kStagedRows, S::kStagedCols, IP, t, S::kThreads);
    __syncthreads();  // the tile staged (and, before the first, the matrices T_kh built)
    if (h0 + r0 < height && w0 + c0 < width) {  // the warp's block has outputs in the image
      FragC acc;
      wmma::fill_fragment(acc, 0.0f);
      // filter rows that read only padding rows below the image add nothing (the same for the
      // whole warp); above it there are none: a block's 16 input rows for filter row kh start at
      // row h0 + r0 + kh - pad >= -pad > -16, so they reach the image
      const int kh_end = min(K, height + pad - h0 - r0);
      for (int kh = 0; kh < kh_end; ++kh) {
#pragma unroll
        for (int f = 0; f < NF; ++f) {
          FragA a;   // input rows r0 + kh .., columns c0 + 16 f ..
          FragB bt;  // T_kh's rows 16 f ..
          load_shared_fragment(a, e_in + (r0 + kh) * IP + c0 + 16 * f, IP);
          load_shared_fragment(bt, e_t + kh * S::kToeplitzElems + 16 * f * TP, TP);
          wmma::mma_sync(acc, a, bt, acc);
        }
      }
      wmma::store_matrix_sync(scratch, acc, S::kScratchPitch, wmma::mem_row_major);
      __syncwarp();  // the warp's scratch, written by all its lanes
      // lane: output row r0 + lane / 2, 8 columns from c0 + 8 * (lane % 2)
      const int oh = h0 + r0 + lane / 2, ow = w0 + c0 + 8 * (lane % 2);
      if (oh < height) {
        const float* src = scratch + (lane / 2) * S::kScratchPitch + 8 * (lane % 2);
        // (not plane * plane_size + ...: kept live across the products, ptxas spilled that)
        scalar_t* dst =
            output + ((static_cast<int64_t>(it.n) * channels + c) * height + oh) * width + ow;
#pragma unroll
        for (int q = 0; q < 8; ++q)
          if (ow + q < width) dst[q] = static_cast<scalar_t>(src[q] + b);
      }
    }
  }
#endif
}

}  // namespace mmunirep
