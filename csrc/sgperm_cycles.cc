// Native CPU kernel for SGPerm's source ordering and cycle search (SPEC §3.6).
//
// An XLA FFI handler, `SgpermFindCycles`, loaded by `sgperm_jax/_native.py`
// and called from jitted code with `jax.ffi.ffi_call`. It computes exactly
// what `sgperm_jax.find_cycles` (the portable `lax.while_loop` search) does,
// one row after another, in the sorted layout of one batch of rows:
//
//   inputs  direction  (..., n) int8   +1 UP, -1 DOWN, 0 inactive
//           reach_lo   (..., n) int32  targets of vertex i: [reach_lo, reach_hi)
//           reach_hi   (..., n) int32
//           subset_lo  (..., n) int32  each vertex's subset [lo, hi)
//           subset_hi  (..., n) int32
//           magnitude  (..., n) uint32 or uint64: bit pattern of |r|
//   output  successor  (..., n) int32  vertex j takes the value of successor[j]
//
// All leading dimensions are rows. Per subset, sources are the active
// vertices by decreasing magnitude (compared as unsigned integers, which is
// the value order of non-negative floats, subnormals included), ties: larger
// position first. From each source not yet done a depth-first search walks
// out-edges closest first (SPEC §3.6). It does not visit done vertices (they
// are unlinked from a doubly linked list), marks seen vertices with a
// per-search stamp, and steps over a whole run of consecutive seen vertices
// at once (a union-find over the runs; the portable path keeps only the run
// around the source, its interval [a, b]), so a search costs about the
// number of vertices it pushes, never a walk over every edge.
//
// Every index is clamped to its row, so malformed inputs give some result
// but never read or write out of bounds.

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int32_t kDone = -1;  // next[v] of a vertex that is done

// Sort keys of sources: magnitude, then position (both decreasing).
template <typename M>
struct SourceKey {
  using Key = std::pair<M, int32_t>;
  static Key Make(M magnitude, int32_t pos) { return {magnitude, pos}; }
  static int32_t Pos(const Key& key) { return key.second; }
};
template <>
struct SourceKey<uint32_t> {  // one 64-bit integer compares faster
  using Key = uint64_t;
  static Key Make(uint32_t magnitude, int32_t pos) {
    return (uint64_t{magnitude} << 32) | static_cast<uint32_t>(pos);
  }
  static int32_t Pos(Key key) { return static_cast<int32_t>(key & 0xffffffffu); }
};

// Scratch space for one row, reused across rows.
template <typename M>
struct Workspace {
  explicit Workspace(int64_t n)
      : next(n), prev(n), below(n + 1), seen(n), run(n), run_lo(n),
        run_hi(n), run_size(n), stack(n), cursor(n), sources(n) {}
  // Not-done vertices of the row as a doubly linked list (sentinels -1, n).
  std::vector<int32_t> next, prev;
  // below[x + 1] leads to the largest not-done vertex <= x (-1: none).
  std::vector<int32_t> below;
  // Per search: seen[v] == stamp marks v seen. The seen vertices form runs
  // of consecutive not-done vertices; run[] is a union-find forest over
  // them (valid for seen vertices only) whose roots hold the run's ends.
  std::vector<int32_t> seen, run, run_lo, run_hi, run_size;
  std::vector<int32_t> stack, cursor;  // the path and each vertex's cursor
  std::vector<typename SourceKey<M>::Key> sources;
};

