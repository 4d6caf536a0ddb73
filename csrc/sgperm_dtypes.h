// What the native kernels share: the dtypes of weights and recommendations
// (their bits, compute dtype, integer sort keys and conversions, as XLA
// computes them), and threefry random bits.

#ifndef SGPERM_JAX_CSRC_SGPERM_DTYPES_H_
#define SGPERM_JAX_CSRC_SGPERM_DTYPES_H_

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace sgperm {

// ------------------------------------------------------------ randomness

inline uint32_t Rotl(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

// Threefry-2x32, 20 rounds, counter (x0, x1); the two output words xor-ed,
// which is jax.random.bits(key, (n,), uint32)[x1] for x0 = 0.
inline uint32_t ThreefryBits(uint32_t k0, uint32_t k1, uint32_t x0,
                             uint32_t x1) {
  static constexpr int kRot[2][4] = {{13, 15, 26, 6}, {17, 29, 16, 24}};
  const uint32_t ks[3] = {k0, k1, k0 ^ k1 ^ 0x1BD11BDAu};
  x0 += ks[0];
  x1 += ks[1];
  for (int i = 0; i < 5; ++i) {
    const int* rot = kRot[i % 2];
    for (int j = 0; j < 4; ++j) {
      x0 += x1;
      x1 = Rotl(x1, rot[j]);
      x1 ^= x0;
    }
    x0 += ks[(i + 1) % 3];
    x1 += ks[(i + 2) % 3] + static_cast<uint32_t>(i + 1);
  }
  return x0 ^ x1;
}

// ------------------------------------------------------------ dtypes

inline float BitsToFloat(uint32_t b) {
  float f;
  std::memcpy(&f, &b, 4);
  return f;
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while (!(man & 0x400u));
      bits = sign | (static_cast<uint32_t>(112 - e) << 23) |
             ((man & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  return BitsToFloat(bits);
}

// How a dtype is read: Raw (its bits), C (its compute dtype, at least f32),
// Key (unsigned integers that order like the values, -0 as +0, as
// `sort_key` then `unsigned_key` in _partition.py) and Mag (the bits of |x|
// in the compute dtype).
template <typename RawT, typename CT, typename KeyT>
struct Kind {
  using Raw = RawT;
  static constexpr Raw kSign = static_cast<Raw>(Raw{1} << (8 * sizeof(Raw) - 1));
  using C = CT;
  using Key = KeyT;
  using Mag = std::conditional_t<sizeof(CT) == 4, uint32_t, uint64_t>;
  static Mag Magnitude(C x) {
    Mag bits;
    std::memcpy(&bits, &x, sizeof(C));
    return bits & (~Mag{0} >> 1);
  }
};

inline uint32_t FloatToBits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

// float to bfloat16, rounding to nearest even; NaN as 0x7fc0 (as XLA).
inline uint16_t FloatToBrain(float f) {
  const uint32_t b = FloatToBits(f);
  if (std::isnan(f)) return 0x7fc0u;
  return static_cast<uint16_t>((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// float to IEEE half, rounding to nearest even; NaN as sign | 0x7e00.
inline uint16_t FloatToHalf(float f) {
  const uint32_t b = FloatToBits(f);
  const uint16_t sign = static_cast<uint16_t>((b >> 16) & 0x8000u);
  const uint32_t abs = b & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;  // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // rounds to inf
  if (abs >= 0x38800000u) {  // normal half
    const uint32_t m = abs - 0x38000000u;  // rebias exponent 127 -> 15
    return sign | static_cast<uint16_t>((m + 0xfffu + ((m >> 13) & 1u)) >> 13);
  }
  if (abs < 0x33000000u) return sign;  // below half of the least subnormal
  // Subnormal half: shift the full significand, round to nearest even.
  const uint32_t e = abs >> 23;
  const uint32_t man = (abs & 0x7fffffu) | 0x800000u;
  const uint32_t shift = 126 - e;  // 14 - (e - 127) + 13 - 1 ... in [14, 24]
  const uint32_t half = 1u << (shift - 1);
  uint32_t q = man >> shift;
  const uint32_t rest = man & ((1u << shift) - 1);
  if (rest > half || (rest == half && (q & 1u))) ++q;
  return sign | static_cast<uint16_t>(q);
}

struct F32 : Kind<uint32_t, float, uint32_t> {
  static C ToC(Raw b) { return BitsToFloat(b); }
  static Raw FromC(C x) { return FloatToBits(x); }
  static Key SortKey(Raw b) {
    int32_t k = static_cast<int32_t>(b);
    if (k == INT32_MIN) k = 0;
    if (k < 0) k ^= INT32_MAX;
    return static_cast<uint32_t>(k) ^ 0x80000000u;
  }
};

struct F64 : Kind<uint64_t, double, uint64_t> {
  static C ToC(Raw b) {
    double d;
    std::memcpy(&d, &b, 8);
    return d;
  }
  static Raw FromC(C x) {
    Raw b;
    std::memcpy(&b, &x, 8);
    return b;
  }
  static Key SortKey(Raw b) {
    int64_t k = static_cast<int64_t>(b);
    if (k == INT64_MIN) k = 0;
    if (k < 0) k ^= INT64_MAX;
    return static_cast<uint64_t>(k) ^ (uint64_t{1} << 63);
  }
};

template <bool kBrain>
struct Half : Kind<uint16_t, float, uint32_t> {
  static C ToC(Raw b) {
    return kBrain ? BitsToFloat(static_cast<uint32_t>(b) << 16)
                  : HalfToFloat(b);
  }
  static Raw FromC(C x) { return kBrain ? FloatToBrain(x) : FloatToHalf(x); }
  static Key SortKey(Raw b) {
    int32_t k = static_cast<int16_t>(b);
    if (k == INT16_MIN) k = 0;
    if (k < 0) k ^= INT16_MAX;
    return static_cast<uint32_t>(k) ^ 0x80000000u;
  }
};
using F16 = Half<false>;
using BF16 = Half<true>;

}  // namespace sgperm

#endif  // SGPERM_JAX_CSRC_SGPERM_DTYPES_H_
