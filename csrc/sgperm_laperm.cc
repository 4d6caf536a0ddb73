// Native CPU kernel for LaPerm's bank and synchronisation, every row at once.
//
// An XLA FFI handler, `SgpermLapermSync`, loaded by `sgperm_jax/_native.py`,
// used by `sgperm_jax.laperm` on CPU with the same result as its JAX path
// (`_rank.py`), bit for bit. As for `SgpermPermuteLeaves`, the leaves are
// passed as they are and a row is a strided view of one leaf.
//
//   inputs  offset, stride (R,) s64; length, leaf (R,) s32: the rows
//           fill   () pred: fill the bank: each row of the params, sorted
//           sync   () pred: synchronise: rank the free weights params +
//                  updates, and give each slot the bank value of its rank
//           then, per leaf: params and bank (one dtype, f16, bf16, f32 or
//           f64, for all leaves), updates (one dtype for all)
//   results per leaf the bank (filled or as given); then per leaf the
//           updates: (synced - params), computed in the wider compute dtype
//           and rounded to the updates' dtype, if `sync`; else as given.
//
// Values are ranked by their exact order (`rank_key` in _laperm_sync.py):
// NaNs last (tied), -0 as +0, subnormals by value, ties by position. The free weights are computed as XLA
// computes `(params + updates).astype(params.dtype)`: in the wider compute
// dtype, then rounded.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "sgperm_dtypes.h"
#include "sgperm_ffi.h"
#include "sgperm_search.h"
#include "sgperm_threads.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {


// The key values are ranked by: their order, NaNs (any) after everything.
template <typename V>
inline typename V::Key RankKey(typename V::Raw raw) {
  if (std::isnan(V::ToC(raw))) return ~typename V::Key{0};
  return V::SortKey(raw);
}

struct Rows {
  const int64_t* offset;
  const int64_t* stride;
  const int32_t* length;
  const int32_t* leaf;
};

template <typename V, typename U>
struct Leaves {
  std::vector<const typename V::Raw*> params, bank;
  std::vector<const typename U::Raw*> updates;
  std::vector<typename V::Raw*> bank_out;
  std::vector<typename U::Raw*> updates_out;
  bool fill, sync;
};

template <typename V>
struct Scratch {
  void Resize(int32_t n) {
    if (static_cast<int32_t>(row.size()) >= n) return;
    row.resize(n);
    bank.resize(n);
    out.resize(n);
    key.resize(n);
    key_tmp.resize(n);
    order.resize(n);
    order_tmp.resize(n);
  }
  std::vector<typename V::Raw> row, bank, out;
  std::vector<typename V::Key> key, key_tmp;
  std::vector<int32_t> order, order_tmp;
};

// Positions 0..n-1 of `row` in rank order.
template <typename V>
void Rank(const typename V::Raw* row, int32_t n, Scratch<V>& s) {
  for (int32_t p = 0; p < n; ++p) {
    s.key[p] = RankKey<V>(row[p]);
    s.order[p] = p;
  }
  sgperm::SortStable<typename V::Key>(s.key.data(), s.order.data(), n,
                                      s.key_tmp.data(), s.order_tmp.data());
}

template <typename V, typename U>
void SyncRows(const Leaves<V, U>& leaves, const Rows& rows, int64_t begin,
              int64_t end) {
  using C = std::conditional_t<(sizeof(typename V::C) > sizeof(typename U::C)),
                               typename V::C, typename U::C>;
  Scratch<V> s;
  for (int64_t i = begin; i < end; ++i) {
    const int32_t n = rows.length[i], k = rows.leaf[i];
    const int64_t offset = rows.offset[i], stride = rows.stride[i];
    if (n <= 0) continue;
    s.Resize(n);
    const auto* params = leaves.params[k];
    const auto* updates = leaves.updates[k];
    auto at = [&](int32_t p) { return offset + p * stride; };
    // The bank row: the params sorted, or as kept.
    if (leaves.fill) {
      for (int32_t p = 0; p < n; ++p) s.row[p] = params[at(p)];
      Rank<V>(s.row.data(), n, s);
      for (int32_t j = 0; j < n; ++j) s.bank[j] = s.row[s.order[j]];
    } else {
      for (int32_t j = 0; j < n; ++j) s.bank[j] = leaves.bank[k][at(j)];
    }
    for (int32_t j = 0; j < n; ++j) leaves.bank_out[k][at(j)] = s.bank[j];
    auto* updates_out = leaves.updates_out[k];
    if (!leaves.sync) {
      for (int32_t p = 0; p < n; ++p) updates_out[at(p)] = updates[at(p)];
      continue;
    }
    // Free weights, ranked; each slot takes the bank value of its rank.
    for (int32_t p = 0; p < n; ++p) {
      const C free = static_cast<C>(V::ToC(params[at(p)])) +
                     static_cast<C>(U::ToC(updates[at(p)]));
      s.row[p] = V::FromC(static_cast<typename V::C>(free));
    }
    Rank<V>(s.row.data(), n, s);
    for (int32_t j = 0; j < n; ++j) s.out[s.order[j]] = s.bank[j];
    for (int32_t p = 0; p < n; ++p) {
      // In the wider compute dtype, rounded only to the updates' dtype (XLA
      // keeps the excess precision of a narrower params dtype).
      const C d = static_cast<C>(V::ToC(s.out[p])) -
                  static_cast<C>(V::ToC(params[at(p)]));
      updates_out[at(p)] = U::FromC(static_cast<typename U::C>(d));
    }
  }
}

