// A CPU emulation of the CUDA execution model, enough to run mmunirep's kernels unchanged on a
// machine without a GPU (tests only; see tests/test_ops_emulated.py).
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
// cp.async (the kernels' async_copy, async_copy_commit, async_copy_wait_all): each thread's copies
// are queued in groups; in kForward they land when issued (a copy into a buffer that another
// thread still reads shows, as that thread runs later), in kReverse and kThreads only when the
// thread waits for them (a read before the wait finds NaN). In every schedule a copy that its
// thread has not waited for when it ends is an error (the kernel issued work it never used).
// Warps appear only in wmma (below): the tensor cores' matrix operations, emulated per thread on
// whole matrices, with a check that each is called by all lanes of a warp with the same arguments
// and aligned as the GPU requires (__syncwarp after a wmma store has nothing to wait for here).
// What it does not model: other warp-level operations (the kernels use none), timing, the memory
// model beyond the barrier and cp.async's waits.
#pragma once

// what the kernels test to call the emulation of cp.async (async_copy in the kernel header)
#define MMUNIREP_CUDA_EMULATOR 1

#include <c10/util/Exception.h>

#include <algorithm>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
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

// wmma's warp-collective calls of the block that runs: each is made by every lane of a warp, in
// the same order and with the same arguments (as on the GPU, where anything else is undefined).
// Errors are recorded here and raised by run_block after the block (an exception must not unwind
// through a fiber's stack).
struct WarpCalls {
  std::mutex mutex;
  std::map<std::pair<unsigned, unsigned>, std::pair<std::string, unsigned>> calls;  // (warp, n)
  std::vector<unsigned> made;  // calls so far, per thread of the block
  std::string error;
};
inline WarpCalls g_warp_calls;

inline unsigned linear_thread_index() {
  return tl_thread_idx.x + tl_block_dim.x * (tl_thread_idx.y + tl_block_dim.y * tl_thread_idx.z);
}

inline void warp_error(const std::string& message) {
  std::lock_guard<std::mutex> lock(g_warp_calls.mutex);
  if (g_warp_calls.error.empty()) g_warp_calls.error = message;
}

// a warp-collective call `what` (its name and arguments) by this thread
inline void warp_collective(const std::string& what) {
  const unsigned t = linear_thread_index();
  std::lock_guard<std::mutex> lock(g_warp_calls.mutex);
  const auto key = std::make_pair(t / 32, g_warp_calls.made[t]++);
  auto [it, fresh] = g_warp_calls.calls.try_emplace(key, what, 0u);
  if (!fresh && it->second.first != what && g_warp_calls.error.empty()) {
    std::ostringstream msg;
    msg << "wmma: call " << key.second << " of warp " << key.first << " differs between lanes ("
        << it->second.first << " against " << what << " by thread " << t << ")";
    g_warp_calls.error = msg.str();
  }
  ++it->second.second;
}

inline void begin_warp_calls(unsigned threads) {
  g_warp_calls.calls.clear();
  g_warp_calls.made.assign(threads, 0);
  g_warp_calls.error.clear();
}

// after a block: every call by all lanes of its warp
inline void check_warp_calls(unsigned threads) {
  for (const auto& [key, call] : g_warp_calls.calls) {
    const unsigned lanes = std::min(32u, threads - key.first * 32);
    if (call.second != lanes && g_warp_calls.error.empty()) {
      std::ostringstream msg;
      msg << "wmma: " << call.first << " (call " << key.second << " of warp " << key.first
          << ") made by " << call.second << " of its " << lanes << " lanes";
      g_warp_calls.error = msg.str();
    }
  }
  TORCH_CHECK(g_warp_calls.error.empty(), "emulated block: ", g_warp_calls.error);
}

// cp.async, per thread of the running block (each thread touches only its own entry)
struct AsyncCopy {
  void* dst;
  const void* src;
  size_t bytes;
  bool landed;  // already copied (kForward); still pending until waited for
  void land() const {
    if (!landed) std::memcpy(dst, src, bytes);
  }
};
struct AsyncCopies {
  std::vector<AsyncCopy> open;                   // issued, not yet committed
  std::vector<std::vector<AsyncCopy>> committed;  // groups, oldest first
};
inline std::vector<AsyncCopies> g_async;
inline bool g_async_eager = false;  // kForward: copies land when issued

