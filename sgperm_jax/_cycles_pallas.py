"""Cycle search as a Pallas kernel: the accelerator path of the search.

See docs/algorithm.md §7.

:func:`find_cycles_pallas` returns exactly what
:func:`sgperm_jax.find_cycles` returns, bit for bit, but runs each row as
scalar code in its own Pallas program instead of one batched
``lax.while_loop`` over every row. A program walks its row's subsets one
after another and, in each, takes the sources in order and runs the
depth-first search of docs/algorithm.md §7 with the devices of the native
CPU kernel (``csrc/sgperm_cycles.cc``), none of which changes its outcome:

* the vertices not yet done are a doubly linked list of the row, so the walk
  never visits a done vertex;
* ``seen`` is stamped with the source of the search (each vertex is a source
  at most once, so the stamps of two searches never collide), so nothing is
  reset between searches;
* the seen vertices form runs of consecutive not-done vertices, kept in a
  union-find forest (``run``, with the ends ``run_lo``, ``run_hi`` and
  ``run_size`` at the roots; union by size, path halving), so a walk that
  meets a seen vertex skips its whole run at once, unless the source lies in
  the part it skips and is a target (then the cycle closes). The portable
  loop keeps only the run around the source (its interval ``[a, b]``),
  which turns quadratic when many values tie;
* a DOWN vertex's walk starts below the ties of its value (no targets), at
  the largest not-done vertex below them, found with a second union-find
  over the done vertices (``below``).

So a search costs about the vertices it pushes (times an inverse-Ackermann
factor), never a walk over every edge, however many values tie.

A subset whose sources are exhausted, or that has no UP or no DOWN vertex
left, cannot hold another cycle and is left at once.

Two flavours share that search code and differ only in where a row lives:

* GPU (Pallas Triton, one warp per row): every table and buffer is a whole
  flat array in global memory (``n`` int32 per row, ``n + 1`` for
  ``below``), addressed by scalars from ``program_id * n``; the ten buffers
  the search writes (list links, stamps, path, cursors, the two union-finds)
  are extra outputs of the ``pallas_call`` that the wrapper drops (Pallas
  Triton has no scratch buffers): ``40 n + 4`` bytes per row.
* TPU (Mosaic): a program copies its row into SMEM scratch (Mosaic reads
  scalars only from SMEM), searches it there and copies the successors back.
  SMEM holds sixteen int32 buffers of the row: the five tables,
  ``successor`` and the ten search buffers, ``64 n + 4`` bytes (49 KiB for
  ``n = 784``), which bounds the rows this flavour can take.

On CPU the kernel runs only in the Pallas interpreter (``interpret=True``),
which is how the tests check it; they check the GPU and TPU lowerings by
exporting for those platforms.
"""

from __future__ import annotations

import functools
from typing import Any
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pl_triton

from sgperm_jax._cycles_common import DONE_MARK as _DONE_MARK
from sgperm_jax._cycles_common import source_order
from sgperm_jax._graph import DOWN, UP
_RUNNING, _CLOSED, _FAILED = 0, 1, 2  # outcome of a search
_N_TABLES = 5  # direction, reach_lo, reach_hi, subset_hi, sources
_N_BUFFERS = 11  # successor and the ten buffers the search writes


def _i32(x) -> jax.Array:
  """``x`` as an int32 scalar (Triton rejects weak-typed Python ints)."""
  return jnp.asarray(x, jnp.int32)


