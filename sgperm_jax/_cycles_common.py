"""What the cycle searches share: the sources' order and the done mark.

Within every subset, sources are searched by decreasing ``|r|`` (ties: larger
sorted position first). The portable loop and the Pallas kernel take that
order from :func:`source_order`; the native kernels compute it themselves.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from sgperm_jax._graph import PermissibilityGraph
from sgperm_jax._layout import compute_dtype
from sgperm_jax._partition import Partition
from sgperm_jax._sorting import by_platform, position_bits, wide_ints

DONE_MARK = -1  # ``next[v]`` of a vertex that is done (in a cycle, or tried)


def _source_sort_packed(subset_lo: jax.Array, magnitude: jax.Array,
                        active: jax.Array) -> jax.Array:
  """:func:`_source_sort_portable` as one sort of a single ``int64`` array.

  ``(lo, rank, n - 1 - pos)`` is packed into ``k + 32 + k`` bits, with rank
  ``2**31 - 1 - bits(|r|)`` for an active vertex (the bits of a non-negative
  float32 order like its value) and ``2**31`` for an inactive one.
  """
  n = magnitude.shape[-1]
  k = position_bits(n)
  bits = lax.bitcast_convert_type(magnitude, jnp.int32)
  rank = jnp.int32(2**31 - 1) - bits
  with wide_ints():
    pos = lax.broadcasted_iota(jnp.int64, magnitude.shape, 1)
    rank = jnp.where(active, rank.astype(jnp.int64), jnp.int64(2**31))
    packed = lax.sort(
        lax.shift_left(subset_lo.astype(jnp.int64), jnp.int64(32 + k))
        | lax.shift_left(rank, jnp.int64(k)) | (jnp.int64(n - 1) - pos),
        dimension=1)
    return (jnp.int64(n - 1) - (packed & jnp.int64((1 << k) - 1))).astype(
        jnp.int32)


def _source_sort_portable(subset_lo: jax.Array, magnitude: jax.Array,
                          active: jax.Array) -> jax.Array:
  """Positions sorted by ``(subset_lo, -|r| or inf if inactive, -pos)``."""
  key = jnp.where(active, -magnitude, jnp.inf)
  pos = lax.broadcasted_iota(jnp.int32, key.shape, 1)
  return -lax.sort((subset_lo, key, -pos), dimension=1, num_keys=3)[2]


def source_order(partition: Partition, graph: PermissibilityGraph
                 ) -> jax.Array:
  """Sorted positions of each subset's sources, in search order.

  Within every subset ``[lo, hi)`` the first ``m`` entries are its active
  vertices by decreasing ``|r|`` (ties: larger position first), the rest its
  inactive ones.
  """
  cdt = compute_dtype(partition.recommendations.dtype)
  magnitude = jnp.abs(partition.recommendations.astype(cdt))
  args = (partition.subset_lo, magnitude, graph.direction != 0)
  if cdt.itemsize == 4 and 2 * position_bits(magnitude.shape[-1]) + 32 <= 63:
    return by_platform(_source_sort_packed, _source_sort_portable, *args)
  return _source_sort_portable(*args)
