"""Partition: cut each row into random subsets and sort every subset by value.

SPEC §3.1-§3.4. With partition size ``P = max(partition_size_min,
floor(lamda * n))`` a row is one subset in natural order when ``P >= n``;
otherwise its positions are shuffled uniformly at random and cut into chunks
of ``P`` (a shorter last chunk takes part only if asked). Each subset is then
ordered by value, ascending and stably (ties keep their order in the
subset). On CPU and GPU both orders come from sorts of one packed integer key
(see ``_sorting.py``). The result is the *sorted layout* that the later
stages work in: position ``j`` of a row holds the ``j``-th vertex, subsets are
consecutive.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax

from sgperm_jax._sorting import by_platform, position_bits, wide_ints


class Partition(NamedTuple):
  """Rows of weights in sorted layout, shape ``(rows, n)`` for every field."""
  order: jax.Array  # int32: original position in the row of each vertex
  values: jax.Array  # the weight held by each vertex
  recommendations: jax.Array  # the recommendation of each vertex's slot
  subset_lo: jax.Array  # int32: first sorted position of the vertex's subset
  subset_hi: jax.Array  # int32: one past its subset's last position
  active: jax.Array  # bool: vertex takes part (r != 0, finite, not left out)


def sort_key(values: jax.Array) -> jax.Array:
  """Signed integers that order exactly like ``values`` (``-0.0 == 0.0``).

  Comparing these instead of the floats keeps the order right where the
  backend flushes subnormals to zero in float comparisons (XLA:CPU does).
  """
  bits = {2: jnp.int16, 4: jnp.int32, 8: jnp.int64}[values.dtype.itemsize]
  key = lax.bitcast_convert_type(values, bits)
  key = jnp.where(key == jnp.iinfo(bits).min, 0, key)  # -0.0 as +0.0
  key = jnp.where(key < 0, key ^ jnp.iinfo(bits).max, key)
  return key.astype(jnp.promote_types(bits, jnp.int32))


def partition_size(lamda: chex.Numeric, n: int,
                   partition_size_min: chex.Numeric) -> jax.Array:
  """``min(n, max(partition_size_min, floor(lamda * n)))`` as an int32 scalar.

  Example:
    >>> import sgperm_jax
    >>> int(sgperm_jax.partition_size(0.1, 784, 10))
    78
  """
  p = jnp.maximum(jnp.floor(jnp.asarray(lamda, jnp.float32) * n).astype(
      jnp.int32), jnp.asarray(partition_size_min).astype(jnp.int32))
  return jnp.clip(p, 1, n)


def _shuffle_packed(bits: jax.Array) -> jax.Array:
  """Positions by ``(bits, position)``: one sort of ``bits << k | position``."""
  k = position_bits(bits.shape[1])
  with wide_ints():
    pos = lax.broadcasted_iota(jnp.int64, bits.shape, 1)
    packed = lax.sort(lax.shift_left(bits.astype(jnp.int64), jnp.int64(k))
                      | pos, dimension=1)
    return (packed & jnp.int64((1 << k) - 1)).astype(jnp.int32)


def _shuffle_portable(bits: jax.Array) -> jax.Array:
  """Positions by ``(bits, position)``: a stable sort carrying positions."""
  pos = lax.broadcasted_iota(jnp.int32, bits.shape, 1)
  return lax.sort((bits, pos), dimension=1, num_keys=1, is_stable=True)[1]


def _shuffle(key: jax.Array, row_ids: jax.Array, n: int) -> jax.Array:
  """A uniformly random permutation of ``range(n)`` for each row.

  Row ``j`` draws from ``fold_in(key, row_ids[j])``, so a row's partition does
  not depend on which other rows are computed with it (or on which device).
  Positions are ordered by 32 random bits, ties by position.
  """
  bits = jax.vmap(lambda i: jax.random.bits(jax.random.fold_in(key, i), (n,),
                                            jnp.uint32))(row_ids)
  return by_platform(_shuffle_packed, _shuffle_portable, bits)


def _chunk_sort_packed(keys: jax.Array, size: jax.Array
                       ) -> tuple[jax.Array, jax.Array]:
  """:func:`_chunk_sort_portable` as one sort of a single ``int64`` array.

  The key ``(chunk * 2**32 + key + 2**31) * size + i % size`` (below
  ``2 n 2**32``) orders like ``(chunk, key, i)`` for int32 ``keys``.
  """
  with wide_ints():
    i = lax.broadcasted_iota(jnp.int64, keys.shape, 1)
    p = size.astype(jnp.int64)
    packed = ((i // p) * jnp.int64(1 << 32) + keys.astype(jnp.int64)
              + jnp.int64(1 << 31)) * p + i % p
    packed = lax.sort(packed, dimension=1)
    chunk = lax.shift_right_arithmetic(packed // p, jnp.int64(32))
    return ((chunk * p + packed % p).astype(jnp.int32),
            chunk.astype(jnp.int32))


def _chunk_sort_portable(keys: jax.Array, size: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
  """Sorts shuffled positions ``i`` by ``(chunk, key, i)``, chunk ``i // size``.

  Args:
    keys: ``(rows, n)`` integer value keys in shuffled order.
    size: the partition size.

  Returns:
    In sorted order, each entry's shuffled position and its chunk.
  """
  i = lax.broadcasted_iota(jnp.int32, keys.shape, 1)
  chunk, _, where = lax.sort((i // size, keys, i), dimension=1, num_keys=3)
  return where, chunk


def partition(key: jax.Array, values: jax.Array, recommendations: jax.Array,
              size: chex.Numeric, include_remainder: chex.Numeric = True,
              row_ids: jax.Array | None = None) -> Partition:
  """Randomly partitions rows and sorts each subset by value (SPEC §3.1-4).

  Args:
    key: PRNG key; every row gets its own shuffle.
    values: ``(rows, n)`` weights.
    recommendations: ``(rows, n)`` recommendations (``r > 0``: wants smaller).
      Zero or non-finite entries are inactive.
    size: partition size ``P`` (see :func:`partition_size`); may be traced.
    include_remainder: whether a shorter last chunk takes part.
    row_ids: ``(rows,)`` ids that seed each row's shuffle (default
      ``0..rows-1``); a row with the same key and id is always cut the same.

  Returns:
    A :class:`Partition` in sorted layout.

  Example:
    >>> import jax, jax.numpy as jnp, sgperm_jax
    >>> p = sgperm_jax.partition(jax.random.key(0), jnp.array([[3., 1., 2.]]),
    ...                          jnp.array([[1., 0., -1.]]), size=3)
    >>> p.values.tolist(), p.order.tolist(), p.active.tolist()
    ([[1.0, 2.0, 3.0]], [[1, 2, 0]], [[False, True, True]])
  """
  rows, n = values.shape
  size = jnp.clip(jnp.asarray(size, jnp.int32), 1, n)
  iota = lax.broadcasted_iota(jnp.int32, (rows, n), 1)
  if row_ids is None:
    row_ids = jnp.arange(rows, dtype=jnp.int32)
  perm = lax.cond(size >= n, lambda: iota, lambda: _shuffle(key, row_ids, n))
  keys = sort_key(jnp.take_along_axis(values, perm, axis=1))
  if keys.dtype.itemsize <= 4:
    where, subset = by_platform(_chunk_sort_packed, _chunk_sort_portable,
                                keys, size)
  else:  # float64: 64-bit keys leave no room to pack
    where, subset = _chunk_sort_portable(keys, size)
  order = jnp.take_along_axis(perm, where, axis=1)
  v = jnp.take_along_axis(values, order, axis=1)
  r = jnp.take_along_axis(recommendations, order, axis=1)
  lo = subset * size
  hi = jnp.minimum(lo + size, n)
  active = (r != 0) & jnp.isfinite(r)
  active &= jnp.asarray(include_remainder, bool) | (hi - lo == size)
  return Partition(order=order, values=v, recommendations=r,
                   subset_lo=lo, subset_hi=hi, active=active)
