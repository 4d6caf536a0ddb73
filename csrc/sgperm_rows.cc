// Native CPU kernel for a whole SGPerm step on every row
// (docs/algorithm.md §5-§8).
//
// An XLA FFI handler, `SgpermPermuteLeaves`, loaded by `sgperm_jax/_native.py`.
// On CPU the optimizer runs each row's step here instead of in the JAX stages
// (`partition`, `permissibility_graph`, `find_cycles`, `permute`), and gets
// the same values, bit for bit. The leaves are passed as they are, each its
// own buffer (nothing is concatenated, transposed or split, which would cost
// XLA a compiled loop per leaf), and a row is a strided view of one leaf:
// row i holds leaf[leaf_i][offset[i] + p * stride[i]], p = 0 .. length[i].
//
//   inputs  offset     (R,) s64   where each row starts in its leaf
//           stride     (R,) s64   distance between consecutive positions
//           length     (R,) s32   the row's length n (>= 1)
//           leaf       (R,) s32   its leaf
//           size       (R,) s32   its partition size P, in [1, n]
//           keys       (R, 2) u32 its threefry key (jax.random.key_data)
//           alpha      ()   f32 or f64 (the values' compute dtype)
//           remainder  ()   pred: whether a shorter last chunk takes part
//           started    ()   pred: permute `weights` (else `initial`)
//           then, per leaf: weights, initial (both f16, bf16, f32 or f64,
//           one dtype for all leaves), recommendations (one dtype for all)
//   results per leaf, the permuted weights; then, if asked (twice as many
//           results), per leaf the update that moves `initial` onto them:
//           their difference in the leaf's dtype, or -initial where it
//           overflows.
//
// Per row, exactly as the JAX stages compute it:
//  1. partition: if P < n, positions are ordered by threefry-2x32 bits of
//     (key, position) (jax.random.bits), ties by position, and cut into
//     chunks of P; each chunk is ordered by value (integer keys that order
//     like the floats, -0 as +0), ties by shuffled position;
//  2. permissibility graph: in each subset of m active vertices (r != 0 and
//     finite, the remainder left out if asked), eps = A (alpha + 1/m) in the
//     compute dtype; UP vertices reach the lower bound of v + eps above them,
//     DOWN vertices from the lower bound of v - eps up to the run of their
//     own value, both by the same binary search as the JAX stage;
//  3. the cycle search of sgperm_search.h;
//  4. values move along the cycles, as raw bits.
// The float arithmetic runs under the caller's floating-point environment
// (sgperm_threads.h), so subnormals are flushed where XLA's own code flushes
// them.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "sgperm_dtypes.h"
#include "sgperm_ffi.h"
#include "sgperm_search.h"
#include "sgperm_threads.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using sgperm::ThreefryBits;

// ------------------------------------------------------------ one row

struct Rows {
  const int64_t* offset;  // in its leaf
  const int64_t* stride;
  const int32_t* length;
  const int32_t* leaf;
  const int32_t* size;
  const uint32_t* keys;
};

// The leaves' buffers, all of the weights' dtype but the recommendations.
template <typename V, typename R>
struct Leaves {
  std::vector<const typename V::Raw*> weights, initial;
  std::vector<const typename R::Raw*> recs;
  std::vector<typename V::Raw*> out, updates;  // updates: empty if not asked
  bool started;
};

// The update that moves `param` onto `weight`: their difference in the
// params' dtype (computed as XLA does: in the compute dtype, then rounded),
// or -param where the difference overflows (as `_delta` in _transform.py).
template <typename V>
inline typename V::Raw Delta(typename V::Raw weight, typename V::Raw param) {
  using C = typename V::C;
  const C p = V::ToC(param);
  const typename V::Raw d = V::FromC(V::ToC(weight) - p);
  if (!std::isfinite(V::ToC(d)) && std::isfinite(p)) return param ^ V::kSign;
  return d;
}

constexpr int32_t kBlock = 16;  // rows read together: a cache line of f32