inline int32_t Clamp(int32_t x, int32_t lo, int32_t hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// Finds the cycles of one row; writes its successors.
//
// This is the depth-first search of SPEC §3.6 with two shortcuts that do not
// change its outcome: a walk that meets a seen vertex skips its whole run of
// seen vertices at once (closing the cycle if the source is in the part of
// the run it would have walked, and a target), and a DOWN vertex's walk
// starts below the ties of its value (no targets). The runs generalize the
// portable path's interval [a, b] around the source; the search costs
// O(vertices it pushes) (times an inverse Ackermann factor).
template <typename M>
void SolveRow(int32_t n, const int8_t* dir, const int32_t* reach_lo,
              const int32_t* reach_hi, const int32_t* subset_hi,
              const M* magnitude, int32_t* succ, Workspace<M>& ws) {
  int32_t* next = ws.next.data();
  int32_t* prev = ws.prev.data();
  int32_t* below = ws.below.data();
  int32_t* seen = ws.seen.data();
  int32_t* run = ws.run.data();
  int32_t* run_lo = ws.run_lo.data();
  int32_t* run_hi = ws.run_hi.data();
  int32_t* run_size = ws.run_size.data();
  int32_t* stack = ws.stack.data();
  int32_t* cursor = ws.cursor.data();
  using Key = typename SourceKey<M>::Key;
  Key* sources = ws.sources.data();

  // Links over the active vertices of the row; sentinels -1 and n.
  int32_t last = -1;
  below[0] = 0;
  for (int32_t i = 0; i < n; ++i) {
    succ[i] = i;
    seen[i] = 0;
    if (dir[i] != 0) {
      prev[i] = last;
      if (last >= 0) next[last] = i;
      last = i;
      below[i + 1] = i + 1;
    } else {
      next[i] = kDone;
      prev[i] = -1;
      below[i + 1] = i;
    }
  }
  if (last >= 0) next[last] = n;

  // Largest not-done vertex <= x (x in [-1, n)), or -1.
  auto alive_below = [&](int32_t x) {
    int32_t y = x + 1;
    while (below[y] != y) {
      below[y] = below[below[y]];  // path halving
      y = below[y];
    }
    return y - 1;
  };
  auto finish = [&](int32_t v) {  // v is done: out of the list
    const int32_t p = prev[v], q = next[v];
    if (p >= 0) next[p] = q;
    if (q < n) prev[q] = p;
    next[v] = kDone;
    below[v + 1] = v;
  };
  auto find = [&](int32_t v) {  // root of a seen vertex's run
    while (run[v] != v) {
      run[v] = run[run[v]];
      v = run[v];
    }
    return v;
  };
  int32_t stamp = 0;
  auto mark_seen = [&](int32_t v) {
    seen[v] = stamp;
    run[v] = v;
    run_lo[v] = run_hi[v] = v;
    run_size[v] = 1;
    for (const int32_t w : {prev[v], next[v]}) {
      if (w < 0 || w >= n || seen[w] != stamp) continue;
      int32_t x = find(v), y = find(w);
      if (run_size[x] < run_size[y]) std::swap(x, y);
      run[y] = x;
      run_size[x] += run_size[y];
      run_lo[x] = std::min(run_lo[x], run_lo[y]);
      run_hi[x] = std::max(run_hi[x], run_hi[y]);
    }
  };
  // Where the walk of v's out-edges starts: its closest not-done target
  // candidate (UP: next above; DOWN: the largest below its ties).
  auto first_cursor = [&](int32_t v) {
    if (dir[v] == 1) return next[v];
    return alive_below(std::min(v, Clamp(reach_hi[v], 0, n)) - 1);
  };

  int32_t lo = 0;
  while (lo < n) {
    const int32_t hi = Clamp(subset_hi[lo], lo + 1, n);
    // Sources of the subset [lo, hi), in search order.
    int32_t count = 0, up_left = 0, down_left = 0;
    for (int32_t i = lo; i < hi; ++i) {
      if (dir[i] == 0) continue;
      sources[count++] = SourceKey<M>::Make(magnitude[i], i);
      if (dir[i] == 1) {
        ++up_left;
      } else {
        ++down_left;
      }
    }
    lo = hi;
    if (up_left == 0 || down_left == 0) continue;
    auto retire = [&](int32_t v) {  // v is done: one fewer of its direction
      if (dir[v] == 1) {
        --up_left;
      } else {
        --down_left;
      }
      finish(v);
    };
    // Decreasing magnitude, ties: larger position first.
    std::sort(sources, sources + count, std::greater<Key>());

    for (int32_t k = 0; k < count; ++k) {
      // No cycle without both directions (an allowed early stop).
      if (up_left == 0 || down_left == 0) break;
      const int32_t s = SourceKey<M>::Pos(sources[k]);
      if (next[s] == kDone) continue;
      ++stamp;
      mark_seen(s);
      int32_t depth = 1;
      stack[0] = s;
      cursor[0] = first_cursor(s);
      while (true) {
        const int32_t u = stack[depth - 1];
        const int32_t cur = cursor[depth - 1];
        const bool u_up = dir[u] == 1;
        const int32_t lo_u = Clamp(reach_lo[u], 0, n);
        const int32_t hi_u = Clamp(reach_hi[u], 0, n);
        if (u_up ? cur >= hi_u : cur < lo_u) {  // edges of u exhausted
          if (--depth == 0) {  // the source fails: it alone is done
            retire(s);
            break;
          }
          continue;
        }
        if (seen[cur] == stamp) {
          // The walk would step over the seen run from cur on, unless it
          // meets the source there as a target.
          const int32_t root = find(cur);
          const bool source_ahead = u_up ? (s >= cur && s <= run_hi[root])
                                         : (s <= cur && s >= run_lo[root]);
          if (source_ahead && s >= lo_u && s < hi_u) {
            // The cycle is stack[0..depth).
            for (int32_t i = 0; i < depth; ++i) {
              const int32_t v = stack[i];
              succ[v] = stack[i + 1 < depth ? i + 1 : 0];
              retire(v);
            }
            break;
          }
          cursor[depth - 1] = u_up ? next[run_hi[root]] : prev[run_lo[root]];
          continue;
        }
        // An unseen target: push it.
        mark_seen(cur);
        cursor[depth - 1] = u_up ? next[cur] : prev[cur];
        stack[depth] = cur;
        cursor[depth] = first_cursor(cur);
        ++depth;
      }
    }
  }
}

template <typename M>
void SolveRows(int64_t row_begin, int64_t row_end, int32_t n,
               const int8_t* dir, const int32_t* reach_lo,
               const int32_t* reach_hi, const int32_t* subset_hi,
               const M* magnitude, int32_t* succ) {
  Workspace<M> ws(n);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t off = row * n;
    SolveRow<M>(n, dir + off, reach_lo + off, reach_hi + off, subset_hi + off,
                magnitude + off, succ + off, ws);
  }
}

