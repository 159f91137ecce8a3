// A CPU emulation of the CUDA execution model, enough to run mmunirep's kernels unchanged on a
// machine without a GPU (tests only; see tests/test_ops_emulated.py).
//
// Why by hand: no CPU backend of CUDA (HIP-CPU, CuPBoP, ...) installs from the package registries
// here. What it models: a grid of blocks run one after another; the threads of a block as real OS
// threads running concurrently, so __syncthreads() is a real barrier (a thread that has returned
// counts as arrived, as on sm_70+); blockIdx / threadIdx / blockDim / gridDim per thread; dynamic
// shared memory (one buffer, as blocks run in turn) refilled with NaN bytes before every block so
// that reading it before writing it poisons the result; the launch limits (grid.y, grid.z <=
// 65535, block <= 1024 threads, dynamic shared memory <= 48 KiB without an opt-in). What it does not
// model: warps (the kernels use no warp intrinsics), timing, the memory model beyond the barrier.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuda_emu {
inline thread_local dim3 tl_thread_idx, tl_block_idx, tl_block_dim, tl_grid_dim;
inline thread_local std::barrier<>* tl_barrier = nullptr;
constexpr size_t kSmemCapacity = 64 * 1024;
}  // namespace cuda_emu

#define threadIdx (::cuda_emu::tl_thread_idx)
#define blockIdx (::cuda_emu::tl_block_idx)
#define blockDim (::cuda_emu::tl_block_dim)
#define gridDim (::cuda_emu::tl_grid_dim)
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __syncthreads() (::cuda_emu::tl_barrier->arrive_and_wait())

using std::max;
using std::min;
