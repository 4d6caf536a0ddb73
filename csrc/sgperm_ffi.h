// What the FFI handlers share: calling a kernel templated on a float dtype
// (sgperm_dtypes.h) with the dtype of a buffer.

#ifndef SGPERM_JAX_CSRC_SGPERM_FFI_H_
#define SGPERM_JAX_CSRC_SGPERM_FFI_H_

#include <string>

#include "sgperm_dtypes.h"
#include "xla/ffi/api/ffi.h"

namespace sgperm {

// Returns f(Kind{}) for the kind of `type` (f32, f64, f16 or bf16), or an
// InvalidArgument error saying that `what` must be one of them.
template <typename F>
xla::ffi::Error WithFloatKind(xla::ffi::DataType type, const char* what,
                              F&& f) {
  switch (type) {
    case xla::ffi::DataType::F32:
      return f(F32{});
    case xla::ffi::DataType::F64:
      return f(F64{});
    case xla::ffi::DataType::F16:
      return f(F16{});
    case xla::ffi::DataType::BF16:
      return f(BF16{});
    default:
      return xla::ffi::Error::InvalidArgument(
          std::string(what) + " must be f16, bf16, f32 or f64");
  }
}

}  // namespace sgperm

#endif  // SGPERM_JAX_CSRC_SGPERM_FFI_H_