// Scratch space of one thread, grown to the longest row.
template <typename V, typename R>
struct Scratch {
  using Mag = typename R::Mag;
  using Key = typename V::Key;
  void Resize(int32_t n) {
    if (capacity >= n) return;
    capacity = n;
    raw.resize(static_cast<size_t>(kBlock) * n);
    rec_raw.resize(static_cast<size_t>(kBlock) * n);
    out.resize(static_cast<size_t>(kBlock) * n);
    rec.resize(n);
    unsorted_key.resize(n);
    bits.resize(n);
    bits_tmp.resize(n);
    key_tmp.resize(n);
    key_tmp2.resize(n);
    perm.resize(n);
    order.resize(n);
    index_tmp.resize(n);
    value.resize(n);
    rec_sorted.resize(n);
    dir.resize(n);
    reach_lo.resize(n);
    reach_hi.resize(n);
    subset_hi.resize(n);
    magnitude.resize(n);
    successor.resize(n);
    search = std::make_unique<sgperm::Workspace<Mag>>(n);
  }
  int32_t capacity = 0;
  // A block of rows, row after row, as read and as written.
  std::vector<typename V::Raw> raw, out;
  std::vector<typename R::Raw> rec_raw;
  // One row: in its own order ...
  std::vector<typename R::C> rec;
  std::vector<Key> unsorted_key, key_tmp, key_tmp2;
  std::vector<uint32_t> bits, bits_tmp;
  std::vector<int32_t> perm, order, index_tmp;
  // ... and in sorted layout.
  std::vector<typename V::C> value;
  std::vector<typename R::C> rec_sorted;
  std::vector<int8_t> dir;
  std::vector<int32_t> reach_lo, reach_hi, subset_hi;
  std::vector<Mag> magnitude;
  std::vector<int32_t> successor;
  std::unique_ptr<sgperm::Workspace<Mag>> search;
};

