"""Partition: cut each row into random subsets and sort every subset by value.

With partition size ``P = max(partition_size_min, floor(lamda * n))`` a row is
one subset in natural order when ``P >= n``; otherwise its positions are
shuffled uniformly at random and cut into chunks of ``P`` (a shorter last
chunk takes part only if asked). Each subset is then ordered by value,
ascending and stably (ties keep their order in the subset). The result is the
*sorted layout* that the later stages work in: subsets are consecutive, and
position ``j`` holds the ``j``-th vertex.

The stages run on a 2-D array of *tiles*. For :func:`partition` a tile is one
row; inside the optimizer a tile holds several whole rows of any leaves, back
to back (see ``_packing.py``), and every slot knows where its row starts, how
long it is and its partition size. Both orders are one sort each, of the
whole buffer: the shuffle by ``(row start, random bits, column)``, the
subsets by ``(subset start, value, column)``. On CPU and GPU each key is
packed into one integer (see ``_sorting.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
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


def partition_size(lamda: chex.Numeric, n: chex.Numeric,
                   partition_size_min: chex.Numeric) -> jax.Array:
  """``min(n, max(partition_size_min, floor(lamda * n)))`` as int32.

  ``n`` may be an array of row lengths (one size each).

  Example:
    >>> import sgperm_jax
    >>> int(sgperm_jax.partition_size(0.1, 784, 10))
    78
  """
  p = jnp.maximum(jnp.floor(jnp.asarray(lamda, jnp.float32) * n).astype(
      jnp.int32), jnp.asarray(partition_size_min).astype(jnp.int32))
  return jnp.clip(p, 1, n)


# --------------------------------------------------------------- sorting


def _ordered_packed(major: jax.Array, key: jax.Array, column: jax.Array,
                    size: jax.Array, shared: bool) -> jax.Array:
  """:func:`_ordered_portable` as one sort of a single ``int64`` array.

  With rows sharing tiles (``shared``), ``major << (32 + k) | key << k |
  column`` for ``k`` bits of a column (``2 k + 32 <= 63``). With a row per
  tile, ``major`` is a multiple of ``size`` and ``column - major < size``, so
  ``((major / size) << 32 | key) * size + column - major`` (below
  ``width * 2**32``) orders the same for any width below ``2**31``.
  """
  with wide_ints():
    major = major.astype(jnp.int64)
    key = key.astype(jnp.int64)
    column = column.astype(jnp.int64)
    if shared:
      k = position_bits(column.shape[-1])
      packed = lax.sort(lax.shift_left(major, jnp.int64(32 + k))
                        | lax.shift_left(key, jnp.int64(k)) | column,
                        dimension=1)
      return (packed & jnp.int64((1 << k) - 1)).astype(jnp.int32)
    size = size.astype(jnp.int64)
    packed = lax.sort((lax.shift_left(major // size, jnp.int64(32)) | key)
                      * size + column - major, dimension=1)
    # Every slot of a sorted subset has its subset's size: read it in place.
    return (lax.shift_right_logical(packed // size, jnp.int64(32)) * size
            + packed % size).astype(jnp.int32)


def _ordered_portable(major: jax.Array, key: jax.Array, column: jax.Array,
                      size: jax.Array, shared: bool) -> jax.Array:
  """Columns ordered by ``(major, key, column)``: a sort of the tuple."""
  del size, shared
  return lax.sort((major, key, column), dimension=1, num_keys=3)[2]


def unsigned_key(key: jax.Array) -> jax.Array:
  """``uint32`` keys that order like the 32-bit (or narrower) ``key``."""
  if jnp.issubdtype(key.dtype, jnp.unsignedinteger):
    return key.astype(jnp.uint32)
  unsigned = lax.bitcast_convert_type(key.astype(jnp.int32), jnp.uint32)
  return unsigned ^ jnp.uint32(1 << 31)


def _ordered(major, key, column, size, shared) -> jax.Array:
  """For each position, the column that ``(major, key, column)`` puts there.

  ``key``: 32-bit keys (``uint32``, see :func:`unsigned_key`), or 64-bit
  keys, which only the tuple sort takes.
  """
  if key.dtype.itemsize > 4:
    return _ordered_portable(major, key, column, size, shared)
  return by_platform(functools.partial(_ordered_packed, shared=shared),
                     functools.partial(_ordered_portable, shared=shared),
                     major, key, column, size)


# --------------------------------------------------------------- randomness


def _is_threefry(keys: jax.Array) -> bool:
  return str(jax.random.key_impl(keys)) == "threefry2x32"


def as_threefry(keys: jax.Array) -> jax.Array:
  """Typed threefry keys: ``keys`` themselves, or 64 bits drawn from each
  (for keys of another PRNG implementation) as a threefry key."""
  if _is_threefry(keys):
    return keys
  data = jax.vmap(lambda k: jax.random.bits(k, (2,), jnp.uint32))(
      keys.reshape(-1)).reshape(keys.shape + (2,))
  return jax.random.wrap_key_data(data, impl="threefry2x32")


def slot_bits(row_keys: jax.Array, row: jax.Array, position: jax.Array
              ) -> jax.Array:
  """32 random bits for every slot: bit ``position`` of its row's stream.

  Slot ``(row, position)`` gets ``jax.random.bits(row_keys[row], (n,),
  jnp.uint32)[position]`` (JAX's default, partitionable threefry), which
  depends on neither the row's length nor the other rows.

  Args:
    row_keys: typed PRNG keys, one per row, ``(rows,)``; keys of another
      implementation than threefry are first made threefry keys (see
      :func:`as_threefry`).
    row: ``(tiles, width)`` int32 row of each slot (clipped to the keys).
    position: ``(tiles, width)`` int32 position of each slot in its row.
  """
  # jax.extend imports Pallas: only when bits are drawn.
  from jax.extend.random import threefry2x32_p  # noqa: PLC0415 (lazy import)
  row = jnp.clip(row, 0, row_keys.shape[0] - 1)
  data = jax.random.key_data(as_threefry(row_keys))
  k1, k2 = data[row, 0], data[row, 1]
  b1, b2 = threefry2x32_p.bind(k1, k2, jnp.zeros_like(k1),
                               position.astype(jnp.uint32))
  return b1 ^ b2


def typed_key(key: jax.Array) -> jax.Array:
  """``key`` as a typed key: raw ``uint32`` keys of two words are threefry
  keys (as ``jax.random.PRNGKey`` makes them by default), others are read
  with the default implementation."""
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  if jnp.shape(key)[-1:] == (2,):
    return jax.random.wrap_key_data(key, impl="threefry2x32")
  return jax.random.wrap_key_data(key)


# ------------------------------------------------------------------ stage


def partition_tiles(values: jax.Array, recommendations: jax.Array, *,
                    start: jax.Array, length: jax.Array, size: jax.Array,
                    valid: jax.Array, include_partition_remainder: chex.Numeric,
                    bits: Callable[[], jax.Array], shared: bool
                    ) -> Partition:
  """:func:`partition` of rows laid side by side in tiles.

  Every argument is ``(tiles, width)``, one entry per slot; slots of one row
  are consecutive in their tile, in the row's order.

  Args:
    values: the weights.
    recommendations: the recommendations (``r > 0``: wants smaller).
    start: column where the slot's row starts.
    length: the row's length ``n``.
    size: the row's partition size, in ``[1, n]``.
    valid: False for padding (inactive, never moved).
    include_partition_remainder: whether a shorter last chunk takes part.
    bits: computes 32 random bits per slot (called only if some row is
      shuffled); a row is shuffled by sorting its bits, ties by position.
    shared: whether tiles may hold several rows; if not, ``start`` is 0.

  Returns:
    A :class:`Partition` of the tiles: positions are columns of the tile.
  """
  column = lax.broadcasted_iota(jnp.int32, values.shape, 1)
  shuffles = size < length
  width = jnp.full_like(column, values.shape[1])

  def shuffled():
    b = jnp.where(shuffles, bits(), jnp.uint32(0))
    return _ordered(start, b, column, width, shared)

  perm = lax.cond(jnp.any(shuffles), shuffled, lambda: column)
  keys = sort_key(jnp.take_along_axis(values, perm, axis=1))
  if keys.dtype.itemsize <= 4:
    keys = unsigned_key(keys)
  lo = start + (column - start) // size * size
  where = _ordered(lo, keys, column, size, shared)
  order = jnp.take_along_axis(perm, where, axis=1)
  v = jnp.take_along_axis(values, order, axis=1)
  r = jnp.take_along_axis(recommendations, order, axis=1)
  hi = jnp.minimum(lo + size, start + length)
  active = (r != 0) & jnp.isfinite(r) & valid
  active &= jnp.asarray(include_partition_remainder, bool) | (hi - lo == size)
  return Partition(order=order, values=v, recommendations=r,
                   subset_lo=lo, subset_hi=hi, active=active)


def partition(key: jax.Array, values: jax.Array, recommendations: jax.Array,
              size: chex.Numeric,
              include_partition_remainder: chex.Numeric = True,
              row_ids: jax.Array | None = None) -> Partition:
  """Randomly partitions rows and sorts each subset by value.

  Args:
    key: PRNG key; every row gets its own shuffle.
    values: ``(rows, n)`` weights.
    recommendations: ``(rows, n)`` recommendations (``r > 0``: wants smaller).
      Zero or non-finite entries are inactive.
    size: partition size ``P`` (see :func:`partition_size`); may be traced.
    include_partition_remainder: whether a shorter last chunk takes part.
    row_ids: ``(rows,)`` ids that seed each row's shuffle (default
      ``0..rows-1``); a row with the same key and id is always cut the same:
      its positions are ordered by ``jax.random.bits(fold_in(key, id), (n,),
      jnp.uint32)``, ties by position.

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
  shape = (rows, n)
  if row_ids is None:
    row_ids = jnp.arange(rows, dtype=jnp.int32)
  key = typed_key(key)
  position = lax.broadcasted_iota(jnp.int32, shape, 1)
  row = lax.broadcasted_iota(jnp.int32, shape, 0)

  def bits():
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(row_ids)
    return slot_bits(keys, row, position)

  size = jnp.clip(jnp.asarray(size, jnp.int32), 1, max(n, 1))
  return partition_tiles(
      values, recommendations, start=jnp.zeros(shape, jnp.int32),
      length=jnp.full(shape, n, jnp.int32),
      size=jnp.broadcast_to(size, shape), valid=jnp.ones(shape, bool),
      include_partition_remainder=include_partition_remainder, bits=bits,
      shared=position_bits(n) * 2 + 32 <= 63)
