"""Permutation: move values along the cycles found (docs/algorithm.md §8).

Slot ``c_i`` of a cycle takes the value of ``c_{i+1}`` and the last slot the
value of the first (``w[c] = w[roll(c, -1)]``). Values are only moved, never
recomputed, so every row keeps its multiset of values bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from sgperm_jax._partition import Partition


def permute(partition: Partition, successor: jax.Array) -> jax.Array:
  """Applies the cycles and returns the rows in their original layout.

  Args:
    partition: rows in sorted layout, from :func:`partition`.
    successor: ``(rows, n)`` from :func:`find_cycles`: vertex ``j`` takes the
      value of vertex ``successor[j]``.

  Returns:
    ``(rows, n)`` permuted rows, positions as in the rows given to
    :func:`partition`.

  Example:
    >>> import jax, jax.numpy as jnp, sgperm_jax
    >>> p = sgperm_jax.partition(jax.random.key(0), jnp.array([[2., 0., 1.]]),
    ...                          jnp.array([[1., -1., 1.]]), size=3)
    >>> g = sgperm_jax.permissibility_graph(p, alpha=1.0)
    >>> sgperm_jax.permute(p, sgperm_jax.find_cycles(p, g)).tolist()
    [[1.0, 2.0, 0.0]]
  """
  moved = jnp.take_along_axis(partition.values, successor, axis=1)
  rows = lax.broadcasted_iota(jnp.int32, moved.shape, 0)
  return jnp.zeros_like(moved).at[rows, partition.order].set(
      moved, unique_indices=True)
