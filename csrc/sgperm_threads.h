// Rows split over a few threads, each under the caller's floating-point
// environment: the native kernels' parallel loop.
//
// XLA:CPU runs its code with subnormals flushed to zero; a kernel's float
// arithmetic must flush them the same way to give the same results, so every
// worker thread takes the floating-point environment (and, on x86, the MXCSR
// register) of the thread XLA called the kernel on.

#ifndef SGPERM_JAX_CSRC_SGPERM_THREADS_H_
#define SGPERM_JAX_CSRC_SGPERM_THREADS_H_

#include <algorithm>
#include <cfenv>
#include <cstdint>
#include <thread>
#include <vector>

#if defined(__SSE__) || defined(__x86_64__)
#include <xmmintrin.h>
#define SGPERM_HAS_MXCSR 1
#endif

namespace sgperm {

// Calls fn(begin, end) on contiguous ranges of the rows [0, count), of about
// equal total length (length[i] values each), on up to 8 threads.
template <typename Fn>
void ParallelRows(int64_t count, const int32_t* length, Fn fn) {
  fenv_t env;
  std::fegetenv(&env);
#ifdef SGPERM_HAS_MXCSR
  const unsigned mxcsr = _mm_getcsr();
#endif
  auto run = [&](int64_t begin, int64_t end) {
    std::fesetenv(&env);
#ifdef SGPERM_HAS_MXCSR
    _mm_setcsr(mxcsr);
#endif
    fn(begin, end);
  };
  int64_t total = 0;
  for (int64_t i = 0; i < count; ++i) total += std::max(length[i], 0);
  const unsigned hw = std::thread::hardware_concurrency();
  const int64_t threads =
      std::min<int64_t>({hw == 0 ? 1 : hw, 8, std::max<int64_t>(count, 1),
                         std::max<int64_t>(total >> 14, 1)});
  std::vector<int64_t> bounds = {0};
  int64_t seen = 0;
  for (int64_t i = 0; i < count && static_cast<int64_t>(bounds.size()) < threads;
       ++i) {
    seen += std::max(length[i], 0);
    if (seen * threads >= total * static_cast<int64_t>(bounds.size())) {
      bounds.push_back(i + 1);
    }
  }
  bounds.push_back(count);
  std::vector<std::thread> pool;
  for (size_t t = 1; t + 1 < bounds.size(); ++t) {
    if (bounds[t] < bounds[t + 1]) {
      pool.emplace_back(run, bounds[t], bounds[t + 1]);
    }
  }
  run(bounds[0], bounds[1]);
  for (auto& th : pool) th.join();
}

}  // namespace sgperm

#endif  // SGPERM_JAX_CSRC_SGPERM_THREADS_H_
