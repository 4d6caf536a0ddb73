"""Native CPU cycle search: an XLA FFI custom call into ``csrc/sgperm_cycles.cc``.

On XLA:CPU the portable search (a ``lax.while_loop`` in ``_cycles.py``) pays per
iteration; the same algorithm as a sequential C++ loop runs in a few
milliseconds. The shared library ``_sgperm_native*.so`` is built at install
time as an optional extension (see ``setup.py``); when it is missing or does
not load (no compiler at install time, say) :func:`available` is False and
the portable path is used. Setting the environment variable
``SGPERM_JAX_NO_NATIVE=1`` disables it too.

The kernel computes the sources' order and the cycles together and gives
exactly the successors of :func:`sgperm_jax.find_cycles`.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

_TARGET = "sgperm_find_cycles"
_SYMBOL = "SgpermFindCycles"
_lock = threading.Lock()
_state: dict[str, object] = {}


def _library_path() -> str | None:
  """Path of the built shared library in the package directory, if any."""
  here = os.path.dirname(os.path.abspath(__file__))
  for pattern in ("_sgperm_native*.so", "_sgperm_native*.pyd",
                  "_sgperm_native*.dylib"):
    found = sorted(glob.glob(os.path.join(here, pattern)))
    if found:
      return found[0]
  return None


def _load() -> bool:
  """Loads the library and registers the FFI target once; True on success."""
  with _lock:
    if "ok" in _state:
      return bool(_state["ok"])
    ok = False
    if os.environ.get("SGPERM_JAX_NO_NATIVE", "") not in ("", "0"):
      _state["error"] = "disabled by SGPERM_JAX_NO_NATIVE"
    else:
      path = _library_path()
      if path is None:
        _state["error"] = "the native library was not built"
      else:
        try:
          lib = ctypes.cdll.LoadLibrary(path)
          jax.ffi.register_ffi_target(
              _TARGET, jax.ffi.pycapsule(getattr(lib, _SYMBOL)),
              platform="cpu")
          _state["lib"] = lib  # keep it loaded
          ok = True
        except Exception as e:  # pylint: disable=broad-except
          _state["error"] = f"{type(e).__name__}: {e}"
    _state["ok"] = ok
    return ok


def available() -> bool:
  """Whether the native kernel is built, loaded and registered for CPU.

  Returns:
    False when the library is missing or fails to load (the portable path is
    then used), or when ``SGPERM_JAX_NO_NATIVE=1``.
  """
  return _load()


def load_error() -> str | None:
  """Why :func:`available` is False (None when it is True)."""
  return None if _load() else str(_state.get("error"))


def find_cycles_native(direction: jax.Array, reach_lo: jax.Array,
                       reach_hi: jax.Array, subset_lo: jax.Array,
                       subset_hi: jax.Array, magnitude: jax.Array
                       ) -> jax.Array:
  """Source order and cycle search of one batch of rows, natively on CPU.

  All arguments are ``(rows, n)`` in the sorted layout of a
  :class:`~sgperm_jax.Partition` ``p`` and its
  :class:`~sgperm_jax.PermissibilityGraph` ``g``. Works under ``jit`` and
  ``vmap`` (extra leading axes are more rows), on CPU only.

  Args:
    direction: ``g.direction``, int8: +1 UP, -1 DOWN, 0 inactive.
    reach_lo: ``g.reach_lo``, int32: vertex ``i``'s targets are the positions
      ``[reach_lo, reach_hi)`` of its row.
    reach_hi: ``g.reach_hi``, int32.
    subset_lo: ``p.subset_lo``, int32: first position of each vertex's subset.
    subset_hi: ``p.subset_hi``, int32: one past its last position (subsets
      are consecutive blocks of a row; the kernel reads them from this one).
    magnitude: the bits of ``|r|`` in the compute dtype as unsigned integers,
      ``lax.bitcast_convert_type(jnp.abs(p.recommendations.astype(cdt)),
      jnp.uint32)`` (``jnp.uint64`` when ``cdt`` is float64). Sources are
      taken by decreasing magnitude, compared as integers (ties: larger
      position first).

  Returns:
    ``(rows, n)`` int32 successors, bit-identical to
    ``sgperm_jax.find_cycles(p, g)``: vertex ``j`` takes the value of vertex
    ``successor[j]`` (``successor[j] == j`` when in no cycle).

  Raises:
    RuntimeError: the native library is not available.
    ValueError: shapes differ or ``magnitude`` is not uint32/uint64.
  """
  if not available():
    raise RuntimeError(f"sgperm_jax native kernel unavailable: {load_error()}")
  direction = jnp.asarray(direction)
  magnitude = jnp.asarray(magnitude)
  if magnitude.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
    raise ValueError(
        f"magnitude: expected uint32 or uint64, got {magnitude.dtype}")
  shape = direction.shape
  args = [direction.astype(jnp.int8)] + [
      jnp.asarray(x).astype(jnp.int32)
      for x in (reach_lo, reach_hi, subset_lo, subset_hi)] + [magnitude]
  for name, x in zip(("reach_lo", "reach_hi", "subset_lo", "subset_hi",
                      "magnitude"), args[1:]):
    if x.shape != shape:
      raise ValueError(f"{name}: shape {x.shape} differs from direction's "
                       f"{shape}")
  if len(shape) < 1:
    raise ValueError("direction: expected (rows, n), got a scalar")
  if int(np.prod(shape)) == 0:
    return jnp.zeros(shape, jnp.int32)
  call = jax.ffi.ffi_call(_TARGET, jax.ShapeDtypeStruct(shape, jnp.int32),
                          vmap_method="broadcast_all")
  return call(*args)
