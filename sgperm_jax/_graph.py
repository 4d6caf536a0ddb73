"""Permissibility graph: which slot may take which value.

See docs/algorithm.md §6.

An edge ``i -> k`` means "slot ``i`` may take the value now at ``k``". In the
sorted layout each vertex's targets form one contiguous range of positions, so
the graph is stored as ``[reach_lo, reach_hi)`` per vertex plus the direction
in which the targets are walked (closest first):

* ``r_i < 0`` (wants larger): ``k > i`` with ``v_k < v_i + eps``, ascending;
* ``r_i > 0`` (wants smaller): ``k < i`` with ``v_i - eps <= v_k < v_i``,
  descending;

with reach ``eps = A * (alpha + 1/m)``, ``A`` the row's value range and ``m``
the number of active vertices in the subset. Subsets with ``m < 2`` are empty.
"""

from __future__ import annotations

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
from jax import lax

from sgperm_jax._layout import compute_dtype
from sgperm_jax._partition import Partition, sort_key

UP = 1  # r < 0: walks to larger values
DOWN = -1  # r > 0: walks to smaller values


class PermissibilityGraph(NamedTuple):
  """Out-edges of every vertex of a :class:`Partition`, shape ``(rows, n)``."""
  direction: jax.Array  # int8: UP (+1), DOWN (-1) or 0 (inactive)
  reach_lo: jax.Array  # int32: targets are the positions [reach_lo, reach_hi)
  reach_hi: jax.Array  # int32


def lower_bound(values: jax.Array, lo: jax.Array, hi: jax.Array,
                target: jax.Array) -> jax.Array:
  """First ``k`` in ``[lo, hi)`` with ``values[k] >= target`` (else ``hi``).

  ``values`` is ``(rows, n)`` and ascending on every ``[lo, hi)``; the other
  arguments are ``(rows, n)`` too, one query per entry.
  """
  n = values.shape[-1]

  def body(_, bounds):
    lo, hi = bounds
    mid = (lo + hi) // 2
    below = jnp.take_along_axis(values, jnp.clip(mid, 0, n - 1), axis=-1
                                ) < target
    searching = lo < hi
    return (jnp.where(searching & below, mid + 1, lo),
            jnp.where(searching & ~below, mid, hi))

  steps = max(1, int(n).bit_length())
  return lax.fori_loop(0, steps, body, (lo, hi))[0]


def subset_counts(partition: Partition, mask: jax.Array) -> jax.Array:
  """For each vertex, how many vertices of its subset have ``mask`` set."""
  csum = jnp.cumsum(mask.astype(jnp.int32), axis=-1)
  csum = jnp.pad(csum, ((0, 0), (1, 0)))
  return (jnp.take_along_axis(csum, partition.subset_hi, axis=-1)
          - jnp.take_along_axis(csum, partition.subset_lo, axis=-1))


def permissibility_graph(partition: Partition, alpha: chex.Numeric,
                         value_range: jax.Array | None = None
                         ) -> PermissibilityGraph:
  """Builds the permissibility graph of every subset.

  See docs/algorithm.md §6.

  Args:
    partition: rows in sorted layout, from :func:`partition`.
    alpha: aggressiveness ``alpha_t``.
    value_range: ``A`` per row, shape ``(rows,)`` (or one per vertex,
      ``(rows, n)``, where a line of the arrays holds several rows); by
      default ``max(row) - min(row)`` (a permutation never changes it).

  Returns:
    A :class:`PermissibilityGraph`.

  Example:
    >>> import jax, jax.numpy as jnp, sgperm_jax
    >>> p = sgperm_jax.partition(jax.random.key(0), jnp.array([[0., 1., 2.]]),
    ...                          jnp.array([[-1., 1., 1.]]), size=3)
    >>> g = sgperm_jax.permissibility_graph(p, alpha=0.0)  # eps = 2/3: no edge
    >>> g.direction.tolist(), g.reach_lo.tolist(), g.reach_hi.tolist()
    ([[1, -1, -1]], [[1, 1, 2]], [[1, 1, 2]])
  """
  cdt = compute_dtype(partition.values.dtype)
  v = partition.values.astype(cdt)
  if value_range is None:
    value_range = jnp.max(v, axis=-1) - jnp.min(v, axis=-1)
  value_range = jnp.asarray(value_range)
  if value_range.ndim == 1:
    value_range = value_range[:, None]
  m = subset_counts(partition, partition.active)
  eps = value_range.astype(cdt) * (
      jnp.asarray(alpha).astype(cdt) + 1 / jnp.maximum(m, 1).astype(cdt))
  pos = lax.broadcasted_iota(jnp.int32, v.shape, 1)
  r = partition.recommendations
  moving = partition.active & (m >= 2)
  up = moving & (r < 0)
  down = moving & (r > 0)
  lo, hi = partition.subset_lo, partition.subset_hi
  up_hi = lower_bound(v, pos + 1, hi, v + eps)
  down_lo = lower_bound(v, lo, pos, v - eps)
  # Below a vertex going down, its targets end where its run of equal values
  # starts (exact integer keys, whatever the backend does with subnormals).
  keys = sort_key(partition.values)
  previous = jnp.pad(keys[:, :-1], ((0, 0), (1, 0)))
  run_start = (pos == lo) | (keys != previous)
  down_hi = lax.cummax(jnp.where(run_start, pos, 0), axis=1)
  direction = jnp.where(up, UP, jnp.where(down, DOWN, 0)).astype(jnp.int8)
  reach_lo = jnp.where(up, pos + 1, jnp.where(down, down_lo, pos))
  reach_hi = jnp.where(up, up_hi, jnp.where(down, down_hi, pos))
  return PermissibilityGraph(direction, reach_lo, reach_hi)
