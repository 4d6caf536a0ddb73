"""Row layout: how a parameter leaf is viewed as a stack of weight vectors.

SGPerm only permutes values *within* a weight vector ("row"). By default a row
is all incoming connections of one output neuron (docs/algorithm.md §2): the
last axis of a leaf indexes neurons, a 1-D leaf (a bias) is one row, a 0-D
leaf never moves.
Users may say per leaf ``"whole"`` (the whole leaf is one row) or ``None``
(do not permute), as one value, a tree of values, or a callable on the params.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Final, Literal

import jax
import jax.numpy as jnp
import numpy as np

RowLayout = Literal["neurons", "whole"] | None
LayoutSpec = RowLayout | Any | Callable[[Any], Any]

NEURONS: Final = "neurons"
WHOLE: Final = "whole"
_VALID = (NEURONS, WHOLE, None)


def _is_spec_leaf(x: Any) -> bool:
  return x is None or isinstance(x, str)


def resolve_layout(layout: LayoutSpec, tree: Any) -> Any:
  """Returns a tree (structure of ``tree``) of row layouts, one per leaf.

  Args:
    layout: ``"neurons"``, ``"whole"`` or ``None`` for every leaf; a tree of
      those with the structure of ``tree``; or a callable that takes ``tree``
      and returns such a tree.
    tree: the parameters (or updates) the layout describes.

  Returns:
    A tree of the structure of ``tree`` whose leaves are layout strings or None.
  """
  if callable(layout):
    layout = layout(tree)
  if _is_spec_leaf(layout):
    _check_spec(layout, "layout")
    return jax.tree.map(lambda _: layout, tree)
  treedef = jax.tree.structure(tree)
  try:
    specs = treedef.flatten_up_to(layout)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "sgperm_jax: layout: a tree of row layouts must have the structure of"
        " the params"
        f" ({treedef}); got {jax.tree.structure(layout, is_leaf=_is_spec_leaf)}"
    ) from e
  for path, spec in zip(leaf_paths(tree), specs):
    _check_spec(spec, f"layout at {path}")
  return jax.tree.unflatten(treedef, specs)


def check_layout(layout: LayoutSpec) -> None:
  """Checks a layout given as one value (trees and callables: at use)."""
  if _is_spec_leaf(layout):
    _check_spec(layout, "layout")


def _check_spec(spec: Any, where: str) -> None:
  if spec not in _VALID:
    raise ValueError(
        f"sgperm_jax: {where}: expected 'neurons', 'whole' or None, got"
        f" {spec!r}")


def leaf_paths(tree: Any) -> list[str]:
  """Readable key paths of the leaves of ``tree``, in flattening order."""
  return [jax.tree_util.keystr(p) or "<root>"
          for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def row_shape(shape: tuple[int, ...], spec: RowLayout
              ) -> tuple[int, int] | None:
  """Returns ``(rows, row_length)`` of a leaf, or None if nothing can move."""
  if spec is None or len(shape) == 0:
    return None
  size = math.prod(shape)
  if spec == WHOLE or len(shape) == 1:
    rows, n = 1, size
  else:
    rows, n = shape[-1], size // max(shape[-1], 1)
  if rows == 0 or n < 2:
    return None
  return rows, n


def row_axes(ndim: int, spec: RowLayout) -> tuple[int, ...] | None:
  """The axes a reduction over each row of a leaf runs along (``None``: all,
  the leaf is one row), for use with ``keepdims=True``."""
  return tuple(range(ndim - 1)) if spec == NEURONS and ndim >= 2 else None


def center_rows(x: jax.Array, spec: RowLayout, *, active_only: bool = False
                ) -> jax.Array:
  """``x`` minus its mean over each row of ``spec``, computed in at least
  float32 and rounded once; a leaf with layout ``None`` comes back as it is.

  With ``active_only`` (recommendations), the mean is over the finite,
  nonzero entries and only those change; otherwise every row keeps sum 0
  of its change (LaPerm's free updates).

  Example:
    >>> import jax.numpy as jnp
    >>> from sgperm_jax._layout import center_rows
    >>> center_rows(jnp.array([3., 1., 0., 2.]), "neurons",
    ...             active_only=True).tolist()
    [1.0, -1.0, 0.0, 0.0]
    >>> center_rows(jnp.array([3., 1., 0., 2.]), "neurons").tolist()
    [1.5, -0.5, -1.5, 0.5]
  """
  if spec is None or jnp.ndim(x) == 0:
    return x
  x = jnp.asarray(x)
  wide = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  axes = row_axes(x.ndim, spec)
  active = (jnp.isfinite(wide) & (wide != 0) if active_only
            else jnp.ones_like(wide, dtype=bool))  # keeps its sharding
  total = jnp.sum(jnp.where(active, wide, 0), axis=axes, keepdims=True)
  count = jnp.sum(active, axis=axes, keepdims=True)
  mean = total / jnp.maximum(count, 1)
  return jnp.where(active, wide - mean, wide).astype(x.dtype)


def to_rows(x: jax.Array, spec: RowLayout) -> jax.Array:
  """Views a leaf as ``(rows, n)``; row ``j`` of a kernel is ``x[..., j]``."""
  if spec == WHOLE or x.ndim == 1:
    return x.reshape(1, -1)
  return x.reshape(-1, x.shape[-1]).T


def from_rows(rows: jax.Array, spec: RowLayout, shape: tuple[int, ...]
              ) -> jax.Array:
  """Inverse of :func:`to_rows`."""
  if spec == WHOLE or len(shape) == 1:
    return rows.reshape(shape)
  return rows.T.reshape(shape)


def check_float_leaf(x: Any, path: str) -> None:
  """Raises TypeError unless ``x`` has a real floating dtype."""
  dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
  dtype = np.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f"sgperm_jax: leaf {path} has dtype {dtype}; only real floating"
        " leaves (bfloat16, float16, float32, float64) can be permuted. Give it"
        " the layout None, or route it to another optimizer with"
        " optax.partition.")


def compute_dtype(dtype: Any) -> jnp.dtype:
  """Dtype for reach arithmetic: at least float32, the leaf's own if wider."""
  return jnp.promote_types(dtype, jnp.float32)
