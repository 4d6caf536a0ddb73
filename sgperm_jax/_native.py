"""Native CPU kernels: XLA FFI custom calls into ``csrc/``.

On XLA:CPU the JAX stages pay per operation and per iteration; the same
algorithms as sequential C++ loops are many times faster. Two kernels:

* ``sgperm_find_cycles`` (``csrc/sgperm_cycles.cc``): the sources' order and
  the cycle search of one batch of rows, exactly the successors of
  :func:`sgperm_jax.find_cycles` (:func:`find_cycles_native`);
* ``sgperm_permute_leaves`` (``csrc/sgperm_rows.cc``): a whole permutation
  step of every row of many leaves, the rows given as strided views of the
  leaves, exactly what the four JAX stages compute
  (:func:`permute_leaves_native`);
* ``sgperm_laperm_sync`` (``csrc/sgperm_laperm.cc``): LaPerm's bank and
  synchronisation of every row of many leaves (:func:`laperm_sync_native`).

The shared library ``_sgperm_native*.so`` is built at install time as an
optional extension (see ``setup.py``); when it is missing or does not load
(no compiler at install time, say) :func:`available` is False and the JAX
stages are used. Setting the environment variable ``SGPERM_JAX_NO_NATIVE=1``
disables it too.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading

import jax
import jax.numpy as jnp
import numpy as np

_TARGETS = {"sgperm_find_cycles": "SgpermFindCycles",
            "sgperm_permute_leaves": "SgpermPermuteLeaves",
            "sgperm_laperm_sync": "SgpermLapermSync"}
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
          for target, symbol in _TARGETS.items():
            jax.ffi.register_ffi_target(
                target, jax.ffi.pycapsule(getattr(lib, symbol)),
                platform="cpu")
          _state["lib"] = lib  # keep it loaded
          ok = True
        except Exception as e:  # any failure: report it, fall back
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
    raise RuntimeError(f"sgperm_jax: native kernel unavailable: {load_error()}")
  direction = jnp.asarray(direction)
  magnitude = jnp.asarray(magnitude)
  if magnitude.dtype not in (np.dtype(np.uint32), np.dtype(np.uint64)):
    raise ValueError(
        "sgperm_jax: magnitude: expected uint32 or uint64, got"
        f" {magnitude.dtype}")
  shape = direction.shape
  args = [direction.astype(jnp.int8)] + [
      jnp.asarray(x).astype(jnp.int32)
      for x in (reach_lo, reach_hi, subset_lo, subset_hi)] + [magnitude]
  for name, x in zip(("reach_lo", "reach_hi", "subset_lo", "subset_hi",
                      "magnitude"), args[1:]):
    if x.shape != shape:
      raise ValueError(f"sgperm_jax: {name}: shape {x.shape} differs from"
                       " direction's "
                       f"{shape}")
  if len(shape) < 1:
    raise ValueError("sgperm_jax: direction: expected (rows, n), got a scalar")
  if int(np.prod(shape)) == 0:
    return jnp.zeros(shape, jnp.int32)
  call = jax.ffi.ffi_call("sgperm_find_cycles",
                          jax.ShapeDtypeStruct(shape, jnp.int32),
                          vmap_method="broadcast_all")
  return call(*args)


def permute_leaves_native(weights: list[jax.Array], recommendations:
                          list[jax.Array], *, offset: np.ndarray,
                          stride: np.ndarray, length: np.ndarray,
                          leaf: np.ndarray, size: jax.Array, keys: jax.Array,
                          alpha: jax.Array,
                          include_partition_remainder: jax.Array,
                          initial: list[jax.Array] | None = None,
                          started: jax.Array | bool = True
                          ) -> tuple[list[jax.Array], list[jax.Array] | None]:
  """A whole permutation step of every row of ``weights``, natively on CPU.

  Row ``i`` is ``weights[leaf[i]].ravel()[offset[i] + p * stride[i]]`` for
  ``p`` below ``length[i]``; every entry of a leaf must belong to exactly
  one row. The result is bit-identical to :func:`sgperm_jax.partition`
  (each row's shuffle drawn from ``jax.random.bits(key, (n,), jnp.uint32)``
  of its own key), :func:`sgperm_jax.permissibility_graph`,
  :func:`sgperm_jax.find_cycles` and :func:`sgperm_jax.permute` run on the
  rows. CPU only; under ``vmap`` the kernel runs once per batch entry.

  Args:
    weights: the leaves, all of one dtype (float16, bfloat16, float32 or
      float64).
    recommendations: one per leaf, of its shape, all of one float dtype.
    offset: ``(R,)`` where each row starts in its leaf.
    stride: ``(R,)`` distance between a row's consecutive positions.
    length: ``(R,)`` each row's length.
    leaf: ``(R,)`` each row's leaf.
    size: ``(R,)`` int32 partition sizes, in ``[1, length]``.
    keys: ``(R, 2)`` uint32 threefry key data, one key per row.
    alpha: aggressiveness, a scalar (cast to the values' compute dtype).
    include_partition_remainder: whether a shorter last chunk takes part.
    initial: optional leaves like ``weights``; with them, the updates that
      move ``initial`` onto the permuted weights are returned too.
    started: whether to permute ``weights``; if False, ``initial``.

  Returns:
    The permuted leaves, and the updates (None without ``initial``).

  Raises:
    RuntimeError: the native library is not available.
  """
  if not available():
    raise RuntimeError(f"sgperm_jax: native kernel unavailable: {load_error()}")
  cdt = jnp.promote_types(weights[0].dtype, jnp.float32)
  results = [jax.ShapeDtypeStruct(w.shape, w.dtype) for w in weights]
  if initial is not None:
    results = results * 2
  call = jax.ffi.ffi_call("sgperm_permute_leaves", results,
                          vmap_method="sequential")
  leaves = []
  for k, (w, r) in enumerate(zip(weights, recommendations)):
    leaves += [w, w if initial is None else initial[k], r]
  out = call(jnp.asarray(offset, jnp.int64), jnp.asarray(stride, jnp.int64),
             jnp.asarray(length, jnp.int32), jnp.asarray(leaf, jnp.int32),
             jnp.asarray(size, jnp.int32), jnp.asarray(keys, jnp.uint32),
             jnp.asarray(alpha, cdt),
             jnp.asarray(include_partition_remainder, bool),
             jnp.asarray(started, bool), *leaves)
  out = list(out)
  count = len(weights)
  return out[:count], (out[count:] if initial is not None else None)


def laperm_sync_native(params: list[jax.Array], updates: list[jax.Array],
                       bank: list[jax.Array], *, offset: np.ndarray,
                       stride: np.ndarray, length: np.ndarray,
                       leaf: np.ndarray, fill: jax.Array, sync: jax.Array
                       ) -> tuple[list[jax.Array], list[jax.Array]]:
  """LaPerm's bank and synchronisation of every row, natively on CPU.

  Rows are given as in :func:`permute_leaves_native`. With ``fill``, each
  row of the bank becomes the row of ``params``, sorted; with ``sync``, the
  updates become ``(sorted(bank)[rank(params + updates)] - params)``, row by
  row, cast to the updates' dtype (else they are returned as given). The
  same values as ``_laperm_sync._jax_sync``, bit for bit.

  Args:
    params: the leaves' params, of one dtype.
    updates: the inner optimizer's updates, of one dtype.
    bank: the banks, of the params' dtype.
    offset: ``(R,)`` where each row starts in its leaf.
    stride: ``(R,)`` distance between a row's consecutive positions.
    length: ``(R,)`` each row's length.
    leaf: ``(R,)`` each row's leaf.
    fill: whether to fill the bank first.
    sync: whether to synchronise.

  Returns:
    The banks and the updates.
  """
  if not available():
    raise RuntimeError(f"sgperm_jax: native kernel unavailable: {load_error()}")
  results = ([jax.ShapeDtypeStruct(b.shape, b.dtype) for b in bank]
             + [jax.ShapeDtypeStruct(u.shape, u.dtype) for u in updates])
  call = jax.ffi.ffi_call("sgperm_laperm_sync", results,
                          vmap_method="sequential")
  leaves = []
  for p, u, b in zip(params, updates, bank):
    leaves += [p, u, b]
  out = list(call(jnp.asarray(offset, jnp.int64),
                  jnp.asarray(stride, jnp.int64),
                  jnp.asarray(length, jnp.int32), jnp.asarray(leaf, jnp.int32),
                  jnp.asarray(fill, bool), jnp.asarray(sync, bool), *leaves))
  return out[:len(bank)], out[len(bank):]