class _Row(NamedTuple):
  """One program's view of its row: row-local scalar loads and stores.

  Every ref holds ``n`` entries per row from ``base`` on, except ``below``:
  ``n + 1`` from ``below_base`` on.
  """
  base: jax.Array  # position of the row's vertex 0 in every ref but below
  below_base: jax.Array  # position of the row's below[0]
  n: int  # row length
  direction: object  # read-only int32 refs (1-D)
  reach_lo: object
  reach_hi: object
  subset_hi: object
  sources: object
  successor: object  # int32 refs (1-D) the search writes
  next: object  # the not-done vertices as a doubly linked list
  prev: object
  seen: object  # seen[v] == s: v is seen in the search from s
  stack: Any  # the path
  cursor: Any  # each path vertex's next candidate target
  below: Any  # union-find over done vertices: see _alive_below
  run: Any  # union-find over runs of seen vertices: see _mark_seen
  run_lo: Any
  run_hi: Any
  run_size: Any

  def load(self, ref, i: jax.Array) -> jax.Array:
    """``ref`` at row-local position ``i``."""
    if ref is self.below:
      return ref[self.below_base + i]
    return ref[self.base + i]

  def store(self, ref, i: jax.Array, value: jax.Array) -> None:
    """Writes ``value`` at row-local position ``i`` of ``ref``."""
    if ref is self.below:
      ref[self.below_base + i] = value
    else:
      ref[self.base + i] = value

  def is_up(self, v: jax.Array) -> jax.Array:
    """Whether vertex ``v`` walks up (``r < 0``)."""
    return self.load(self.direction, v) == _i32(UP)

  def reach(self, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Targets ``[lo, hi)`` of vertex ``v``, clamped to the row."""
    n = _i32(self.n)
    return (jnp.clip(self.load(self.reach_lo, v), _i32(0), n),
            jnp.clip(self.load(self.reach_hi, v), _i32(0), n))


def _init_row(row: _Row) -> None:
  """Links the active vertices, clears ``seen`` and sets ``successor[j] = j``.

  Active vertices (``direction != 0``) are linked across the whole row:
  ``next`` is the next active vertex (``n`` after the last), ``prev`` the
  previous one (``-1`` before the first); an inactive vertex is done from
  the start (``next == _DONE_MARK``, ``below[j + 1] == j``).
  """
  n = _i32(row.n)

  def backward(k, after):
    i = n - 1 - k
    active = row.load(row.direction, i) != _i32(0)
    row.store(row.next, i, jnp.where(active, after, _i32(_DONE_MARK)))
    row.store(row.successor, i, i)
    row.store(row.seen, i, _i32(-1))
    row.store(row.below, i + 1, jnp.where(active, i + 1, i))
    return jnp.where(active, i, after)

  def forward(i, before):
    row.store(row.prev, i, before)
    return jnp.where(row.load(row.direction, i) != _i32(0), i, before)

  row.store(row.below, _i32(0), _i32(0))
  lax.fori_loop(_i32(0), n, backward, n)
  lax.fori_loop(_i32(0), n, forward, _i32(-1))


def _alive_below(row: _Row, x: jax.Array) -> jax.Array:
  """The largest not-done vertex ``<= x`` (``x`` in ``[-1, n)``), or -1.

  ``below`` is a union-find forest over ``0..n``: ``below[y] == y`` when
  vertex ``y - 1`` is not done (or ``y == 0``), else ``below[y]`` leads
  towards smaller ``y``. Path halving.
  """
  def halve(y):
    up = row.load(row.below, row.load(row.below, y))
    row.store(row.below, y, up)
    return up

  return lax.while_loop(lambda y: row.load(row.below, y) != y, halve,
                        x + 1) - 1


def _unlink(row: _Row, v: jax.Array) -> None:
  """Removes vertex ``v`` from the not-done list (``v`` joins ``done``)."""
  before = row.load(row.prev, v)
  after = row.load(row.next, v)

  @pl.when(before >= _i32(0))
  def _():
    row.store(row.next, before, after)

  @pl.when(after < _i32(row.n))
  def _():
    row.store(row.prev, after, before)

  row.store(row.next, v, _i32(_DONE_MARK))
  row.store(row.below, v + 1, v)


def _find(row: _Row, v: jax.Array) -> jax.Array:
  """The root of seen vertex ``v``'s run (path halving)."""
  def halve(x):
    up = row.load(row.run, row.load(row.run, x))
    row.store(row.run, x, up)
    return up

  return lax.while_loop(lambda x: row.load(row.run, x) != x, halve, v)


def _union(row: _Row, v: jax.Array, w: jax.Array) -> None:
  """Joins the runs of seen vertices ``v`` and ``w`` (union by size)."""
  x, y = _find(row, v), _find(row, w)
  size_x, size_y = row.load(row.run_size, x), row.load(row.run_size, y)
  big = jnp.where(size_x < size_y, y, x)
  small = jnp.where(size_x < size_y, x, y)
  row.store(row.run, small, big)
  row.store(row.run_size, big, size_x + size_y)
  row.store(row.run_lo, big, jnp.minimum(row.load(row.run_lo, x),
                                         row.load(row.run_lo, y)))
  row.store(row.run_hi, big, jnp.maximum(row.load(row.run_hi, x),
                                         row.load(row.run_hi, y)))


def _mark_seen(row: _Row, s: jax.Array, v: jax.Array) -> None:
  """Marks not-done vertex ``v`` seen in the search from ``s``.

  The seen vertices form runs of consecutive not-done vertices: ``v`` starts
  a run of its own, joined with the runs of its list neighbours if they are
  seen. ``run`` is a union-find forest over the seen vertices (valid for
  them only) whose roots hold their run's ends (``run_lo``, ``run_hi``) and
  size.
  """
  n = _i32(row.n)
  row.store(row.seen, v, s)
  row.store(row.run, v, v)
  row.store(row.run_lo, v, v)
  row.store(row.run_hi, v, v)
  row.store(row.run_size, v, _i32(1))
  for w in (row.load(row.prev, v), row.load(row.next, v)):
    in_row = (w >= _i32(0)) & (w < n)
    w = jnp.clip(w, _i32(0), n - 1)

    @pl.when(in_row & (row.load(row.seen, w) == s))
    def _():
      _union(row, v, w)  # noqa: B023 (pl.when runs it at once)


def _first_cursor(row: _Row, v: jax.Array) -> jax.Array:
  """Where the walk of ``v``'s out-edges starts: its closest candidate.

  UP: the next not-done vertex above ``v``. DOWN: the largest not-done
  vertex below ``v`` and below the ties of its value (``reach_hi``), which
  are no targets.
  """
  def down():
    return _alive_below(row, jnp.minimum(v, row.reach(v)[1]) - _i32(1))

  return lax.cond(row.is_up(v), lambda: row.load(row.next, v), down)


class _Walk(NamedTuple):
  """Registers of one depth-first search."""
  depth: jax.Array  # vertices on the path (the stack)
  outcome: jax.Array  # _RUNNING, _CLOSED or _FAILED


def _walk_step(row: _Row, s: jax.Array, w: _Walk) -> _Walk:
  """One edge of the vertex ``u`` on top of the path (or ``u`` leaves it).

  The cursor of ``u`` is its next candidate target ``cur`` in walking order.
  Past ``u``'s targets, ``u`` leaves the path. A seen ``cur`` starts a run
  of seen vertices that the walk would step over one by one: the cycle
  closes if ``s`` lies in the part of the run ahead of ``cur`` and is a
  target of ``u``; otherwise the cursor jumps past the run. An unseen
  ``cur`` is pushed onto the path.
  """
  n = _i32(row.n)
  top = w.depth - 1
  u = row.load(row.stack, top)
  cur = row.load(row.cursor, top)
  u_up = row.is_up(u)
  lo_u, hi_u = row.reach(u)
  past = jnp.where(u_up, cur >= hi_u, cur < lo_u)
  # ``cur`` is a vertex of the row unless ``past`` (then it may be -1 or n).
  c = jnp.clip(cur, _i32(0), n - 1)
  hit = ~past & (row.load(row.seen, c) == s)
  push = ~past & ~hit
  root = lax.cond(hit, lambda: _find(row, c), lambda: c)
  run_lo = row.load(row.run_lo, root)  # meaningful only if ``hit``
  run_hi = row.load(row.run_hi, root)
  source_ahead = jnp.where(u_up, (s >= cur) & (s <= run_hi),
                           (s >= run_lo) & (s <= cur))
  source_target = (s >= lo_u) & (s < hi_u)
  closes = hit & source_ahead & source_target

  @pl.when(hit & ~closes)
  def _():
    row.store(row.cursor, top, jnp.where(u_up, row.load(row.next, run_hi),
                                         row.load(row.prev, run_lo)))

  @pl.when(push)
  def _():
    _mark_seen(row, s, c)
    row.store(row.cursor, top, jnp.where(u_up, row.load(row.next, c),
                                         row.load(row.prev, c)))
    row.store(row.stack, w.depth, c)
    row.store(row.cursor, w.depth, _first_cursor(row, c))

  depth = w.depth + push.astype(jnp.int32) - past.astype(jnp.int32)
  outcome = jnp.where(closes, _i32(_CLOSED),
                      jnp.where(past & (depth == _i32(0)), _i32(_FAILED),
                                _i32(_RUNNING)))
  return _Walk(depth=depth, outcome=outcome)


def _search(row: _Row, s: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Depth-first search from source ``s`` (not done); marks what is done.

  A closed cycle ``path`` gets ``successor[path[i]] = path[i + 1]`` (the last
  vertex takes ``s``) and all its vertices leave the list; a failed search
  removes ``s`` alone.

  Args:
    row: the program's row.
    s: the source, a row-local position.

  Returns:
    How many UP and how many DOWN vertices became done.
  """
  zero = _i32(0)
  _mark_seen(row, s, s)
  row.store(row.stack, zero, s)
  row.store(row.cursor, zero, _first_cursor(row, s))
  walk = lax.while_loop(lambda w: w.outcome == _i32(_RUNNING),
                        functools.partial(_walk_step, row, s),
                        _Walk(depth=_i32(1), outcome=_i32(_RUNNING)))
  # A failed search leaves only ``s`` (stack[0]) to mark done.
  length = jnp.where(walk.outcome == _i32(_CLOSED), walk.depth, _i32(1))

  def unwind(i, gone):
    v = row.load(row.stack, i)
    after = jnp.where(i + 1 < length, i + 1, zero)

    @pl.when(walk.outcome == _i32(_CLOSED))
    def _():
      row.store(row.successor, v, row.load(row.stack, after))

    _unlink(row, v)
    up = row.is_up(v)
    return gone[0] + up.astype(jnp.int32), gone[1] + (~up).astype(jnp.int32)

  return lax.fori_loop(zero, length, unwind, (zero, zero))


def _search_subset(row: _Row, sub_lo: jax.Array) -> jax.Array:
  """Runs the searches of the subset starting at ``sub_lo``; returns its end.

  Sources are taken in order, skipping done ones, while the subset still has
  an UP and a DOWN vertex not done (a cycle needs both).
  """
  sub_hi = row.load(row.subset_hi, sub_lo)

  def count(i, counts):
    d = row.load(row.direction, i)
    return (counts[0] + (d == _i32(UP)).astype(jnp.int32),
            counts[1] + (d == _i32(DOWN)).astype(jnp.int32))

  zero = _i32(0)
  up, down = lax.fori_loop(sub_lo, sub_hi, count, (zero, zero))
  src_end = sub_lo + up + down  # the active vertices lead the sources

  def more(state):
    ptr, up_left, down_left = state
    return (ptr < src_end) & (up_left > zero) & (down_left > zero)

  def next_source(state):
    ptr, up_left, down_left = state
    s = row.load(row.sources, ptr)
    gone_up, gone_down = lax.cond(
        row.load(row.next, s) != _i32(_DONE_MARK),
        lambda: _search(row, s), lambda: (zero, zero))
    return ptr + 1, up_left - gone_up, down_left - gone_down

  lax.while_loop(more, next_source, (sub_lo, up, down))
  return sub_hi


def _search_row(row: _Row) -> None:
  """The whole cycle search of one row: its subsets one after another."""
  _init_row(row)
  lax.while_loop(lambda lo: lo < _i32(row.n),
                 functools.partial(_search_subset, row), _i32(0))


def _triton_kernel(n: int, *refs) -> None:
  """Program ``i`` searches row ``i`` of the flat ``(rows * n,)`` buffers.

  Refs: the five read-only tables, then ``successor`` and the ten buffers
  the search writes, all in global memory and addressed by scalars
  (``below`` holds ``n + 1`` entries per row, the others ``n``).
  """
  i = pl.program_id(0).astype(jnp.int32)
  _search_row(_Row(i * _i32(n), i * _i32(n + 1), n, *refs))


def _tpu_kernel(n: int, *refs) -> None:
  """Program ``i`` copies row ``i`` into SMEM, searches it, copies it back.

  Refs: the five ``(rows, n)`` tables and ``successor`` in HBM, then sixteen
  SMEM buffers: the five tables, ``successor`` and the ten buffers the
  search writes (Mosaic reads scalars only from SMEM), all ``(n,)`` but
  ``below``, ``(n + 1,)``.
  """
  tables = refs[:_N_TABLES]
  successor = refs[_N_TABLES]
  local = refs[_N_TABLES + 1:]
  i = pl.program_id(0)
  for table, row_copy in zip(tables, local[:_N_TABLES]):
    pltpu.sync_copy(table.at[i], row_copy)
  _search_row(_Row(_i32(0), _i32(0), n, *local))
  pltpu.sync_copy(local[_N_TABLES], successor.at[i])


def _buffer_sizes(n: int) -> list[int]:
  """Entries per row of ``successor`` and the buffers, in ``_Row`` order."""
  names = _Row._fields[3 + _N_TABLES:]
  assert len(names) == _N_BUFFERS
  return [n + 1 if name == "below" else n for name in names]


def _triton_call(tables: list[jax.Array], interpret: bool) -> jax.Array:
  """The search as a Pallas Triton call: whole flat arrays, one row each."""
  rows, n = tables[0].shape
  successor, *_ = pl.pallas_call(
      functools.partial(_triton_kernel, n),
      out_shape=[jax.ShapeDtypeStruct((rows * size,), jnp.int32)
                 for size in _buffer_sizes(n)],
      grid=(rows,),
      interpret=interpret,
      compiler_params=pl_triton.CompilerParams(num_warps=1, num_stages=1),
      name="sgperm_find_cycles",
  )(*(t.reshape(rows * n) for t in tables))
  return successor.reshape(rows, n)


def _tpu_call(tables: list[jax.Array], interpret: bool) -> jax.Array:
  """The search as a Pallas Mosaic TPU call: each row searched in SMEM."""
  rows, n = tables[0].shape
  hbm = pl.BlockSpec(memory_space=pl.ANY)
  return pl.pallas_call(
      functools.partial(_tpu_kernel, n),
      out_shape=jax.ShapeDtypeStruct((rows, n), jnp.int32),
      grid=(rows,),
      in_specs=[hbm] * _N_TABLES,
      out_specs=hbm,
      scratch_shapes=([pltpu.SMEM((n,), jnp.int32)] * _N_TABLES
                      + [pltpu.SMEM((size,), jnp.int32)
                         for size in _buffer_sizes(n)]),
      interpret=interpret,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel",)),
      name="sgperm_find_cycles",
  )(*tables)


def find_cycles_pallas(direction: jax.Array, reach_lo: jax.Array,
                       reach_hi: jax.Array, subset_lo: jax.Array,
                       subset_hi: jax.Array, sources: jax.Array, *,
                       interpret: bool = False) -> jax.Array:
  """Finds the disjoint cycles of every subset of every row.

  See docs/algorithm.md §7.

  The same result as :func:`sgperm_jax.find_cycles`, bit for bit, from one
  Pallas program per row: Pallas Triton on GPU, Mosaic on TPU, and the
  Pallas interpreter anywhere with ``interpret=True``.

  Args:
    direction: ``(rows, n)`` int8, ``PermissibilityGraph.direction``: UP
      (+1), DOWN (-1) or 0 (inactive).
    reach_lo: ``(rows, n)`` int32, first target of each vertex (row-local
      sorted position).
    reach_hi: ``(rows, n)`` int32, one past its last target.
    subset_lo: ``(rows, n)`` int32, first position of each vertex's subset.
      Subsets are consecutive blocks of a row, so only their ends are read;
      it is taken for symmetry with :class:`sgperm_jax.Partition`.
    subset_hi: ``(rows, n)`` int32, one past the subset's last position.
    sources: ``(rows, n)`` int32, :func:`sgperm_jax.source_order`: within
      every subset the active vertices in search order, then the inactive.
    interpret: run the kernel in the Pallas interpreter (any backend; the
      GPU flavour of the kernel).

  Returns:
    ``(rows, n)`` int32 successors in sorted layout: vertex ``j`` takes the
    value of vertex ``successor[j]`` (``successor[j] == j`` when ``j`` is in
    no cycle).

  Example:
    >>> import jax, jax.numpy as jnp, sgperm_jax
    >>> p = sgperm_jax.partition(jax.random.key(0), jnp.array([[0., 1., 2.]]),
    ...                          jnp.array([[-1., 1., 1.]]), size=3)
    >>> g = sgperm_jax.permissibility_graph(p, alpha=1.0)
    >>> find_cycles_pallas(g.direction, g.reach_lo, g.reach_hi, p.subset_lo,
    ...                    p.subset_hi, sgperm_jax.source_order(p, g),
    ...                    interpret=True).tolist()
    [[2, 0, 1]]
  """
  del subset_lo  # subsets are consecutive: each starts where the last ended
  rows, n = direction.shape
  if rows * n == 0:
    return jnp.zeros((rows, n), jnp.int32)
  if rows * n >= 2**31:
    raise ValueError(f"sgperm_jax: find_cycles_pallas: {rows} rows of {n}"
                     " overflow the "
                     "int32 positions of the kernel")
  tables = [x.astype(jnp.int32)
            for x in (direction, reach_lo, reach_hi, subset_hi, sources)]
  if interpret:
    return _triton_call(tables, interpret=True)
  return lax.platform_dependent(
      *tables, tpu=lambda *t: _tpu_call(list(t), interpret=False),
      default=lambda *t: _triton_call(list(t), interpret=False))


def find_cycles_batches(partitions, graphs, flavour: str) -> list[jax.Array]:
  """The successors of every batch, one kernel call each.

  Args:
    partitions: :class:`~sgperm_jax.Partition` batches.
    graphs: their :class:`~sgperm_jax.PermissibilityGraph`.
    flavour: ``"triton"`` (GPU), ``"mosaic"`` (TPU) or ``"interpret"`` (the
      GPU flavour in the Pallas interpreter, on any backend).
  """
  out = []
  for part, graph in zip(partitions, graphs):
    tables = [x.astype(jnp.int32) for x in (
        graph.direction, graph.reach_lo, graph.reach_hi, part.subset_hi,
        source_order(part, graph))]
    rows, n = tables[0].shape
    if rows * n == 0:
      out.append(jnp.zeros((rows, n), jnp.int32))
    elif flavour == "mosaic":
      out.append(_tpu_call(tables, interpret=False))
    else:
      out.append(_triton_call(tables, interpret=flavour == "interpret"))
  return out
