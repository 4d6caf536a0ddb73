"""Sparse and weight-agnostic initialisers, for networks trained by permuting.

A permutation optimizer (:func:`sgperm_jax.sgperm`, :func:`sgperm_jax.laperm`)
never changes the values of a weight row, only their order (docs/algorithm.md
§2). A row that starts with zeros keeps exactly as many zeros: training
*rewires* the network, moving its connections between inputs, and its
sparsity is the one chosen at initialisation. A row whose nonzero weights all
share one value ``±v`` (Train-by-Reconnect's "weight agnostic" networks)
keeps that single value too.

Both initialisers here have the signature of ``jax.nn.initializers``,
``init(key, shape, dtype) -> Array``, and can be passed as Flax's
``kernel_init``. Their rows are those of the layout ``"neurons"``: ``w[...,
j]``, the incoming weights of output unit ``j`` (a vector is one row, a
scalar a row of one value). Each row keeps exactly
:func:`row_nonzeros` ``(row length, density)`` of its slots, chosen uniformly
at random and independently per row; the other slots are ``+0.0``. A draw
is compiled once per initialiser, shape and dtype, so a model's layers of
one shape share one program.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from sgperm_jax import initializers
  >>> init = initializers.agnostic(0.5, density=0.5, sign="positive")
  >>> w = init(jax.random.key(0), (4, 3))
  >>> (w != 0).sum(axis=0).tolist(), sorted(set(w.ravel().tolist()))
  ([2, 2, 2], [0.0, 0.5])
"""

from __future__ import annotations

import functools
import math
import numbers
import operator
from collections.abc import Callable, Sequence
from typing import Any, Final

import jax
import jax.numpy as jnp
import numpy as np

from sgperm_jax import _layout

Initializer = Callable[..., jax.Array]
SIGNS: Final = ("random", "positive", "negative")


def _check_density(density: Any) -> float:
  if (isinstance(density, bool) or not isinstance(density, numbers.Real)
      or not 0.0 < float(density) <= 1.0):
    raise ValueError(
        f"sgperm_jax: density must be a number in (0, 1], got {density!r}")
  return float(density)


def row_nonzeros(row_length: int, density: float) -> int:
  """How many slots of a row of ``row_length`` values the initialisers keep.

  ``density * row_length`` rounded half up, and at least 1 (for a non-empty
  row).

  Args:
    row_length: the number of values in a row, ``>= 0``.
    density: the fraction of slots to keep, in ``(0, 1]``.

  Returns:
    The number of nonzero slots per row, in ``[min(1, row_length),
    row_length]``.

  Raises:
    ValueError: for a negative ``row_length`` or a ``density`` outside
      ``(0, 1]``.

  Example:
    >>> from sgperm_jax.initializers import row_nonzeros
    >>> row_nonzeros(10, 0.25), row_nonzeros(64, 0.1), row_nonzeros(3, 0.01)
    (3, 6, 1)
  """
  density = _check_density(density)
  if (isinstance(row_length, bool) or not isinstance(row_length,
                                                     numbers.Integral)
      or row_length < 0):
    raise ValueError("sgperm_jax: row_length must be an integer >= 0, got"
                     f" {row_length!r}")
  row_length = int(row_length)
  kept = math.floor(density * row_length + 0.5)
  return min(row_length, max(kept, 1 if row_length else 0))