// Rows are independent; big batches are split over a few threads.
int ThreadCount(int64_t rows, int64_t n) {
  const int64_t work = rows * n;
  if (rows < 2 || work < (int64_t{1} << 13)) return 1;
  unsigned hw = std::thread::hardware_concurrency();
  int64_t threads = hw == 0 ? 1 : hw;
  threads = std::min<int64_t>({threads, rows, 8, work >> 12});
  return static_cast<int>(std::max<int64_t>(threads, 1));
}

template <typename M>
void Solve(int64_t rows, int32_t n, const int8_t* dir, const int32_t* reach_lo,
           const int32_t* reach_hi, const int32_t* subset_hi,
           const M* magnitude, int32_t* succ) {
  const int threads = ThreadCount(rows, n);
  if (threads <= 1) {
    SolveRows<M>(0, rows, n, dir, reach_lo, reach_hi, subset_hi, magnitude,
                 succ);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  const int64_t chunk = (rows + threads - 1) / threads;
  for (int t = 1; t < threads; ++t) {
    const int64_t begin = std::min(rows, t * chunk);
    const int64_t end = std::min(rows, begin + chunk);
    if (begin >= end) break;
    pool.emplace_back(SolveRows<M>, begin, end, n, dir, reach_lo, reach_hi,
                      subset_hi, magnitude, succ);
  }
  SolveRows<M>(0, std::min(rows, chunk), n, dir, reach_lo, reach_hi,
               subset_hi, magnitude, succ);
  for (auto& th : pool) th.join();
}

bool SameDims(ffi::AnyBuffer::Dimensions x, ffi::AnyBuffer::Dimensions y) {
  return x.size() == y.size() && std::equal(x.begin(), x.end(), y.begin());
}

ffi::Error FindCyclesImpl(ffi::Buffer<ffi::S8> direction,
                          ffi::Buffer<ffi::S32> reach_lo,
                          ffi::Buffer<ffi::S32> reach_hi,
                          ffi::Buffer<ffi::S32> subset_lo,
                          ffi::Buffer<ffi::S32> subset_hi,
                          ffi::AnyBuffer magnitude,
                          ffi::ResultBuffer<ffi::S32> successor) {
  const auto dims = direction.dimensions();
  if (!SameDims(dims, reach_lo.dimensions()) ||
      !SameDims(dims, reach_hi.dimensions()) ||
      !SameDims(dims, subset_lo.dimensions()) ||
      !SameDims(dims, subset_hi.dimensions()) ||
      !SameDims(dims, magnitude.dimensions()) ||
      !SameDims(dims, successor->dimensions())) {
    return ffi::Error::InvalidArgument(
        "sgperm_find_cycles: all arguments must have the same shape");
  }
  if (dims.size() == 0) {
    return ffi::Error::InvalidArgument(
        "sgperm_find_cycles: arguments must have at least one dimension");
  }
  const int64_t n = dims.back();
  if (n > int64_t{0x7ffffffe}) {
    return ffi::Error::InvalidArgument(
        "sgperm_find_cycles: rows must be shorter than 2**31 - 1");
  }
  const int64_t total = static_cast<int64_t>(direction.element_count());
  if (n == 0 || total == 0) return ffi::Error::Success();
  const int64_t rows = total / n;
  const auto type = magnitude.element_type();
  if (type == ffi::DataType::U32) {
    Solve<uint32_t>(rows, static_cast<int32_t>(n), direction.typed_data(),
                    reach_lo.typed_data(), reach_hi.typed_data(),
                    subset_hi.typed_data(),
                    magnitude.reinterpret_data<uint32_t>(),
                    successor->typed_data());
  } else if (type == ffi::DataType::U64) {
    Solve<uint64_t>(rows, static_cast<int32_t>(n), direction.typed_data(),
                    reach_lo.typed_data(), reach_hi.typed_data(),
                    subset_hi.typed_data(),
                    magnitude.reinterpret_data<uint64_t>(),
                    successor->typed_data());
  } else {
    return ffi::Error::InvalidArgument(
        "sgperm_find_cycles: magnitude must be uint32 or uint64");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SgpermFindCycles, FindCyclesImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