// First k in [lo, hi) with value[k] >= target (the values ascend there), by
// the same halving as `lower_bound` in _graph.py, which gives the same
// answer also where NaNs make the comparison non-monotone.
template <typename C>
inline int32_t LowerBound(const C* value, int32_t lo, int32_t hi, C target) {
  while (lo < hi) {
    const int32_t mid = (lo + hi) / 2;
    if (value[mid] < target) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The permissibility graph of the subset [lo, hi) of a row in sorted layout
// (`rec` sorted too).
//
// With no negative NaN in the subset (they would sort first), `value[k] <
// target` is false from some k on, and the targets v + eps and v - eps do
// not decrease with the vertex, so one sweep per direction, advanced at every
// vertex, finds every lower bound, the same one as the halving; otherwise
// each is found by halving.
template <typename C, typename Key, typename RC>
void SubsetGraph(const C* value, const Key* key, const RC* rec, int32_t lo,
                 int32_t hi, int32_t size, C range, C alpha, bool remainder,
                 int8_t* dir, int32_t* reach_lo, int32_t* reach_hi,
                 int32_t* subset_hi) {
  const bool takes_part = remainder || hi - lo == size;
  int32_t m = 0;
  for (int32_t j = lo; j < hi; ++j) {
    m += takes_part && rec[j] != 0 && std::isfinite(rec[j]);
  }
  const C eps = range * (alpha + C(1) / static_cast<C>(std::max(m, 1)));
  const bool moves = takes_part && m >= 2;
  if (!(std::isnan(value[lo]) && std::signbit(value[lo]))) {
    // Lower bounds over the whole subset of the targets of every vertex, by
    // branchless merges of the ascending values with the ascending targets;
    // then clamped to each vertex's range ([j + 1, hi) up, [lo, j) down).
    int32_t* up = reach_hi;
    int32_t* down = reach_lo;
    for (int pass = 0; pass < 2; ++pass) {
      const C sign = pass == 0 ? C(1) : C(-1);
      int32_t* bound = pass == 0 ? up : down;
      int32_t i = lo, j = lo;
      while (j < hi) {
        const C target = value[j] + sign * eps;
        const bool below = i < hi && value[i] < target;
        bound[j] = i;
        i += below;
        j += !below;
      }
    }
    int32_t run = lo;
    for (int32_t j = lo; j < hi; ++j) {
      run = (j == lo || key[j] != key[j - 1]) ? j : run;
      const RC r = rec[j];
      const int8_t d = (moves && std::isfinite(r)) ? (r < 0) - (r > 0) : 0;
      dir[j] = d;
      // NaN targets (a NaN value or eps): nothing is below them.
      const bool nan_up = std::isnan(value[j] + eps);
      const bool nan_down = std::isnan(value[j] - eps);
      const int32_t top = nan_up ? j + 1 : std::max(up[j], j + 1);
      const int32_t bottom = nan_down ? lo : std::min(down[j], j);
      reach_lo[j] = d > 0 ? j + 1 : (d < 0 ? bottom : j);
      reach_hi[j] = d > 0 ? top : (d < 0 ? run : j);
      subset_hi[j] = hi;
    }
    return;
  }
  int32_t run = lo;
  for (int32_t j = lo; j < hi; ++j) {
    if (j == lo || key[j] != key[j - 1]) run = j;
    subset_hi[j] = hi;
    const RC r = rec[j];
    const int8_t d = (moves && std::isfinite(r)) ? (r < 0) - (r > 0) : 0;
    dir[j] = d;
    if (d > 0) {
      reach_lo[j] = j + 1;
      reach_hi[j] = LowerBound<C>(value, j + 1, hi, value[j] + eps);
    } else if (d < 0) {
      reach_lo[j] = LowerBound<C>(value, lo, j, value[j] - eps);
      reach_hi[j] = run;
    } else {
      reach_lo[j] = reach_hi[j] = j;
    }
  }
}

// The step of one row, read into `raw` and `rec_raw` (n each); the permuted
// row goes to `out`.
template <typename V, typename R>
void StepRow(const typename V::Raw* raw, const typename R::Raw* rec_raw,
             typename V::Raw* out, int32_t n, int32_t size, uint32_t k0,
             uint32_t k1, typename V::C alpha, bool remainder,
             Scratch<V, R>& s) {
  using C = typename V::C;
  using Key = typename V::Key;
  size = std::clamp(size, 1, n);
  // The value range A (NaN if the row holds a NaN, as jnp.max), the keys.
  Key* unsorted_key = s.unsorted_key.data();
  C lo_value = V::ToC(raw[0]), hi_value = lo_value;
  bool nan = false;
  for (int32_t p = 0; p < n; ++p) {
    s.rec[p] = R::ToC(rec_raw[p]);
    unsorted_key[p] = V::SortKey(raw[p]);
    const C x = V::ToC(raw[p]);
    nan |= std::isnan(x);
    if (x > hi_value) hi_value = x;
    if (x < lo_value) lo_value = x;
  }
  const C range = nan ? std::numeric_limits<C>::quiet_NaN() : hi_value - lo_value;

  // 1. Partition: shuffle (if P < n) by random bits, ties by position; then
  // each chunk by value, ties by shuffled position (both sorts are stable).
  int32_t* perm = s.perm.data();
  for (int32_t p = 0; p < n; ++p) perm[p] = p;
  if (size < n) {
    uint32_t* bits = s.bits.data();
    for (int32_t p = 0; p < n; ++p) {
      bits[p] = ThreefryBits(k0, k1, 0, static_cast<uint32_t>(p));
    }
    sgperm::SortStable<uint32_t>(bits, perm, n, s.bits_tmp.data(),
                                 s.index_tmp.data());
  }
  int32_t* order = s.order.data();
  std::copy(perm, perm + n, order);
  Key* chunk_key = s.key_tmp.data();
  for (int32_t i = 0; i < n; ++i) chunk_key[i] = unsorted_key[order[i]];
  for (int32_t lo = 0; lo < n; lo += size) {
    const int32_t count = std::min(size, n - lo);
    sgperm::SortStable<Key>(chunk_key + lo, order + lo, count,
                            s.key_tmp2.data(), s.index_tmp.data());
  }

  // 2. Permissibility graph, subset by subset, in sorted layout.
  C* value = s.value.data();
  typename R::C* rec = s.rec_sorted.data();
  for (int32_t j = 0; j < n; ++j) {
    value[j] = V::ToC(raw[order[j]]);
    rec[j] = s.rec[order[j]];
    s.magnitude[j] = R::Magnitude(rec[j]);
  }
  for (int32_t lo = 0; lo < n; lo += size) {
    SubsetGraph(value, chunk_key, rec, lo, std::min(lo + size, n), size,
                range, alpha, remainder, s.dir.data(), s.reach_lo.data(),
                s.reach_hi.data(), s.subset_hi.data());
  }

  // 3. Cycles.
  int32_t* succ = s.successor.data();
  sgperm::SolveRow<typename R::Mag>(n, s.dir.data(), s.reach_lo.data(),
                                    s.reach_hi.data(), s.subset_hi.data(),
                                    s.magnitude.data(), succ, *s.search);

  // 4. Permute: vertex j's slot takes the value of vertex succ[j].
  for (int32_t j = 0; j < n; ++j) out[order[j]] = raw[order[succ[j]]];
}

// Rows [begin, end): adjacent rows of one leaf (consecutive offsets, the same
// stride and length) are read and written a block at a time, so that every
// cache line of the leaves is read once.
template <typename V, typename R>
void StepRows(const Leaves<V, R>& leaves, const Rows& rows, int64_t begin,
              int64_t end, typename V::C alpha, bool remainder) {
  Scratch<V, R> s;
  for (int64_t row = begin; row < end;) {
    const int32_t n = rows.length[row];
    const int32_t leaf = rows.leaf[row];
    const int64_t offset = rows.offset[row], stride = rows.stride[row];
    int32_t block = 1;
    while (block < kBlock && row + block < end &&
           rows.leaf[row + block] == leaf && rows.length[row + block] == n &&
           rows.stride[row + block] == stride &&
           rows.offset[row + block] == offset + block) {
      ++block;
    }
    if (n > 0) {
      s.Resize(n);
      const auto* values =
          leaves.started ? leaves.weights[leaf] : leaves.initial[leaf];
      const auto* recs = leaves.recs[leaf];
      for (int32_t p = 0; p < n; ++p) {
        const int64_t at = offset + p * stride;
        for (int32_t b = 0; b < block; ++b) {
          s.raw[static_cast<size_t>(b) * n + p] = values[at + b];
          s.rec_raw[static_cast<size_t>(b) * n + p] = recs[at + b];
        }
      }
      for (int32_t b = 0; b < block; ++b) {
        const size_t base = static_cast<size_t>(b) * n;
        StepRow<V, R>(s.raw.data() + base, s.rec_raw.data() + base,
                      s.out.data() + base, n, rows.size[row + b],
                      rows.keys[2 * (row + b)], rows.keys[2 * (row + b) + 1],
                      alpha, remainder, s);
      }
      auto* out = leaves.out[leaf];
      for (int32_t p = 0; p < n; ++p) {
        const int64_t at = offset + p * stride;
        for (int32_t b = 0; b < block; ++b) {
          out[at + b] = s.out[static_cast<size_t>(b) * n + p];
        }
      }
      if (!leaves.updates.empty()) {
        const auto* params = leaves.initial[leaf];
        auto* updates = leaves.updates[leaf];
        for (int32_t p = 0; p < n; ++p) {
          const int64_t at = offset + p * stride;
          for (int32_t b = 0; b < block; ++b) {
            updates[at + b] = Delta<V>(s.out[static_cast<size_t>(b) * n + p],
                                       params[at + b]);
          }
        }
      }
    }
    row += block;
  }
}

// The leaves' buffers as typed pointers, checked: every leaf's weights,
// initial values and outputs have one dtype and size, and its
// recommendations the same size in the dtype of every leaf's.
template <typename V, typename R>
ffi::Error Gather(ffi::RemainingArgs args, ffi::RemainingRets rets,
                  int64_t leaves_count, bool with_updates, bool started,
                  Leaves<V, R>& leaves, std::vector<int64_t>& sizes) {
  leaves.started = started;
  for (int64_t k = 0; k < leaves_count; ++k) {
    auto w = args.get<ffi::AnyBuffer>(3 * k);
    auto w0 = args.get<ffi::AnyBuffer>(3 * k + 1);
    auto r = args.get<ffi::AnyBuffer>(3 * k + 2);
    auto o = rets.get<ffi::AnyBuffer>(k);
    if (!w || !w0 || !r || !o) {
      return ffi::Error::InvalidArgument("sgperm_permute_leaves: bad buffers");
    }
    const int64_t size = static_cast<int64_t>(w->element_count());
    if (w0->element_type() != w->element_type() ||
        (*o)->element_type() != w->element_type() ||
        static_cast<int64_t>(w0->element_count()) != size ||
        static_cast<int64_t>(r->element_count()) != size ||
        static_cast<int64_t>((*o)->element_count()) != size) {
      return ffi::Error::InvalidArgument(
          "sgperm_permute_leaves: a leaf's buffers differ in size or dtype");
    }
    sizes.push_back(size);
    leaves.weights.push_back(w->reinterpret_data<typename V::Raw>());
    leaves.initial.push_back(w0->reinterpret_data<typename V::Raw>());
    leaves.recs.push_back(r->reinterpret_data<typename R::Raw>());
    leaves.out.push_back(static_cast<typename V::Raw*>((*o)->untyped_data()));
    if (with_updates) {
      auto u = rets.get<ffi::AnyBuffer>(leaves_count + k);
      if (!u || (*u)->element_type() != w->element_type() ||
          static_cast<int64_t>((*u)->element_count()) != size) {
        return ffi::Error::InvalidArgument(
            "sgperm_permute_leaves: bad update buffer");
      }
      leaves.updates.push_back(
          static_cast<typename V::Raw*>((*u)->untyped_data()));
    }
  }
  return ffi::Error::Success();
}

template <typename V, typename R>
ffi::Error Run(ffi::RemainingArgs args, ffi::RemainingRets rets,
               int64_t leaves_count, bool with_updates, const Rows& rows,
               int64_t count, typename V::C alpha, bool remainder,
               bool started) {
  Leaves<V, R> leaves;
  std::vector<int64_t> sizes;
  if (auto e = Gather<V, R>(args, rets, leaves_count, with_updates, started,
                            leaves, sizes);
      e.failure()) {
    return e;
  }
  // Every row must lie inside its leaf: a malformed table is an error,
  // never an access out of bounds.
  for (int64_t i = 0; i < count; ++i) {
    const int64_t n = rows.length[i], leaf = rows.leaf[i];
    if (leaf < 0 || leaf >= leaves_count || n < 0 || rows.offset[i] < 0 ||
        rows.stride[i] < 0 ||
        (n > 0 && rows.offset[i] + (n - 1) * rows.stride[i] >= sizes[leaf])) {
      return ffi::Error::InvalidArgument(
          "sgperm_permute_leaves: a row lies outside its leaf");
    }
  }
  // Rows are independent: a few threads take a run of rows each.
  sgperm::ParallelRows(count, rows.length, [&](int64_t begin, int64_t end) {
    StepRows<V, R>(leaves, rows, begin, end, alpha, remainder);
  });
  return ffi::Error::Success();
}

template <typename V>
ffi::Error DispatchRecs(ffi::DataType recs_type, ffi::RemainingArgs args,
                        ffi::RemainingRets rets, int64_t leaves_count,
                        bool with_updates, const Rows& rows, int64_t count,
                        ffi::AnyBuffer alpha, bool remainder, bool started) {
  using C = typename V::C;
  C a;
  if (alpha.element_type() == ffi::DataType::F32) {
    a = static_cast<C>(*alpha.reinterpret_data<float>());
  } else if (alpha.element_type() == ffi::DataType::F64) {
    a = static_cast<C>(*alpha.reinterpret_data<double>());
  } else {
    return ffi::Error::InvalidArgument(
        "sgperm_permute_leaves: alpha must be float32 or float64");
  }
  return sgperm::WithFloatKind(
      recs_type, "sgperm_permute_leaves: recommendations", [&](auto r) {
        return Run<V, decltype(r)>(args, rets, leaves_count, with_updates,
                                   rows, count, a, remainder, started);
      });
}

ffi::Error PermuteLeavesImpl(ffi::Buffer<ffi::S64> offset,
                             ffi::Buffer<ffi::S64> stride,
                             ffi::Buffer<ffi::S32> length,
                             ffi::Buffer<ffi::S32> leaf,
                             ffi::Buffer<ffi::S32> size,
                             ffi::Buffer<ffi::U32> keys, ffi::AnyBuffer alpha,
                             ffi::Buffer<ffi::PRED> remainder,
                             ffi::Buffer<ffi::PRED> started,
                             ffi::RemainingArgs args,
                             ffi::RemainingRets rets) {
  const int64_t count = static_cast<int64_t>(offset.element_count());
  if (static_cast<int64_t>(stride.element_count()) != count ||
      static_cast<int64_t>(length.element_count()) != count ||
      static_cast<int64_t>(leaf.element_count()) != count ||
      static_cast<int64_t>(size.element_count()) != count ||
      static_cast<int64_t>(keys.element_count()) != 2 * count) {
    return ffi::Error::InvalidArgument(
        "sgperm_permute_leaves: the row tables must have one entry per row");
  }
  if (args.size() == 0 || args.size() % 3 != 0) {
    return ffi::Error::InvalidArgument(
        "sgperm_permute_leaves: expected weights, initial values and "
        "recommendations for every leaf");
  }
  const int64_t leaves_count = static_cast<int64_t>(args.size() / 3);
  const bool with_updates =
      static_cast<int64_t>(rets.size()) == 2 * leaves_count;
  if (!with_updates && static_cast<int64_t>(rets.size()) != leaves_count) {
    return ffi::Error::InvalidArgument(
        "sgperm_permute_leaves: expected one or two results per leaf");
  }
  auto first = args.get<ffi::AnyBuffer>(0);
  auto first_recs = args.get<ffi::AnyBuffer>(2);
  if (!first || !first_recs) {
    return ffi::Error::InvalidArgument("sgperm_permute_leaves: bad buffers");
  }
  for (int64_t k = 1; k < leaves_count; ++k) {
    auto r = args.get<ffi::AnyBuffer>(3 * k + 2);
    if (!r || r->element_type() != first_recs->element_type()) {
      return ffi::Error::InvalidArgument(
          "sgperm_permute_leaves: every leaf's recommendations must have one "
          "dtype");
    }
  }
  const Rows rows{offset.typed_data(), stride.typed_data(),
                  length.typed_data(), leaf.typed_data(), size.typed_data(),
                  keys.typed_data()};
  const bool rem = *remainder.typed_data();
  const bool start = *started.typed_data();
  const ffi::DataType recs_type = first_recs->element_type();
  return sgperm::WithFloatKind(
      first->element_type(), "sgperm_permute_leaves: weights", [&](auto v) {
        return DispatchRecs<decltype(v)>(recs_type, args, rets, leaves_count,
                                         with_updates, rows, count, alpha, rem,
                                         start);
      });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SgpermPermuteLeaves, PermuteLeavesImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S64>>()
                                  .Arg<ffi::Buffer<ffi::S64>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::U32>>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .RemainingArgs()
                                  .RemainingRets());