inline void async_copy(void* dst, const void* src, size_t bytes) {
  if (g_async_eager) std::memcpy(dst, src, bytes);
  g_async[linear_thread_index()].open.push_back({dst, src, bytes, g_async_eager});
}
inline void async_copy_commit() {
  AsyncCopies& mine = g_async[linear_thread_index()];
  mine.committed.push_back(std::move(mine.open));
  mine.open.clear();
}
// cp.async.wait_group 0: every committed group of this thread has landed (not the uncommitted)
inline void async_copy_wait_all() {
  AsyncCopies& mine = g_async[linear_thread_index()];
  for (const auto& group : mine.committed)
    for (const AsyncCopy& c : group) c.land();
  mine.committed.clear();
}
// after a block: nothing left pending
inline void check_async_copies() {
  for (size_t t = 0; t < g_async.size(); ++t) {
    size_t pending = g_async[t].open.size();
    for (const auto& group : g_async[t].committed) pending += group.size();
    TORCH_CHECK(pending == 0, "emulated block: thread ", t, " ended with ", pending,
                " cp.async copies it never waited for");
  }
}

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
  begin_warp_calls(threads);
  g_async.assign(threads, AsyncCopies{});
  g_async_eager = schedule == Schedule::kForward;
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
    check_warp_calls(threads);
    check_async_copies();
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
  check_warp_calls(threads);
  check_async_copies();
}
}  // namespace cuda_emu

// nvcuda::wmma for 16x16x16 fragments. A fragment is spread over the 32 lanes of a warp on the
// GPU, in a layout CUDA leaves unspecified; here every lane holds the whole matrix and computes
// the whole product. That is the same result for kernels that, as wmma requires, only ever load,
// multiply, fill and store whole fragments with all lanes of a warp (warp_collective checks
// it), and it fails (run_block raises) where a pointer is not 32-byte aligned or a leading
// dimension not a multiple of 16 bytes, as the GPU requires. The products of half / bfloat16
// elements are exact in fp32; they are summed in k order here, in the tensor cores' own order
// there.
namespace nvcuda::wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  static_assert(M == 16 && N == 16 && K == 16, "emulated wmma: 16x16x16 fragments only");
  static constexpr int kRows = std::is_same_v<Use, matrix_b> ? K : M;
  static constexpr int kCols = std::is_same_v<Use, matrix_a> ? K : N;
  T v[kRows * kCols];  // row-major
  T& at(int i, int j) { return v[i * kCols + j]; }
  const T& at(int i, int j) const { return v[i * kCols + j]; }
};

namespace detail {
template <typename T>
void check_matrix(const char* op, const T* ptr, unsigned ldm) {
  std::ostringstream what;
  what << op << "(" << static_cast<const void*>(ptr) << ", ldm " << ldm << ")";
  ::cuda_emu::warp_collective(what.str());
  if (reinterpret_cast<uintptr_t>(ptr) % 32 != 0 || (ldm * sizeof(T)) % 16 != 0)
    ::cuda_emu::warp_error(what.str() + ": the pointer must be 32-byte aligned and the leading "
                           "dimension a multiple of 16 bytes");
}
template <typename Frag, typename T>
void load(Frag& a, const T* ptr, unsigned ldm, bool row_major) {
  for (int i = 0; i < Frag::kRows; ++i)
    for (int j = 0; j < Frag::kCols; ++j)
      a.at(i, j) = row_major ? ptr[i * ldm + j] : ptr[j * ldm + i];
}
}  // namespace detail

template <typename Use, typename T, typename Layout>
void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& a, const T* ptr, unsigned ldm) {
  static_assert(std::is_same_v<Layout, row_major> || std::is_same_v<Layout, col_major>,
                "emulated wmma: matrix_a / matrix_b fragments have a layout");
  detail::check_matrix("load_matrix_sync", ptr, ldm);
  detail::load(a, ptr, ldm, std::is_same_v<Layout, row_major>);
}

template <typename T>
void load_matrix_sync(fragment<accumulator, 16, 16, 16, T>& a, const T* ptr, unsigned ldm,
                      layout_t layout) {
  detail::check_matrix("load_matrix_sync", ptr, ldm);
  detail::load(a, ptr, ldm, layout == mem_row_major);
}

template <typename T>
void store_matrix_sync(T* ptr, const fragment<accumulator, 16, 16, 16, T>& a, unsigned ldm,
                       layout_t layout) {
  detail::check_matrix("store_matrix_sync", ptr, ldm);
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j)
      (layout == mem_row_major ? ptr[i * ldm + j] : ptr[j * ldm + i]) = a.at(i, j);
}

template <typename Use, typename T, typename Layout, typename V>
void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& a, const V& value) {
  ::cuda_emu::warp_collective("fill_fragment");
  for (T& x : a.v) x = static_cast<T>(value);
}

template <typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
              const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
              const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b,
              const fragment<accumulator, 16, 16, 16, float>& c) {
  ::cuda_emu::warp_collective("mma_sync");
  fragment<accumulator, 16, 16, 16, float> out;  // d may be c
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 16; ++j) {
      float sum = c.at(i, j);
      for (int k = 0; k < 16; ++k)
        sum += static_cast<float>(a.at(i, k)) * static_cast<float>(b.at(k, j));
      out.at(i, j) = sum;
    }
  d = out;
}
}  // namespace nvcuda::wmma

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
// The kernels' only warp-level barrier follows a wmma store, whose emulation gives every lane the
// whole matrix (below): each lane then reads what it wrote itself, so there is nothing to wait for.
#define __syncwarp(...) ((void)0)

using std::max;
using std::min;
