"""Argument checks that name the argument, and skip traced values.

``optax.inject_hyperparams`` passes hyperparameters as traced arrays, so a
check only runs on concrete Python or NumPy numbers.
"""

from __future__ import annotations

import numbers
from typing import Any


def _concrete(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def number(name: str, value: Any) -> None:
  """Raises TypeError unless ``value`` is a number, array or schedule."""
  if isinstance(value, bool) or not (
      callable(value) or isinstance(value, numbers.Real)
      or hasattr(value, "dtype")):
    raise TypeError(f"{name} must be a number or an optax schedule, got"
                    f" {value!r}")


def in_range(name: str, value: Any, lo: float | None, hi: float | None,
             *, open_lo: bool = False) -> None:
  """Raises ValueError unless ``lo <= value <= hi`` (``lo < value``)."""
  number(name, value)
  if not _concrete(value):
    return
  if value != value:  # NaN
    raise ValueError(f"{name} must be a number, got {value!r}")
  if lo is not None and (value <= lo if open_lo else value < lo):
    raise ValueError(f"{name} must be {'>' if open_lo else '>='} {lo},"
                     f" got {value!r}")
  if hi is not None and value > hi:
    raise ValueError(f"{name} must be <= {hi}, got {value!r}")


def positive_or_schedule(name: str, value: Any) -> None:
  """Raises ValueError unless ``value`` is a schedule or a number ``> 0``."""
  in_range(name, value, 0.0, None, open_lo=True)


def positive_int(name: str, value: Any) -> None:
  """Raises for anything but an integer ``>= 1`` (traced values pass)."""
  if isinstance(value, bool) or not (
      isinstance(value, numbers.Integral) or hasattr(value, "dtype")):
    raise TypeError(f"{name} must be an integer, got {value!r}")
  if isinstance(value, numbers.Integral) and value < 1:
    raise ValueError(f"{name} must be >= 1, got {value!r}")


def boolean(name: str, value: Any) -> None:
  """Raises TypeError unless ``value`` is a bool (or a traced array)."""
  if not (isinstance(value, bool) or hasattr(value, "dtype")):
    raise TypeError(f"{name} must be True or False, got {value!r}")
