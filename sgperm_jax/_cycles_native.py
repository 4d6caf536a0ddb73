"""The native cycle search: the C++ kernel of ``_native.py``, batch by batch."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

from sgperm_jax import _native
from sgperm_jax._graph import PermissibilityGraph
from sgperm_jax._layout import compute_dtype
from sgperm_jax._partition import Partition


def find_cycles_native(partitions: Sequence[Partition],
                       graphs: Sequence[PermissibilityGraph]
                       ) -> list[jax.Array]:
  """The successors of every batch: one kernel call each (CPU only; the
  kernel orders the sources itself)."""
  out = []
  for part, graph in zip(partitions, graphs):
    cdt = compute_dtype(part.recommendations.dtype)
    bits = jnp.uint32 if cdt.itemsize == 4 else jnp.uint64
    magnitude = lax.bitcast_convert_type(
        jnp.abs(part.recommendations.astype(cdt)), bits)
    out.append(_native.find_cycles_native(
        graph.direction, graph.reach_lo, graph.reach_hi, part.subset_lo,
        part.subset_hi, magnitude))
  return out
