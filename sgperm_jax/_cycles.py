"""Cycle search: disjoint cycles of the permissibility graph (SPEC §3.6).

Sources are taken in order of decreasing ``|r|`` (ties: larger sorted position
first), skipping vertices already in a cycle or already tried. From each
source a depth-first search walks out-edges closest first; reaching the source
again closes a cycle, whose vertices are then "done". A failed search marks only
its source done.

The search runs every row at once in one ``lax.while_loop`` over fixed-size
buffers: a row is a lane, its subsets are searched one after another, and each
iteration does O(1) work per lane (one edge, one source, or one vertex of a
closed cycle). Three facts keep it O(1):

* vertices not yet done are kept in a doubly linked list per row, so the walk
  never visits a done vertex;
* a search marks vertices as seen with a per-search stamp, so nothing needs
  resetting when the next search starts;
* the seen vertices always include every not-done vertex of an interval
  ``[a, b]`` around the source (each push of the next unseen vertex above
  ``b`` or below ``a`` widens it), so a walk that enters the interval jumps
  across it, unless the source is ahead in the interval and a target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sgperm_jax._graph import DOWN, UP, PermissibilityGraph, subset_counts
from sgperm_jax._layout import compute_dtype
from sgperm_jax._partition import Partition

_PICK, _SEARCH, _UNWIND, _FINISHED = 0, 1, 2, 3
_DONE_MARK = -1  # ``next[v]`` of a done vertex


def source_order(partition: Partition, graph: PermissibilityGraph
                 ) -> jax.Array:
  """Sorted positions of each subset's sources, in search order.

  Within every subset ``[lo, hi)`` the first ``m`` entries are its active
  vertices by decreasing ``|r|`` (ties: larger position first), the rest its
  inactive ones.
  """
  cdt = compute_dtype(partition.recommendations.dtype)
  magnitude = jnp.abs(partition.recommendations.astype(cdt))
  key = jnp.where(graph.direction != 0, -magnitude, jnp.inf)
  pos = lax.broadcasted_iota(jnp.int32, key.shape, 1)
  return -lax.sort((partition.subset_lo, key, -pos), dimension=1,
                   num_keys=3)[2]


class _Flat(NamedTuple):
  """Read-only inputs of the search, all rows concatenated (flat positions)."""
  direction: jax.Array
  reach_lo: jax.Array
  reach_hi: jax.Array
  subset_hi: jax.Array  # end of the subset that starts at each position
  sources: jax.Array
  num_sources: jax.Array  # per position: active vertices in its subset
  num_up: jax.Array
  num_down: jax.Array
  row_end: jax.Array  # per lane


class _Search(NamedTuple):
  """Loop state: per-lane registers and per-position buffers."""
  mode: jax.Array
  sub_lo: jax.Array
  sub_hi: jax.Array
  src_ptr: jax.Array
  src_end: jax.Array
  up_left: jax.Array
  down_left: jax.Array
  source: jax.Array
  a: jax.Array
  b: jax.Array
  depth: jax.Array
  stamp: jax.Array
  follow: jax.Array
  next: jax.Array
  prev: jax.Array
  stack: jax.Array
  cursor: jax.Array
  seen: jax.Array
  successor: jax.Array


def _links(active: jax.Array, row_base: jax.Array, n: int
           ) -> tuple[jax.Array, jax.Array]:
  """Initial next/prev links over the active vertices of each row."""
  pos = lax.broadcasted_iota(jnp.int32, active.shape, 1)
  after = lax.cummin(jnp.where(active, pos, n), axis=1, reverse=True)
  nxt = jnp.pad(after[:, 1:], ((0, 0), (0, 1)), constant_values=n)
  before = lax.cummax(jnp.where(active, pos, -1), axis=1)
  prv = jnp.pad(before[:, :-1], ((0, 0), (1, 0)), constant_values=-1)
  base = row_base[:, None]
  nxt = jnp.where(active, nxt + base, _DONE_MARK)
  prv = jnp.where(prv >= 0, prv + base, -1)
  return nxt, prv


def _flatten(partitions: Sequence[Partition],
             graphs: Sequence[PermissibilityGraph]):
  """Concatenates every batch of rows into one flat index space."""
  pieces, links, row_bases = [], [], []
  base = 0
  for part, graph in zip(partitions, graphs):
    rows, n = part.values.shape
    row_base = base + jnp.arange(rows, dtype=jnp.int32) * n
    rb = row_base[:, None]
    active = graph.direction != 0
    pieces.append(dict(
        direction=graph.direction,
        reach_lo=graph.reach_lo + rb,
        reach_hi=graph.reach_hi + rb,
        subset_hi=part.subset_hi + rb,
        sources=source_order(part, graph) + rb,
        num_sources=subset_counts(part, active),
        num_up=subset_counts(part, graph.direction == UP),
        num_down=subset_counts(part, graph.direction == DOWN),
        row_end=row_base + n))
    links.append(_links(active, row_base, n))
    row_bases.append(row_base)
    base += rows * n
  cat = lambda name: jnp.concatenate([p[name].ravel() for p in pieces])
  flat = _Flat(**{name: cat(name) for name in _Flat._fields})
  nxt = jnp.concatenate([l[0].ravel() for l in links])
  prv = jnp.concatenate([l[1].ravel() for l in links])
  return flat, nxt, prv, jnp.concatenate(row_bases), base


def _gather4(buf, i, j, k, l):
  """``buf[i], buf[j], buf[k], buf[l]`` (clipped) in a single gather."""
  lanes = i.shape[0]
  out = buf.at[jnp.concatenate([i, j, k, l])].get(mode="clip")
  return tuple(out[q * lanes:(q + 1) * lanes] for q in range(4))


def _search_step(flat: _Flat, st: _Search) -> _Search:
  """One step of every lane's search."""
  size = flat.direction.shape[0]
  get = lambda arr, i: arr.at[i].get(mode="clip")
  nowhere = size  # scatter target that is dropped

  mode = st.mode
  s, a, b = st.source, st.a, st.b
  top_at = st.sub_lo + st.depth - 1
  candidate = get(flat.sources, st.src_ptr)
  u = get(st.stack, top_at)
  cur = get(st.cursor, top_at)
  # One gather per buffer that is also written this step, so that XLA can
  # update it in place (every read then precedes the write by data flow).
  next_candidate, next_b, next_cur, next_u = _gather4(
      st.next, candidate, b, cur, u)
  prev_candidate, prev_a, prev_cur, prev_u = _gather4(
      st.prev, candidate, a, cur, u)

  # --- _PICK: start a search from the next source, or go to the next subset.
  exhausted = ((st.src_ptr >= st.src_end) | (st.up_left == 0)
               | (st.down_left == 0))
  advance = (mode == _PICK) & exhausted
  new_lo = st.sub_hi
  row_finished = new_lo >= flat.row_end
  try_source = (mode == _PICK) & ~exhausted
  start = try_source & (next_candidate != _DONE_MARK)

  # --- _SEARCH / _UNWIND: look at the top of the stack.
  u_dir = get(flat.direction, u)
  u_up = u_dir == UP
  lo_u, hi_u = get(flat.reach_lo, u), get(flat.reach_hi, u)
  searching = mode == _SEARCH
  past = jnp.where(u_up, cur >= hi_u, cur < lo_u)
  in_interval = (cur >= a) & (cur <= b)
  source_ahead = jnp.where(u_up, (s >= cur) & (s <= b), (s >= a) & (s <= cur))
  source_target = (s >= lo_u) & (s < hi_u)
  closes = searching & ~past & in_interval & source_ahead & source_target
  jump = searching & ~past & in_interval & ~closes
  outside = searching & ~past & ~in_interval
  not_target = ~u_up & (cur >= hi_u)  # a tie of u's value below u
  cur_seen = get(st.seen, cur) == st.stamp
  step_over = outside & (not_target | cur_seen)
  push = outside & ~step_over
  pop = searching & past
  source_fails = pop & (st.depth == 1)
  unwinding = mode == _UNWIND

  # Where the cursor of the top vertex goes next (jump or step over).
  moved = jnp.where(jump, jnp.where(u_up, next_b, prev_a),
                    jnp.where(u_up, next_cur, prev_cur))

  # --- the vertex being pushed (a candidate source or the cursor).
  pushed = jnp.where(start, candidate, cur)
  pushed_up = get(flat.direction, pushed) == UP
  pushed_cursor = jnp.where(
      pushed_up, jnp.where(start, next_candidate, next_cur),
      jnp.where(start, prev_candidate, prev_cur))
  any_push = start | push
  push_at = jnp.where(start, st.sub_lo, top_at + 1)
  stamp = st.stamp + start.astype(st.stamp.dtype)

  # --- a vertex leaving the linked list (done): a failed source or a cycle's.
  leaving = source_fails | unwinding
  v, v_prev, v_next, v_dir = u, prev_u, next_u, u_dir

  nxt = st.next.at[jnp.where(leaving & (v_prev >= 0), v_prev, nowhere)].set(
      v_next, mode="drop")
  nxt = nxt.at[jnp.where(leaving, v, nowhere)].set(_DONE_MARK, mode="drop")
  prv = st.prev.at[jnp.where(leaving & (v_next < flat.row_end), v_next,
                             nowhere)].set(v_prev, mode="drop")
  stack = st.stack.at[jnp.where(any_push, push_at, nowhere)].set(
      pushed, mode="drop")
  cursor_at = jnp.where(any_push, push_at,
                        jnp.where(jump | step_over, top_at, nowhere))
  cursor = st.cursor.at[cursor_at].set(
      jnp.where(any_push, pushed_cursor, moved), mode="drop")
  seen = st.seen.at[jnp.where(any_push, pushed, nowhere)].set(
      stamp, mode="drop")
  successor = st.successor.at[jnp.where(unwinding, v, nowhere)].set(
      st.follow, mode="drop")

  depth = st.depth + any_push.astype(jnp.int32) - (pop | unwinding).astype(
      jnp.int32)
  new_mode = jnp.where(
      advance & row_finished, _FINISHED,
      jnp.where(start, _SEARCH,
                jnp.where(closes, _UNWIND,
                          jnp.where(source_fails | (unwinding & (depth == 0)),
                                    _PICK, mode))))
  up_left = jnp.where(leaving & (v_dir == UP), st.up_left - 1, st.up_left)
  down_left = jnp.where(leaving & (v_dir == DOWN), st.down_left - 1,
                        st.down_left)
  load = advance & ~row_finished
  new_lo_c = jnp.clip(new_lo, 0, size - 1)
  return _Search(
      mode=new_mode,
      sub_lo=jnp.where(load, new_lo, st.sub_lo),
      sub_hi=jnp.where(load, flat.subset_hi[new_lo_c], st.sub_hi),
      src_ptr=jnp.where(load, new_lo, st.src_ptr + try_source),
      src_end=jnp.where(load, new_lo + flat.num_sources[new_lo_c], st.src_end),
      up_left=jnp.where(load, flat.num_up[new_lo_c], up_left),
      down_left=jnp.where(load, flat.num_down[new_lo_c], down_left),
      source=jnp.where(start, candidate, s),
      a=jnp.where(start, candidate,
                  jnp.where(push & (cur == prev_a), cur, a)),
      b=jnp.where(start, candidate,
                  jnp.where(push & (cur == next_b), cur, b)),
      depth=depth,
      stamp=stamp,
      follow=jnp.where(closes, s, jnp.where(unwinding, v, st.follow)),
      next=nxt, prev=prv, stack=stack, cursor=cursor, seen=seen,
      successor=successor)


