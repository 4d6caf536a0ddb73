"""Cycle search: disjoint cycles of the permissibility graph.

See docs/algorithm.md §7.

Sources are taken in order of decreasing ``|r|`` (ties: larger sorted position
first), skipping vertices already in a cycle or already tried. From each
source a depth-first search walks out-edges closest first; reaching the source
again closes a cycle, whose vertices are then "done". A failed search marks
only its source done.

This module picks the search; each backend is a module of its own, all with
the same result, bit for bit:

* ``_cycles_loop.py``: portable JAX, one ``lax.while_loop`` over all rows;
* ``_cycles_native.py``: the C++ kernel (CPU), through ``_native.py``;
* ``_cycles_pallas.py``: a Pallas kernel, one program per row (Triton on GPU,
  Mosaic on TPU), imported only when a Pallas search is traced.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from jax import lax

from sgperm_jax import _native as _native_kernel
from sgperm_jax._cycles_common import source_order
from sgperm_jax._cycles_loop import find_cycles_loop
from sgperm_jax._cycles_native import find_cycles_native
from sgperm_jax._graph import PermissibilityGraph
from sgperm_jax._partition import Partition

__all__ = ["CYCLE_SEARCHES", "auto_cycle_search", "check_cycle_search",
           "find_cycles", "search", "source_order"]

CYCLE_SEARCHES = ("auto", "loop", "native", "pallas")
# What runs: the loop, the native kernel, or a flavour of the Pallas kernel.
_BACKENDS = ("loop", "native", "triton", "mosaic", "interpret")


def search(partitions: list[Partition], graphs: list[PermissibilityGraph],
           backend: str) -> list[jax.Array]:
  """The successors of every batch by one backend (see ``_BACKENDS``)."""
  if backend == "loop":
    return find_cycles_loop(partitions, graphs)
  if backend == "native":
    return find_cycles_native(partitions, graphs)
  from sgperm_jax import _cycles_pallas  # noqa: PLC0415 (lazy import)
  return _cycles_pallas.find_cycles_batches(partitions, graphs, backend)


def backend_for(cycle_search: str, platform: str) -> str:
  """The backend that ``cycle_search`` runs on ``platform`` (``"cpu"``,
  ``"cuda"``, ``"tpu"``, or another)."""
  if cycle_search == "auto":
    cycle_search = auto_cycle_search(platform)
  if cycle_search == "pallas":
    return {"cuda": "triton", "tpu": "mosaic"}.get(platform, "interpret")
  return cycle_search


def on_platform(fn, cycle_search: str, *args):
  """``fn(*args, backend=...)`` with the backend of ``cycle_search`` on the
  platform the computation is lowered for.

  Only the platforms where the backends differ get a branch of their own
  (each branch is traced, and the Pallas kernels are slow to trace).
  """
  branches = {p: backend_for(cycle_search, p) for p in ("cpu", "cuda", "tpu")}
  default = backend_for(cycle_search, "")
  kwargs = {p: (lambda *a, b=b: fn(*a, backend=b))
            for p, b in branches.items() if b != default}
  if not kwargs:
    return fn(*args, backend=default)
  return lax.platform_dependent(
      *args, default=lambda *a: fn(*a, backend=default), **kwargs)


def find_cycles(partitions: Partition | Sequence[Partition],
                graphs: PermissibilityGraph | Sequence[PermissibilityGraph],
                *, cycle_search: str = "auto"):
  """Finds the disjoint cycles of every subset of every row.

  See docs/algorithm.md §7.

  Every cycle search gives the same result, bit for bit:

  * ``"loop"``: portable JAX, one ``lax.while_loop`` over all rows of all
    batches (one row per lane, O(1) work per lane per iteration);
  * ``"native"``: a C++ kernel called through XLA's FFI, CPU only, built at
    install time (``sgperm_jax._native.available()`` says whether it is);
  * ``"pallas"``: a Pallas kernel, one program per row (Triton on GPU,
    Mosaic on TPU; the Pallas interpreter on CPU, slow, for testing);
  * ``"auto"``: chosen by the platform the computation is compiled for:
    ``"native"`` on CPU (``"loop"`` where it was not built), ``"pallas"``
    on GPU, ``"loop"`` elsewhere (TPU included: the Mosaic flavour keeps
    sixteen int32 buffers of one row in SMEM, ``64 n + 4`` bytes, more than
    older TPUs have for rows of a few hundred; ask for it with
    ``"pallas"``).

  On rows with many tied values and a wide reach, ``"loop"`` can take many
  more iterations than the kernels: they skip whole runs of seen vertices,
  the loop only the run around the source.

  Args:
    partitions: a :class:`Partition`, or a sequence of them (batches of rows
      of different lengths, searched together).
    graphs: the matching :class:`PermissibilityGraph` (or sequence).
    cycle_search: ``"auto"``, ``"loop"``, ``"native"`` or ``"pallas"``.

  Returns:
    The cycles as a successor array per batch, ``(rows, n)`` int32 in sorted
    layout: vertex ``j`` takes the value of vertex ``successor[j]``
    (``successor[j] == j`` when ``j`` is in no cycle). A list when given
    sequences.

  Example:
    >>> import jax, jax.numpy as jnp, sgperm_jax
    >>> @jax.jit
    ... def cycles(w, r):
    ...   p = sgperm_jax.partition(jax.random.key(0), w, r, size=3)
    ...   g = sgperm_jax.permissibility_graph(p, alpha=1.0)
    ...   return (sgperm_jax.find_cycles(p, g),
    ...           sgperm_jax.find_cycles(p, g, cycle_search="loop"))
    >>> auto, loop = cycles(jnp.array([[0., 1., 2.]]),
    ...                     jnp.array([[-1., 1., 1.]]))
    >>> auto.tolist(), loop.tolist()
    ([[2, 0, 1]], [[2, 0, 1]])
  """
  check_cycle_search(cycle_search)
  single = isinstance(partitions, Partition)
  if isinstance(partitions, Partition):
    partitions = [partitions]
  if isinstance(graphs, PermissibilityGraph):
    graphs = [graphs]
  partitions, graphs = list(partitions), list(graphs)
  if not partitions:
    return partitions
  if cycle_search == "native" and not _native_kernel.available():
    raise RuntimeError("sgperm_jax: find_cycles: cycle_search='native' needs"
                       " the native CPU kernel, which is unavailable here:"
                       f" {_native_kernel.load_error()}")
  out = on_platform(lambda p, g, backend: search(list(p), list(g), backend),
                    cycle_search, tuple(partitions), tuple(graphs))
  out = list(out)
  return out[0] if single else out


def auto_cycle_search(platform: str) -> str:
  """The search that ``cycle_search="auto"`` runs on ``platform``.

  Args:
    platform: ``"cpu"``, ``"cuda"`` (or ``"gpu"``), ``"tpu"``, ...

  Returns:
    ``"native"`` on CPU where the kernel is available, ``"pallas"`` on
    CUDA GPUs, ``"loop"`` otherwise.

  Example:
    >>> import sgperm_jax
    >>> import sgperm_jax as sj
    >>> sj.auto_cycle_search("cuda"), sj.auto_cycle_search("tpu")
    ('pallas', 'loop')
  """
  if platform == "cpu":
    return "native" if _native_kernel.available() else "loop"
  return "pallas" if platform in ("cuda", "gpu") else "loop"


def check_cycle_search(cycle_search: str) -> None:
  """Raises ValueError naming the argument, unless ``cycle_search`` is known.
  """
  if cycle_search not in CYCLE_SEARCHES:
    raise ValueError(f"sgperm_jax: cycle_search must be one of"
                     f" {CYCLE_SEARCHES}, got {cycle_search!r}")
