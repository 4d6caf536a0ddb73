// Native CPU kernel for SGPerm's source ordering and cycle search
// (docs/algorithm.md §7).
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
// All leading dimensions are rows; the search itself is in sgperm_search.h.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "sgperm_search.h"
#include "sgperm_threads.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using sgperm::SolveRow;
using sgperm::Workspace;

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
template <typename M>
void Solve(int64_t rows, int32_t n, const int8_t* dir, const int32_t* reach_lo,
           const int32_t* reach_hi, const int32_t* subset_hi,
           const M* magnitude, int32_t* succ) {
  const std::vector<int32_t> lengths(rows, n);
  sgperm::ParallelRows(rows, lengths.data(), [&](int64_t begin, int64_t end) {
    SolveRows<M>(begin, end, n, dir, reach_lo, reach_hi, subset_hi, magnitude,
                 succ);
  });
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