def find_cycles(partitions: Partition | Sequence[Partition],
                graphs: PermissibilityGraph | Sequence[PermissibilityGraph]):
  """Finds the disjoint cycles of every subset of every row (SPEC §3.6).

  Args:
    partitions: a :class:`Partition`, or a sequence of them (batches of rows
      of different lengths, searched together in one loop).
    graphs: the matching :class:`PermissibilityGraph` (or sequence).

  Returns:
    The cycles as a successor array per batch, ``(rows, n)`` int32 in sorted
    layout: vertex ``j`` takes the value of vertex ``successor[j]``
    (``successor[j] == j`` when ``j`` is in no cycle). A list when given
    sequences.

  Example:
    >>> import jax, jax.numpy as jnp, sgperm_jax
    >>> p = sgperm_jax.partition(jax.random.key(0), jnp.array([[0., 1., 2.]]),
    ...                          jnp.array([[-1., 1., 1.]]), size=3)
    >>> g = sgperm_jax.permissibility_graph(p, alpha=1.0)
    >>> sgperm_jax.find_cycles(p, g).tolist()
    [[2, 0, 1]]
  """
  single = isinstance(partitions, Partition)
  if single:
    partitions, graphs = [partitions], [graphs]
  if not partitions:
    return partitions
  flat, nxt, prv, row_base, size = _flatten(partitions, graphs)
  lanes = row_base.shape[0]
  zeros = jnp.zeros(lanes, jnp.int32)
  init = _Search(
      mode=zeros + _PICK, sub_lo=row_base, sub_hi=row_base, src_ptr=zeros,
      src_end=zeros, up_left=zeros, down_left=zeros, source=zeros, a=zeros,
      b=zeros, depth=zeros, stamp=zeros, follow=zeros, next=nxt, prev=prv,
      stack=jnp.zeros(size, jnp.int32), cursor=jnp.zeros(size, jnp.int32),
      seen=jnp.full(size, -1, jnp.int32),
      successor=jnp.arange(size, dtype=jnp.int32))
  final = lax.while_loop(lambda st: jnp.any(st.mode != _FINISHED),
                         lambda st: _search_step(flat, st), init)
  out, base = [], 0
  for part in partitions:
    rows, n = part.values.shape
    succ = final.successor[base:base + rows * n].reshape(rows, n)
    out.append(succ - (base + jnp.arange(rows, dtype=jnp.int32) * n)[:, None])
    base += rows * n
  return out[0] if single else out
