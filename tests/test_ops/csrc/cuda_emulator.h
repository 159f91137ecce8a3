// A CPU emulation of the CUDA execution model, enough to run mmunirep's kernels unchanged on a
// machine without a GPU (tests only; see tests/test_ops/test_depthwise_conv_emulated.py).
//
// Why by hand: no CPU backend of CUDA (HIP-CPU, CuPBoP, ...) installs from the package registries
// here. What it models: a grid of blocks run one after another; blockIdx / threadIdx / blockDim /
// gridDim per thread; dynamic shared memory (one buffer, as blocks run in turn) refilled with NaN
// bytes before every block so that reading it before writing it poisons the result; the launch
// limits (grid.y, grid.z <= 65535, block <= 1024 threads, dynamic shared memory <= 48 KiB
// without an opt-in). The threads of a block run in one of three schedules:
// - kThreads: real OS threads, concurrently; __syncthreads() is a std::barrier (a thread that has
//   returned counts as arrived, as on sm_70+);
// - kForward / kReverse: cooperative fibers (ucontext) in one OS thread: each thread runs from
//   one __syncthreads() to the next in turn, in increasing or decreasing thread order. This is
//   deterministic and much faster, and a missing barrier shows as a result that depends on the
//   order: kernels must give bitwise the same result in every schedule.
// What it does not model: warps (the kernels use no warp intrinsics), timing, the memory model
// beyond the barrier.
#pragma once

#include <c10/util/Exception.h>

#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include <ucontext.h>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

namespace cuda_emu {
enum class Schedule { kThreads, kForward, kReverse };

inline thread_local dim3 tl_thread_idx, tl_block_idx, tl_block_dim, tl_grid_dim;
inline thread_local std::barrier<>* tl_barrier = nullptr;  // kThreads
inline ucontext_t* g_scheduler = nullptr;                  // fibers: the scheduler's context
inline ucontext_t* g_current_fiber = nullptr;              // and the running fiber's
constexpr size_t kSmemCapacity = 64 * 1024;

inline void syncthreads() {
  if (tl_barrier != nullptr) {
    tl_barrier->arrive_and_wait();
  } else {  // a fiber: let the others reach the barrier too
    swapcontext(g_current_fiber, g_scheduler);
  }
}

struct FiberState {
  std::vector<ucontext_t> contexts;
  std::vector<std::vector<char>> stacks;
  std::vector<char> done;
  const std::function<void()>* body = nullptr;
  int starting = -1;
};
inline FiberState g_fibers;
constexpr size_t kFiberStack = 64 * 1024;

inline void fiber_entry() {
  const int me = g_fibers.starting;
  (*g_fibers.body)();
  g_fibers.done[me] = 1;  // returning resumes the scheduler (uc_link)
}

// Runs body() once per thread of block `bidx` in the given schedule.
inline void run_block(dim3 bidx, dim3 block, dim3 grid, Schedule schedule,
                      const std::function<void()>& body) {
  const unsigned threads = block.x * block.y * block.z;
  auto set_ids = [&](unsigned t) {
    tl_thread_idx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
    tl_block_idx = bidx;
    tl_block_dim = block;
    tl_grid_dim = grid;
  };
  if (schedule == Schedule::kThreads) {
    std::barrier<> bar(threads);
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        set_ids(t);
        tl_barrier = &bar;
        body();
        bar.arrive_and_drop();  // an exited thread no longer holds up __syncthreads()
      });
    }
    for (auto& th : pool) th.join();
    return;
  }
  FiberState& f = g_fibers;
  f.contexts.resize(threads);
  f.stacks.resize(std::max<size_t>(f.stacks.size(), threads));
  f.done.assign(threads, 0);
  f.body = &body;
  ucontext_t scheduler;
  g_scheduler = &scheduler;
  tl_barrier = nullptr;
  for (unsigned t = 0; t < threads; ++t) {
    f.stacks[t].resize(kFiberStack);
    getcontext(&f.contexts[t]);
    f.contexts[t].uc_stack.ss_sp = f.stacks[t].data();
    f.contexts[t].uc_stack.ss_size = kFiberStack;
    f.contexts[t].uc_link = &scheduler;
    makecontext(&f.contexts[t], fiber_entry, 0);
  }
  // rounds: every live thread runs up to its next __syncthreads() (or its end), in order
  for (unsigned live = threads; live > 0;) {
    live = 0;
    for (unsigned i = 0; i < threads; ++i) {
      const unsigned t = schedule == Schedule::kForward ? i : threads - 1 - i;
      if (f.done[t]) continue;
      set_ids(t);
      f.starting = static_cast<int>(t);
      g_current_fiber = &f.contexts[t];
      swapcontext(&scheduler, &f.contexts[t]);
      live += f.done[t] ? 0 : 1;
    }
  }
}
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
#define __syncthreads() (::cuda_emu::syncthreads())

using std::max;
using std::min;