template <typename V, typename U>
ffi::Error Run(const Rows& rows, int64_t count, bool fill, bool sync,
               ffi::RemainingArgs args, ffi::RemainingRets rets,
               int64_t leaves_count) {
  Leaves<V, U> leaves;
  leaves.fill = fill;
  leaves.sync = sync;
  std::vector<int64_t> sizes;
  for (int64_t k = 0; k < leaves_count; ++k) {
    auto p = args.get<ffi::AnyBuffer>(3 * k);
    auto u = args.get<ffi::AnyBuffer>(3 * k + 1);
    auto b = args.get<ffi::AnyBuffer>(3 * k + 2);
    auto bo = rets.get<ffi::AnyBuffer>(k);
    auto uo = rets.get<ffi::AnyBuffer>(leaves_count + k);
    if (!p || !u || !b || !bo || !uo) {
      return ffi::Error::InvalidArgument("sgperm_laperm_sync: bad buffers");
    }
    const int64_t size = static_cast<int64_t>(p->element_count());
    if (b->element_type() != p->element_type() ||
        (*bo)->element_type() != p->element_type() ||
        (*uo)->element_type() != u->element_type() ||
        static_cast<int64_t>(u->element_count()) != size ||
        static_cast<int64_t>(b->element_count()) != size ||
        static_cast<int64_t>((*bo)->element_count()) != size ||
        static_cast<int64_t>((*uo)->element_count()) != size) {
      return ffi::Error::InvalidArgument(
          "sgperm_laperm_sync: a leaf's buffers differ in size or dtype");
    }
    sizes.push_back(size);
    leaves.params.push_back(p->reinterpret_data<typename V::Raw>());
    leaves.updates.push_back(u->reinterpret_data<typename U::Raw>());
    leaves.bank.push_back(b->reinterpret_data<typename V::Raw>());
    leaves.bank_out.push_back(
        static_cast<typename V::Raw*>((*bo)->untyped_data()));
    leaves.updates_out.push_back(
        static_cast<typename U::Raw*>((*uo)->untyped_data()));
  }
  for (int64_t i = 0; i < count; ++i) {
    const int64_t n = rows.length[i], k = rows.leaf[i];
    if (k < 0 || k >= leaves_count || n < 0 || rows.offset[i] < 0 ||
        rows.stride[i] < 0 ||
        (n > 0 && rows.offset[i] + (n - 1) * rows.stride[i] >= sizes[k])) {
      return ffi::Error::InvalidArgument(
          "sgperm_laperm_sync: a row lies outside its leaf");
    }
  }
  sgperm::ParallelRows(count, rows.length, [&](int64_t begin, int64_t end) {
    SyncRows<V, U>(leaves, rows, begin, end);
  });
  return ffi::Error::Success();
}

template <typename V>
ffi::Error DispatchUpdates(ffi::DataType updates_type, const Rows& rows,
                           int64_t count, bool fill, bool sync,
                           ffi::RemainingArgs args, ffi::RemainingRets rets,
                           int64_t leaves_count) {
  return sgperm::WithFloatKind(
      updates_type, "sgperm_laperm_sync: updates", [&](auto u) {
        return Run<V, decltype(u)>(rows, count, fill, sync, args, rets,
                                   leaves_count);
      });
}

ffi::Error LapermSyncImpl(ffi::Buffer<ffi::S64> offset,
                          ffi::Buffer<ffi::S64> stride,
                          ffi::Buffer<ffi::S32> length,
                          ffi::Buffer<ffi::S32> leaf,
                          ffi::Buffer<ffi::PRED> fill,
                          ffi::Buffer<ffi::PRED> sync,
                          ffi::RemainingArgs args, ffi::RemainingRets rets) {
  const int64_t count = static_cast<int64_t>(offset.element_count());
  if (static_cast<int64_t>(stride.element_count()) != count ||
      static_cast<int64_t>(length.element_count()) != count ||
      static_cast<int64_t>(leaf.element_count()) != count) {
    return ffi::Error::InvalidArgument(
        "sgperm_laperm_sync: the row tables must have one entry per row");
  }
  if (args.size() == 0 || args.size() % 3 != 0 ||
      rets.size() != 2 * (args.size() / 3)) {
    return ffi::Error::InvalidArgument(
        "sgperm_laperm_sync: expected params, updates and bank for every "
        "leaf, and two results each");
  }
  const int64_t leaves_count = static_cast<int64_t>(args.size() / 3);
  auto first = args.get<ffi::AnyBuffer>(0);
  auto first_updates = args.get<ffi::AnyBuffer>(1);
  if (!first || !first_updates) {
    return ffi::Error::InvalidArgument("sgperm_laperm_sync: bad buffers");
  }
  for (int64_t k = 1; k < leaves_count; ++k) {
    auto p = args.get<ffi::AnyBuffer>(3 * k);
    auto u = args.get<ffi::AnyBuffer>(3 * k + 1);
    if (!p || !u || p->element_type() != first->element_type() ||
        u->element_type() != first_updates->element_type()) {
      return ffi::Error::InvalidArgument(
          "sgperm_laperm_sync: every leaf's params (and updates) must have "
          "one dtype");
    }
  }
  const Rows rows{offset.typed_data(), stride.typed_data(),
                  length.typed_data(), leaf.typed_data()};
  const bool f = *fill.typed_data(), s = *sync.typed_data();
  const ffi::DataType ut = first_updates->element_type();
  return sgperm::WithFloatKind(
      first->element_type(), "sgperm_laperm_sync: params", [&](auto v) {
        return DispatchUpdates<decltype(v)>(ut, rows, count, f, s, args, rets,
                                            leaves_count);
      });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SgpermLapermSync, LapermSyncImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::S64>>()
                                  .Arg<ffi::Buffer<ffi::S64>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .RemainingArgs()
                                  .RemainingRets());
