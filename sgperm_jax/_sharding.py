"""Which devices hold which rows: the mesh a step runs on, found or given.

Rows are independent, so a step needs no communication when each device
holds whole rows: every device permutes its own rows (under ``shard_map``),
drawing each row's randomness from its global index, and the result is the
single-device one, bit for bit. The rows of a kernel are its last axis, so a
leaf sharded along its last axis splits by rows.

The mesh is the one given (``mesh=``), or, inside ``jax.jit``, the one JAX
can tell: the mesh of the leaves' own shardings when their types carry one
(explicit axes, the default of ``jax.make_mesh``), else the ambient mesh of
``jax.set_mesh``. A leaf's rows are split over the mesh axes of its last
dimension when its sharding is known; otherwise (automatic axes) over every
axis of the mesh, when its row count divides the device count.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from sgperm_jax import _layout


def _named_sharding(x: Any):
  """The sharding in ``x``'s type, if its mesh axes are explicit, or None
  (with automatic axes the type does not say how ``x`` is sharded)."""
  try:
    sharding = jax.typeof(x).sharding
  except (AttributeError, TypeError):
    return None
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or getattr(mesh, "empty", True):
    return None
  explicit = jax.sharding.AxisType.Explicit
  if not all(t == explicit for t in getattr(mesh, "axis_types", ())):
    return None
  return sharding


def find_mesh(leaves: list[Any]) -> Any:
  """The mesh JAX can tell for ``leaves``, or None (one device's program)."""
  for leaf in leaves:
    sharding = _named_sharding(leaf)
    if sharding is not None:
      return sharding.mesh
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def _same_mesh(a: Any, b: Any) -> bool:
  """Whether two meshes (concrete or abstract) have the same axes."""
  return (tuple(a.axis_names) == tuple(b.axis_names)
          and dict(a.shape) == dict(b.shape))


def _axes(entry: Any) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, tuple) else (entry,)


def row_axes(leaf: Any, layout: _layout.RowLayout, mesh: Any
             ) -> tuple[str, ...]:
  """The mesh axes a leaf's rows are split over (``()``: every device has
  them all)."""
  shape = jnp.shape(leaf)
  if layout != _layout.NEURONS or len(shape) < 2:
    return ()
  rows = shape[-1]
  sharding = _named_sharding(leaf)
  if sharding is not None and _same_mesh(sharding.mesh, mesh):
    spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
    axes = _axes(spec[-1])
  else:
    axes = tuple(mesh.axis_names)
  size = math.prod(mesh.shape[a] for a in axes)
  return axes if axes and rows % size == 0 else ()


def leaf_spec(leaf: Any, axes: tuple[str, ...]) -> P:
  """The ``shard_map`` spec of a leaf whose rows are split over ``axes``."""
  if not axes:
    return P()
  return P(*([None] * (jnp.ndim(leaf) - 1)), axes)


def like(x: jax.Array, reference: Any) -> jax.Array:
  """``x`` in ``reference``'s sharding where its type says it (explicit
  axes); else as it is (XLA propagates automatic shardings)."""
  sharding = _named_sharding(reference)
  if sharding is None or _named_sharding(x) == sharding:
    return x
  return jax.sharding.reshard(x, sharding.spec)


def as_spec(x: Any, spec: P) -> Any:
  """``x`` resharded to ``spec`` where its type has another (explicit axes:
  ``shard_map`` takes its inputs as specified); else as it is."""
  sharding = _named_sharding(x)
  if sharding is None:
    return x
  ndim = jnp.ndim(x)
  have = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
  want = tuple(spec) + (None,) * (ndim - len(spec))
  return x if have == want else jax.sharding.reshard(x, spec)
