"""Packed-key sorts (CPU and GPU) against the tuple sorts (other platforms).

``by_platform`` compiles only one of each pair, so here both are called
directly, on rows with ties, signed zeros, subnormals and non-finite values.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgperm_jax import _cycles_common, _partition


@st.composite
def _case(draw):
  # few shapes: one compilation each
  rows, n = draw(st.sampled_from([(1, 1), (4, 7), (4, 300)]))
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  palette = np.concatenate([
      rng.normal(size=draw(st.integers(1, 8))) * draw(
          st.sampled_from([1e-40, 1e-3, 1., 1e30])),
      [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45]])
  w = palette[rng.integers(0, len(palette), size=(rows, n))]
  size = draw(st.integers(1, n))
  return (jnp.asarray(w, jnp.float32), jnp.int32(size),
          jax.random.key(seed), rng)


def _equal(a, b, err_msg=""):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                  err_msg=err_msg)


@jax.jit
def _inputs(w, size, key, tied):
  """The sorts' operands (materialized, as the stages hand them over)."""
  rows, n = w.shape
  bits = jax.random.bits(key, (rows, n), jnp.uint32)
  bits = jnp.where(tied, 7, bits)  # ties
  column = jnp.arange(n, dtype=jnp.int32)[None, :].repeat(rows, 0)
  lo = column // size * size
  keys = _partition.unsigned_key(_partition.sort_key(w))
  # Subnormal magnitudes are inactive, as XLA:CPU's flushing comparison
  # ``w != 0`` makes them when run alone (in a fusion it may not flush; the
  # tuple sort compares magnitudes as floats, flushed, the packed one bits).
  active = jnp.isfinite(w) & (jnp.abs(w) >= jnp.finfo(w.dtype).tiny)
  return (bits, column, lo, keys, jnp.full_like(column, n),
          jnp.full_like(column, size), jnp.abs(w), active)


@jax.jit
def _packed_and_tuple_sorts(bits, column, lo, keys, n, size, magnitude,
                            active):
  """``(packed, tuple)`` pairs of every sort, in one program per shape."""
  pairs = []
  for major, key, group in ((jnp.zeros_like(column), bits, n),
                            (lo, keys, size)):
    for shared in (True, False):  # rows sharing tiles, or a row per tile
      pairs.append((
          _partition._ordered_packed(major, key, column, group, shared),
          _partition._ordered_portable(major, key, column, group, shared)))
  pairs.append((_cycles_common._source_sort_packed(lo, magnitude, active),
                _cycles_common._source_sort_portable(lo, magnitude, active)))
  return pairs


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(_case())
def test_packed_sorts_order_like_the_tuple_sorts(case):
  w, size, key, rng = case
  pairs = _packed_and_tuple_sorts(*_inputs(
      w, size, key, jnp.asarray(rng.random(w.shape) < 0.3)))
  assert len(pairs) == 5
  for i, (packed, portable) in enumerate(pairs):
    _equal(packed, portable, f"sort {i}")
