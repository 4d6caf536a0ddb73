"""Sorting by one packed integer key, the fast path of XLA's sort.

A sort of a single integer array is XLA's fast path; a sort that carries
payloads or compares floats goes through a generic comparator, about six times
slower on CPU. The stages sort rows by tuples such as ``(chunk, value,
position)``. On CPU and GPU they pack the tuple into one ``int64`` (traced in a
local 64-bit scope, whether or not x64 mode is on) and sort that; elsewhere
(TPU emulates 64-bit integers) they sort the tuple itself. Both orders are the
same, entry for entry (``tests/test_sorting.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from jax import lax


def wide_ints():
  """A context in which 64-bit integers can be traced, x64 mode or not."""
  enable = getattr(jax, "enable_x64", None)
  if enable is not None:
    return enable(True)
  from jax.experimental import enable_x64  # noqa: PLC0415 (lazy import)
  return enable_x64()


def position_bits(n: int) -> int:
  """Bits that hold a position ``0..n-1`` (at least 1)."""
  return max(1, (int(n) - 1).bit_length())


def by_platform(packed: Callable[..., Any], portable: Callable[..., Any],
                *args: Any) -> Any:
  """``packed(*args)`` when compiled for CPU or GPU, else ``portable(*args)``.

  The two must compute the same thing; the choice is made per platform when
  the computation is lowered.
  """
  return lax.platform_dependent(*args, cpu=packed, cuda=packed, rocm=packed,
                                default=portable)