def _rows_of(shape: tuple[int, ...]) -> tuple[int, int]:
  """``(rows, row length)`` of the layout ``"neurons"`` (a scalar: 1 x 1)."""
  size = math.prod(shape)
  rows = shape[-1] if len(shape) >= 2 else 1
  return rows, (size // rows if rows else 0)


def _mask(key: jax.Array, shape: tuple[int, ...], density: float
          ) -> jax.Array:
  """A boolean array of ``shape``: ``row_nonzeros`` True slots per row, at
  uniformly random positions, independently per row."""
  rows, n = _rows_of(shape)
  kept = row_nonzeros(n, density)
  if rows * n == 0:
    return jnp.zeros(shape, bool)
  first = jnp.broadcast_to(jnp.arange(n) < kept, (rows, n))
  mask = jax.random.permutation(key, first, axis=1, independent=True)
  if len(shape) == 0:
    return mask.reshape(())
  return _layout.from_rows(mask, _layout.NEURONS, shape)


def _shape(shape: Any) -> tuple[int, ...]:
  if isinstance(shape, numbers.Integral):
    shape = (shape,)
  try:
    out = tuple(operator.index(d) for d in shape)
  except TypeError as e:
    raise TypeError(
        f"sgperm_jax: shape must be a sequence of integers, got {shape!r}"
    ) from e
  if any(d < 0 for d in out):
    raise ValueError(f"sgperm_jax: shape must not be negative, got {out}")
  return out


def _value_in(value: float, dtype: Any) -> np.ndarray:
  """``value`` rounded to ``dtype``; ValueError unless finite and > 0."""
  try:
    with np.errstate(over="ignore"):
      rounded = np.asarray(value, dtype)
  except (OverflowError, TypeError, ValueError) as e:
    raise ValueError(f"sgperm_jax: value {value!r} is not a number that"
                     f" {jnp.dtype(dtype).name} can hold") from e
  if not (np.isfinite(rounded.astype(np.float64))
          and rounded.astype(np.float64) > 0):
    raise ValueError(
        f"sgperm_jax: value {value!r} is not representable in {dtype}: it"
        f" rounds to {rounded.astype(np.float64)}")
  return rounded


# Compiled once per initialiser configuration, shape and dtype (the static
# arguments).


def _sparse_values(key: jax.Array, base_init: Initializer, density: float,
                   shape: tuple[int, ...], dtype: Any) -> jax.Array:
  k_values, k_mask = jax.random.split(key)
  w = jnp.asarray(base_init(k_values, shape, dtype))
  if w.shape != shape or w.dtype != dtype:
    raise ValueError(f"sgperm_jax: base_init returned {w.dtype}{list(w.shape)}"
                     f" for {jnp.dtype(dtype).name}{list(shape)}")
  return jnp.where(_mask(k_mask, shape, density), w, jnp.zeros_like(w))


def _hashable(x: Any) -> bool:
  try:
    hash(x)
  except TypeError:
    return False
  return True


_draw_sparse = jax.jit(_sparse_values, static_argnums=(1, 2, 3, 4))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4, 5))
def _draw_agnostic(key: jax.Array, value: float, density: float, sign: str,
                   shape: tuple[int, ...], dtype: Any) -> jax.Array:
  magnitude = jnp.asarray(_value_in(value, dtype))
  k_sign, k_mask = jax.random.split(key)
  if sign == "random":  # chosen, not multiplied: a subnormal value stays
    w = jnp.where(jax.random.bernoulli(k_sign, 0.5, shape), magnitude,
                  -magnitude).astype(dtype)
  else:
    w = jnp.full(shape, magnitude if sign == "positive" else -magnitude,
                 dtype)
  return jnp.where(_mask(k_mask, shape, density), w, jnp.zeros_like(w))


