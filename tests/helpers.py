"""Helpers shared by the tests: rows of a leaf, row permutation checks, and a
subprocess with 8 simulated CPU devices.

The rows follow docs/algorithm.md §2, written here independently of
``sgperm_jax._layout``: with the layout ``"neurons"`` the rows of a leaf are
``leaf[..., j]`` (a vector is one row), with ``"whole"`` the leaf is one row,
and with ``None`` (or for a scalar) the leaf has no rows: it is never
permuted.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np


def rows(x, layout="neurons", dtype=None) -> np.ndarray | None:
  """Rows (docs/algorithm.md §2) of a leaf, as a 2-D array, one row a line.

  Args:
    x: the leaf (NumPy or JAX array).
    layout: ``"neurons"``, ``"whole"`` or ``None``.
    dtype: if given, the values are converted to it first (e.g. ``float64``
      to compare or sort values of any float dtype).

  Returns:
    An array of shape ``(rows, row length)`` (a view of ``x`` where NumPy can
    make one), or None for the layout ``None`` or a scalar (never permuted).
  """
  if layout is None or np.ndim(x) == 0:
    return None
  x = np.asarray(x) if dtype is None else np.asarray(x, dtype)
  if layout == "whole" or x.ndim == 1:
    return x.reshape(1, -1)
  return x.reshape(math.prod(x.shape[:-1]), x.shape[-1]).T


def bits(x) -> np.ndarray:
  """The bit patterns of a float array (bfloat16 too), as unsigned integers
  of its size; arrays of other dtypes come back as they are."""
  x = np.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return x
  return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _sorted_rows(x, layout, by_bits):
  if layout is None:
    raise ValueError("the layout None has no rows to compare")
  r = rows(x, layout) if by_bits else rows(x, layout, np.float64)
  return np.sort(bits(r) if by_bits else r, axis=-1)


def same_rows(a, b, layout="neurons", *, by_bits=False) -> bool:
  """Whether every row of ``a`` holds exactly the values of that row of ``b``.

  Rows are compared as multisets; ``by_bits`` compares bit patterns (so -0 and
  +0 differ, and NaNs match by payload), else values (NaN matches NaN).
  """
  if np.shape(a) != np.shape(b):
    return False
  sa, sb = (_sorted_rows(x, layout, by_bits) for x in (a, b))
  return bool(np.array_equal(sa, sb, equal_nan=not by_bits))


def assert_same_rows(a, b, layout="neurons", *, by_bits=False, err_msg=""):
  """Asserts that ``a`` is a row-by-row permutation of ``b``.

  ``a`` and ``b`` are arrays or trees of arrays of the same structure; every
  pair of leaves must have the same shape and dtype, and every row of a leaf
  of ``a`` must hold exactly the values of the same row of ``b`` (multiset
  equality, see :func:`same_rows`). ``layout`` applies to every leaf.
  """
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b, f"{err_msg}: {tree_a} != {tree_b}"
  for x, y in zip(leaves_a, leaves_b):
    assert x.dtype == y.dtype and x.shape == y.shape, (
        f"{err_msg}: {x.dtype}{list(x.shape)} != {y.dtype}{list(y.shape)}")
    np.testing.assert_array_equal(
        _sorted_rows(x, layout, by_bits), _sorted_rows(y, layout, by_bits),
        err_msg=err_msg or "the rows are not permutations of each other")


def run_with_8_devices(script: str, timeout: float = 600) -> None:
  """Runs ``script`` in a fresh Python on 8 simulated CPU devices.

  The device count must be set before JAX starts, hence the subprocess. The
  script must exit with status 0 and print ``OK``.
  """
  env = dict(os.environ,
             XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", script], env=env,
                       capture_output=True, text=True, timeout=timeout)
  assert out.returncode == 0, out.stderr[-4000:]
  assert "OK" in out.stdout


def data_error(spec) -> str:
  """The one-line ``DataError`` that loading the data set ``spec`` raises
  (needs the ``[train]`` extra)."""
  import pytest  # noqa: PLC0415 (only the data tests use it)
  from sgperm_jax.experiments import data  # noqa: PLC0415 (needs flax)
  with pytest.raises(data.DataError) as info:
    data.load_dataset(str(spec))
  message = str(info.value)
  assert "\n" not in message
  return message
