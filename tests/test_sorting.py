"""Packed-key sorts (CPU and GPU) against the tuple sorts (other platforms).

``by_platform`` compiles only one of each pair, so here both are called
directly, on rows with ties, signed zeros, subnormals and non-finite values.
"""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sgperm_jax import _cycles_common, _partition


@st.composite
def _case(draw):
  rows = draw(st.sampled_from([1, 4]))
  n = draw(st.sampled_from([1, 7, 300]))
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


def _equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@settings(max_examples=40, deadline=None)
@given(_case())
def test_packed_sorts_order_like_the_tuple_sorts(case):
  w, size, key, rng = case
  rows, n = w.shape
  bits = jax.random.bits(key, (rows, n), jnp.uint32)
  bits = jnp.where(jnp.asarray(rng.random((rows, n)) < 0.3), 7, bits)  # ties
  column = jnp.arange(n, dtype=jnp.int32)[None, :].repeat(rows, 0)
  lo = column // size * size
  keys = _partition.unsigned_key(_partition.sort_key(w))
  for major, key, group in ((jnp.zeros_like(column), bits, jnp.full_like(
      column, n)), (lo, keys, jnp.full_like(column, size))):
    for shared in (True, False):  # rows sharing tiles, or a row per tile
      _equal(jax.jit(_partition._ordered_packed, static_argnums=4)(
          major, key, column, group, shared),
             jax.jit(_partition._ordered_portable, static_argnums=4)(
                 major, key, column, group, shared))
  magnitude = jnp.abs(w)
  active = jnp.isfinite(w) & (w != 0)
  _equal(jax.jit(_cycles_common._source_sort_packed)(lo, magnitude, active),
         jax.jit(_cycles_common._source_sort_portable)(lo, magnitude, active))