def sparse(base_init: Initializer, density: float) -> Initializer:
  """An initialiser that keeps a random fraction ``density`` of each row.

  The returned ``init(key, shape, dtype)`` draws ``base_init(key', shape,
  dtype)`` and sets all but :func:`row_nonzeros` ``(n, density)`` slots of
  every row (``w[..., j]``, of ``n`` values) to ``+0.0``; the slots kept are
  chosen uniformly at random, independently per row, with a key independent
  of ``key'``. They hold ``base_init``'s values, so they are nonzero unless
  ``base_init`` draws an exact zero.

  The kept weights are not rescaled: to keep each unit's input variance,
  scale ``base_init`` by ``1 / density``, e.g.
  ``jax.nn.initializers.variance_scaling(2.0 / density, "fan_in",
  "truncated_normal")`` for a sparse He initialisation.

  Args:
    base_init: a ``jax.nn.initializers``-style initialiser, ``(key, shape,
      dtype) -> Array``.
    density: the fraction of each row to keep, in ``(0, 1]``.

  Returns:
    An initialiser ``init(key, shape, dtype=jnp.float_) -> Array`` (usable as
    Flax's ``kernel_init``; it can be traced by ``jax.jit`` with a static
    shape).

  Raises:
    TypeError: if ``base_init`` is not callable.
    ValueError: if ``density`` is not in ``(0, 1]``.

  Example:
    >>> import jax
    >>> from sgperm_jax.initializers import sparse
    >>> init = sparse(jax.nn.initializers.lecun_normal(), density=0.5)
    >>> w = init(jax.random.key(0), (4, 3))
    >>> (w != 0).sum(axis=0).tolist()
    [2, 2, 2]
  """
  if not callable(base_init):
    raise TypeError(
        f"sgperm_jax: base_init must be an initialiser, got {base_init!r}")
  density = _check_density(density)
  draw: Callable[..., jax.Array]
  if _hashable(base_init):  # shared with every equal initialiser
    draw = functools.partial(_draw_sparse, base_init=base_init,
                             density=density)
  else:  # not a static argument of jit: compiled for this one
    draw = jax.jit(lambda key, shape, dtype: _sparse_values(
        key, base_init, density, shape, dtype), static_argnums=(1, 2))

  def init(key: jax.Array, shape: Sequence[int] | int,
           dtype: Any = jnp.float_) -> jax.Array:
    return draw(key, shape=_shape(shape),
                dtype=jax.dtypes.canonicalize_dtype(dtype))

  return init


def agnostic(value: float, density: float = 1.0, sign: str = "random"
             ) -> Initializer:
  """An initialiser whose every nonzero weight is ``+value`` or ``-value``.

  Train-by-Reconnect's weight-agnostic networks: one shared magnitude, so
  that what a network computes lies only in which inputs each unit connects
  to, and with which sign; a permutation optimizer then only rewires it. Each
  row (``w[..., j]``, of ``n`` values) has :func:`row_nonzeros` ``(n,
  density)`` nonzero slots, chosen uniformly at random as in :func:`sparse`;
  the other slots are ``+0.0``.

  Args:
    value: the shared magnitude, a finite number ``> 0``; it is rounded to
      the dtype asked for, and must stay finite and nonzero there.
    density: the fraction of each row that is nonzero, in ``(0, 1]``.
    sign: ``"random"`` (each nonzero weight's sign independent and equally
      likely), ``"positive"`` or ``"negative"``.

  Returns:
    An initialiser ``init(key, shape, dtype=jnp.float_) -> Array`` for real
    floating dtypes (usable as Flax's ``kernel_init``; it can be traced by
    ``jax.jit`` with a static shape).

  Raises:
    ValueError: if ``value`` is not a finite number ``> 0``, ``density`` is
      not in ``(0, 1]`` or ``sign`` is not one of ``"random"``,
      ``"positive"``, ``"negative"``; ``init`` raises it for a ``value``
      that the dtype rounds to 0 or infinity, and for a dtype that is not
      real floating.

  Example:
    >>> import jax
    >>> from sgperm_jax.initializers import agnostic
    >>> w = agnostic(0.25, density=0.5)(jax.random.key(0), (6, 2))
    >>> sorted(set(abs(w).ravel().tolist())), (w != 0).sum(axis=0).tolist()
    ([0.0, 0.25], [3, 3])
  """
  if (isinstance(value, bool) or not isinstance(value, numbers.Real)
      or not math.isfinite(float(value)) or not float(value) > 0):
    raise ValueError(
        f"sgperm_jax: value must be a finite number > 0, got {value!r}")
  value = float(value)
  density = _check_density(density)
  if not isinstance(sign, str) or sign not in SIGNS:
    raise ValueError(f"sgperm_jax: sign must be one of {SIGNS}, got {sign!r}")

  def init(key: jax.Array, shape: Sequence[int] | int,
           dtype: Any = jnp.float_) -> jax.Array:
    dtype = jax.dtypes.canonicalize_dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise ValueError(
          f"sgperm_jax: dtype must be a real floating dtype, got {dtype}")
    _value_in(value, dtype)  # raises here, outside the trace
    return _draw_agnostic(key, value, density, sign, _shape(shape), dtype)

  return init
