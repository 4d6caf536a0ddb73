// The depth-first cycle search of one row (docs/algorithm.md §7), shared by
// the native kernels: `sgperm_cycles.cc` (the cycle search alone) and
// `sgperm_rows.cc` (the whole step of a row).
//
// Per subset, sources are the active vertices by decreasing magnitude
// (compared as unsigned integers, which is the value order of non-negative
// floats, subnormals included), ties: larger position first. From each
// source not yet done a depth-first search walks out-edges closest first. It
// does not visit done vertices (they are unlinked from a doubly linked list),
// marks seen vertices with a per-search stamp, and steps over a whole run of
// consecutive seen vertices at once (a union-find over the runs; the portable
// path keeps only the run around the source, its interval [a, b]), so a
// search costs about the number of vertices it pushes, never a walk over
// every edge.
//
// Every index is clamped to its row, so malformed inputs give some result
// but never read or write out of bounds.

#ifndef SGPERM_JAX_CSRC_SGPERM_SEARCH_H_
#define SGPERM_JAX_CSRC_SGPERM_SEARCH_H_

#include <algorithm>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

namespace sgperm {

constexpr int32_t kDone = -1;  // next[v] of a vertex that is done

// Sorts (key[i], value[i]) by key, stably: insertion for a few entries, one
// sort of 64-bit (key, index) integers for some more, else a
// least-significant-digit radix sort by bytes (passes where every key has the
// same byte are skipped). key_tmp and value_tmp hold n entries each.
template <typename K>
void SortStable(K* key, int32_t* value, int32_t n, K* key_tmp,
                int32_t* value_tmp) {
  if (n < 2) return;
  if constexpr (sizeof(K) <= 4) {
    if (n > 48 && n < 256) {
      uint64_t packed[256];
      for (int32_t i = 0; i < n; ++i) {
        packed[i] = (uint64_t{key[i]} << 32) | static_cast<uint32_t>(i);
      }
      std::sort(packed, packed + n);
      for (int32_t i = 0; i < n; ++i) {
        const int32_t from = static_cast<int32_t>(packed[i] & 0xffffffffu);
        key_tmp[i] = key[from];
        value_tmp[i] = value[from];
      }
      std::copy(key_tmp, key_tmp + n, key);
      std::copy(value_tmp, value_tmp + n, value);
      return;
    }
  }
  if (n <= 48) {
    for (int32_t i = 1; i < n; ++i) {
      const K k = key[i];
      const int32_t v = value[i];
      int32_t j = i;
      for (; j > 0 && key[j - 1] > k; --j) {
        key[j] = key[j - 1];
        value[j] = value[j - 1];
      }
      key[j] = k;
      value[j] = v;
    }
    return;
  }
  constexpr int kBytes = sizeof(K);
  uint32_t count[kBytes][256] = {};
  for (int32_t i = 0; i < n; ++i) {
    const K k = key[i];
    for (int b = 0; b < kBytes; ++b) ++count[b][(k >> (8 * b)) & 0xff];
  }
  K* src_k = key;
  int32_t* src_v = value;
  K* dst_k = key_tmp;
  int32_t* dst_v = value_tmp;
  for (int b = 0; b < kBytes; ++b) {
    uint32_t* c = count[b];
    if (c[(key[0] >> (8 * b)) & 0xff] == static_cast<uint32_t>(n)) continue;
    uint32_t sum = 0;
    for (int d = 0; d < 256; ++d) {
      const uint32_t x = c[d];
      c[d] = sum;
      sum += x;
    }
    for (int32_t i = 0; i < n; ++i) {
      const uint32_t at = c[(src_k[i] >> (8 * b)) & 0xff]++;
      dst_k[at] = src_k[i];
      dst_v[at] = src_v[i];
    }
    std::swap(src_k, dst_k);
    std::swap(src_v, dst_v);
  }
  if (src_k != key) {
    std::copy(src_k, src_k + n, key);
    std::copy(src_v, src_v + n, value);
  }
}

// Scratch space for one row, reused across rows.
template <typename M>
struct Workspace {
  explicit Workspace(int64_t n)
      : next(n), prev(n), below(n + 1), seen(n), run(n), run_lo(n),
        run_hi(n), run_size(n), stack(n), cursor(n), sources(n),
        source_key(n), key_tmp(n), source_tmp(n) {}
  // Not-done vertices of the row as a doubly linked list (sentinels -1, n).
  std::vector<int32_t> next, prev;
  // below[x + 1] leads to the largest not-done vertex <= x (-1: none).
  std::vector<int32_t> below;
  // Per search: seen[v] == stamp marks v seen. The seen vertices form runs
  // of consecutive not-done vertices; run[] is a union-find forest over
  // them (valid for seen vertices only) whose roots hold the run's ends.
  std::vector<int32_t> seen, run, run_lo, run_hi, run_size;
  std::vector<int32_t> stack, cursor;  // the path and each vertex's cursor
  // The sources of a subset in search order, and sort scratch.
  std::vector<int32_t> sources;
  std::vector<M> source_key, key_tmp;
  std::vector<int32_t> source_tmp;
};

inline int32_t Clamp(int32_t x, int32_t lo, int32_t hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// Finds the cycles of one row; writes its successors.
//
// This is the depth-first search of docs/algorithm.md §7 with two shortcuts
// that do not change its outcome: a walk that meets a seen vertex skips its
// whole run of seen vertices at once (closing the cycle if the source is in
// the part of the run it would have walked, and a target), and a DOWN
// vertex's walk starts below the ties of its value (no targets). The runs
// generalize the portable path's interval [a, b] around the source; the
// search costs O(vertices it pushes) (times an inverse Ackermann factor).
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
  int32_t* sources = ws.sources.data();
  M* source_key = ws.source_key.data();

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
    // Sources of the subset [lo, hi): collected by decreasing position, then
    // sorted stably by decreasing magnitude (ties: larger position first).
    int32_t count = 0, up_left = 0, down_left = 0;
    for (int32_t i = hi - 1; i >= lo; --i) {
      if (dir[i] == 0) continue;
      source_key[count] = static_cast<M>(~magnitude[i]);
      sources[count++] = i;
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
    SortStable<M>(source_key, sources, count, ws.key_tmp.data(),
                  ws.source_tmp.data());

    for (int32_t k = 0; k < count; ++k) {
      // No cycle without both directions (an allowed early stop).
      if (up_left == 0 || down_left == 0) break;
      const int32_t s = sources[k];
      if (next[s] == kDone) continue;
      // The common case, a 2-cycle, without the search's bookkeeping: the
      // closest candidate c of s is a target, and s is the closest candidate
      // of c and its target (the search would push c, then close on s).
      {
        const int32_t c = first_cursor(s);
        const bool s_up = dir[s] == 1;
        if (c >= 0 && c < n &&
            (s_up ? c < Clamp(reach_hi[s], 0, n)
                  : c >= Clamp(reach_lo[s], 0, n)) &&
            dir[c] == (s_up ? -1 : 1) && first_cursor(c) == s &&
            s >= Clamp(reach_lo[c], 0, n) && s < Clamp(reach_hi[c], 0, n)) {
          succ[s] = c;
          succ[c] = s;
          retire(s);
          retire(c);
          continue;
        }
      }
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

}  // namespace sgperm

#endif  // SGPERM_JAX_CSRC_SGPERM_SEARCH_H_
