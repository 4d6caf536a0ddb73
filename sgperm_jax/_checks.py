"""Argument checks that name the argument, and skip traced values.

``optax.inject_hyperparams`` passes hyperparameters as traced arrays, so a
check only runs on concrete Python or NumPy numbers.
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import numpy as np
import optax


def _concrete(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _as_number(value: Any) -> Any:
  """A concrete 0-d array as a Python number; anything else unchanged."""
  if (hasattr(value, "dtype") and not isinstance(value, jax.core.Tracer)
      and np.ndim(value) == 0 and np.issubdtype(np.asarray(value).dtype,
                                                np.number)):
    return np.asarray(value).item()
  return value


def number(name: str, value: Any) -> None:
  """Raises TypeError unless ``value`` is a number, array or schedule."""
  if isinstance(value, bool) or not (
      callable(value) or isinstance(value, numbers.Real)
      or hasattr(value, "dtype")):
    raise TypeError(f"sgperm_jax: {name} must be a number or an optax"
                    f" schedule, got {value!r}")


def in_range(name: str, value: Any, lo: float | None, hi: float | None,
             *, open_lo: bool = False) -> None:
  """Raises ValueError unless ``lo <= value <= hi`` (``lo < value``)."""
  number(name, value)
  value = _as_number(value)
  if not _concrete(value):
    return
  if value != value:  # NaN
    raise ValueError(f"sgperm_jax: {name} must be a number, got {value!r}")
  if lo is not None and (value <= lo if open_lo else value < lo):
    raise ValueError(f"sgperm_jax: {name} must be"
                     f" {'>' if open_lo else '>='} {lo}, got {value!r}")
  if hi is not None and value > hi:
    raise ValueError(f"sgperm_jax: {name} must be <= {hi}, got {value!r}")


def positive_or_schedule(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is a schedule or a number ``> 0``."""
  in_range(name, value, 0.0, None, open_lo=True)


def positive_int(name: str, value: Any) -> None:
  """Raises for anything but an integer ``>= 1`` (traced values pass)."""
  if isinstance(value, bool) or not (
      isinstance(value, numbers.Integral) or hasattr(value, "dtype")):
    raise TypeError(f"sgperm_jax: {name} must be an integer, got {value!r}")
  value = _as_number(value)
  if isinstance(value, numbers.Integral) and not 1 <= int(value) < 2**31:
    raise ValueError(f"sgperm_jax: {name} must be >= 1 and < 2**31, got"
                     f" {value!r}")


def seed(name: str, value: Any) -> None:
  """Raises unless ``value`` is an integer usable as a PRNG seed."""
  if isinstance(value, bool) or not (isinstance(value, numbers.Integral)
                                     or hasattr(value, "dtype")):
    raise TypeError(f"sgperm_jax: {name} must be an integer, got {value!r}")
  value = _as_number(value)
  if isinstance(value, numbers.Integral) and not -2**31 <= int(value) < 2**32:
    raise ValueError(f"sgperm_jax: {name} must fit in 32 bits, got"
                     f" {value!r}")


def float_dtype(name: str, value: Any) -> None:
  """Raises TypeError unless ``value`` is None or a real floating dtype."""
  if value is None:
    return
  try:
    dtype = np.dtype(value)
  except TypeError as e:
    raise TypeError(f"sgperm_jax: {name} must be a floating dtype, got"
                    f" {value!r}") from e
  if not jax.numpy.issubdtype(dtype, jax.numpy.floating):
    raise TypeError(f"sgperm_jax: {name} must be a floating dtype, got {dtype}")


def boolean(name: str, value: Any) -> None:
  """Raises TypeError unless ``value`` is a bool (or a traced array)."""
  if not (isinstance(value, bool) or hasattr(value, "dtype")):
    raise TypeError(f"sgperm_jax: {name} must be True or False, got {value!r}")


def params_like_state(reference: Any, params: Any, *, same_shape: bool) -> None:
  """Raises ValueError unless ``params`` fit the tree a state was made for.

  Args:
    reference: the state's tree like the params (``optax.MaskedNode`` where a
      leaf is not the state's).
    params: the params given to ``exact_params``.
    same_shape: whether each owned leaf must have the reference's shape (else
      only its number of elements).
  """
  def masked(x):
    return isinstance(x, optax.MaskedNode)

  treedef = jax.tree.structure(reference, is_leaf=masked)
  try:
    given = treedef.flatten_up_to(params)
  except (ValueError, TypeError) as e:
    raise ValueError(
        "sgperm_jax: exact_params: params do not have the tree structure the"
        f" optimizer state was made for ({treedef.num_leaves} leaves): {e}"
        ) from None
  paths = jax.tree_util.tree_flatten_with_path(reference, is_leaf=masked)[0]
  for (path, ref), got in zip(paths, given):
    if masked(ref):
      continue
    got_shape = np.shape(got)
    fits = (got_shape == np.shape(ref) if same_shape
            else np.size(got) == np.size(ref))
    if not fits:
      raise ValueError(
          f"sgperm_jax: exact_params: params leaf {jax.tree_util.keystr(path)}"
          f" has shape {got_shape}, but the optimizer state was made for"
          f" shape {np.shape(ref)}")
