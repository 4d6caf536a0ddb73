"""The portable cycle search: every row at once in one ``lax.while_loop``.

A row is a lane, its subsets are searched one after another, and each
iteration does O(1) work per lane (one edge, one source, or one vertex of a
closed cycle), over fixed-size buffers. Three facts keep it O(1):

* vertices not yet done are kept in a doubly linked list per row, so the walk
  never visits a done vertex;
* a search marks vertices as seen with a per-search stamp, so nothing needs
  resetting when the next search starts;
* the seen vertices always include every not-done vertex of an interval
  ``[a, b]`` around the source (each push of the next unseen vertex above
  ``b`` or below ``a`` widens it), so a walk that enters the interval jumps
  across it, unless the source is ahead in the interval and a target.

Seen vertices outside that interval are stepped over one per iteration, so
rows with many tied values and a wide reach take many iterations; the kernels
skip every run of seen vertices at once. A source whose first edge leads to a
vertex whose first edge leads back closes that 2-cycle at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from sgperm_jax._cycles_common import DONE_MARK as _DONE_MARK
from sgperm_jax._cycles_common import source_order
from sgperm_jax._graph import DOWN, UP, PermissibilityGraph, subset_counts
from sgperm_jax._partition import Partition

_PICK, _SEARCH, _UNWIND, _FINISHED = 0, 1, 2, 3


# Read-only table of the search, one field after another (flat positions).
_DIR, _REACH_LO, _REACH_HI, _SUBSET_HI, _SOURCE, _NUM_SOURCES, _NUM_UP, \
    _NUM_DOWN = range(8)
# Buffers the search writes, packed the same way so that one gather and one
# scatter per step serve them all (XLA:CPU pays per operation, not per lane).
_NEXT, _PREV, _STACK, _CURSOR, _SEEN, _SUCCESSOR = range(6)


class _Search(NamedTuple):
  """Loop state: per-lane registers and the packed per-position buffers."""
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
  buffers: jax.Array  # (6 * size,) int32: _NEXT, _PREV, ... one after another


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
  """Concatenates every batch of rows into one flat index space.

  Returns the read-only table, the initial buffers, each lane's first
  position and one past its last, and the total size.
  """
  fields: list[list[jax.Array]] = [[] for _ in range(8)]
  nexts, prevs, row_starts, row_ends = [], [], [], []
  base = 0
  for part, graph in zip(partitions, graphs):
    rows, n = part.values.shape
    row_base = base + jnp.arange(rows, dtype=jnp.int32) * n
    rb = row_base[:, None]
    active = graph.direction != 0
    for field, value in (
        (_DIR, graph.direction.astype(jnp.int32)),
        (_REACH_LO, graph.reach_lo + rb),
        (_REACH_HI, graph.reach_hi + rb),
        (_SUBSET_HI, part.subset_hi + rb),
        (_SOURCE, source_order(part, graph) + rb),
        (_NUM_SOURCES, subset_counts(part, active)),
        (_NUM_UP, subset_counts(part, graph.direction == UP)),
        (_NUM_DOWN, subset_counts(part, graph.direction == DOWN))):
      fields[field].append(value.ravel())
    nxt, prv = _links(active, row_base, n)
    nexts.append(nxt.ravel())
    prevs.append(prv.ravel())
    row_starts.append(row_base)
    row_ends.append(row_base + n)
    base += rows * n
  table = jnp.concatenate([jnp.concatenate(f) for f in fields])
  size = base
  buffers = jnp.concatenate([
      jnp.concatenate(nexts), jnp.concatenate(prevs),
      # stack, cursor, seen
      jnp.zeros(3 * size, jnp.int32).at[2 * size:].set(-1),
      jnp.arange(size, dtype=jnp.int32)])
  return (table, buffers, jnp.concatenate(row_starts),
          jnp.concatenate(row_ends), size)


_CANDIDATES = 4  # sources looked at per step (most are already done)


def _first(flags, *options):
  """Per lane, the option at the first set flag (the last one if none)."""
  out = [o[-1] for o in options]
  for k in range(len(flags) - 2, -1, -1):
    out = [jnp.where(flags[k], o[k], x) for o, x in zip(options, out)]
  return out


def _search_step(table: jax.Array, row_end: jax.Array, size: int,
                 st: _Search) -> _Search:
  """One step of every lane's search.

  A lane picking a source whose first edge leads to a vertex whose first edge
  leads back closes that 2-cycle at once (the common case); anything else goes
  through the general depth-first search, one edge per step.
  """
  lanes = st.mode.shape[0]

  def gather(buf, *field_index):
    idx = jnp.concatenate([f * size + jnp.clip(i, 0, size - 1)
                           for f, i in field_index])
    out = buf[idx]
    return [out[q * lanes:(q + 1) * lanes] for q in range(len(field_index))]

  mode = st.mode
  a, b = st.a, st.b
  top_at = st.sub_lo + st.depth - 1
  new_lo = st.sub_hi
  ptrs = [st.src_ptr + k for k in range(_CANDIDATES)]
  # Level 1: what the registers point at.
  u, cur, next_b, prev_a = gather(
      st.buffers, (_STACK, top_at), (_CURSOR, top_at), (_NEXT, b), (_PREV, a))
  new_hi, new_sources, new_up, new_down, *cands = gather(
      table, (_SUBSET_HI, new_lo), (_NUM_SOURCES, new_lo), (_NUM_UP, new_lo),
      (_NUM_DOWN, new_lo), *((_SOURCE, p) for p in ptrs))
  # Level 2: the neighbours and edges of those vertices.
  next_cur, prev_cur, next_u, prev_u, seen_cur, *cand_links = gather(
      st.buffers, (_NEXT, cur), (_PREV, cur), (_NEXT, u), (_PREV, u),
      (_SEEN, cur), *((_NEXT, c) for c in cands), *((_PREV, c) for c in cands))
  u_dir, lo_u, hi_u, cur_dir, *cand_edges = gather(
      table, (_DIR, u), (_REACH_LO, u), (_REACH_HI, u), (_DIR, cur),
      *((_DIR, c) for c in cands), *((_REACH_LO, c) for c in cands),
      *((_REACH_HI, c) for c in cands))
  k = _CANDIDATES
  cand_next, cand_prev = cand_links[:k], cand_links[k:]
  cand_dir, cand_lo, cand_hi = cand_edges[:k], cand_edges[k:2 * k], \
      cand_edges[2 * k:]

  # --- _PICK: the first source not yet done, or on to the next subset.
  exhausted = ((st.src_ptr >= st.src_end) | (st.up_left == 0)
               | (st.down_left == 0))
  advance = (mode == _PICK) & exhausted
  row_finished = new_lo >= row_end
  picking = (mode == _PICK) & ~exhausted
  free = [(p < st.src_end) & (n != _DONE_MARK)
          for p, n in zip(ptrs, cand_next)]
  offset = [jnp.full_like(st.src_ptr, q + 1) for q in range(k)]
  s, s_dir, s_lo, s_hi, s_next, s_prev, taken = _first(
      free, cands, cand_dir, cand_lo, cand_hi, cand_next, cand_prev, offset)
  found = free[0]
  for f in free[1:]:
    found = found | f
  start = picking & found
  src_ptr = jnp.where(picking, st.src_ptr + jnp.where(found, taken, k),
                      st.src_ptr)
  s_up = s_dir == UP
  first = jnp.where(s_up, s_next, s_prev)  # the closest candidate target
  # Level 3: that target's neighbours and edges.
  next_first, prev_first = gather(st.buffers, (_NEXT, first), (_PREV, first))
  first_dir, first_lo, first_hi = gather(
      table, (_DIR, first), (_REACH_LO, first), (_REACH_HI, first))
  back = jnp.where(first_dir == UP, next_first, prev_first)
  two_cycle = (start & (first >= s_lo) & (first < s_hi) & (back == s)
               & (s >= first_lo) & (s < first_hi))
  slow_start = start & ~two_cycle

  # --- _SEARCH: one edge of the vertex on top of the stack.
  src = st.source
  u_up = u_dir == UP
  searching = mode == _SEARCH
  past = jnp.where(u_up, cur >= hi_u, cur < lo_u)
  in_interval = (cur >= a) & (cur <= b)
  source_ahead = jnp.where(u_up, (src >= cur) & (src <= b),
                           (src >= a) & (src <= cur))
  source_target = (src >= lo_u) & (src < hi_u)
  closes = searching & ~past & in_interval & source_ahead & source_target
  jump = searching & ~past & in_interval & ~closes
  outside = searching & ~past & ~in_interval
  not_target = ~u_up & (cur >= hi_u)  # a tie of u's value below u
  step_over = outside & (not_target | (seen_cur == st.stamp))
  push = outside & ~step_over
  pop = searching & past
  source_fails = pop & (st.depth == 1)
  unwinding = mode == _UNWIND

  # Where the cursor of the top vertex goes next (jump or step over).
  moved = jnp.where(jump, jnp.where(u_up, next_b, prev_a),
                    jnp.where(u_up, next_cur, prev_cur))
  # The vertex pushed: a new source or the cursor's vertex, and its cursor.
  pushed = jnp.where(slow_start, s, cur)
  pushed_cursor = jnp.where(slow_start, first,
                            jnp.where(cur_dir == UP, next_cur, prev_cur))
  any_push = slow_start | push
  push_at = jnp.where(slow_start, st.sub_lo, top_at + 1)
  stamp = st.stamp + slow_start.astype(st.stamp.dtype)
  cursor_at = jnp.where(any_push, push_at,
                        jnp.where(jump | step_over, top_at, -1))
  # Vertices leaving the linked list (done): a failed source, a vertex of a
  # cycle being unwound, or both ends of a 2-cycle (neighbours in the list).
  leaving = source_fails | unwinding
  gone = jnp.where(two_cycle, s, u)
  gone_prev = jnp.where(two_cycle, jnp.where(s_up, s_prev, prev_first),
                        prev_u)
  gone_next = jnp.where(two_cycle, jnp.where(s_up, next_first, s_next),
                        next_u)
  unlink = leaving | two_cycle

  nowhere = 6 * size  # dropped by the scatter
  at = lambda field, i, when: jnp.where(when, field * size + i, nowhere)
  done_mark = jnp.full_like(u, _DONE_MARK)
  index = jnp.concatenate([
      at(_NEXT, gone_prev, unlink & (gone_prev >= 0)),
      at(_PREV, gone_next, unlink & (gone_next < row_end)),
      at(_NEXT, gone, unlink),
      at(_NEXT, first, two_cycle),
      at(_SUCCESSOR, gone, unwinding | two_cycle),
      at(_SUCCESSOR, first, two_cycle),
      at(_STACK, push_at, any_push),
      at(_CURSOR, cursor_at, cursor_at >= 0),
      at(_SEEN, pushed, any_push)])
  value = jnp.concatenate([
      gone_next, gone_prev, done_mark, done_mark,
      jnp.where(two_cycle, first, st.follow), s, pushed,
      jnp.where(any_push, pushed_cursor, moved), stamp])
  buffers = st.buffers.at[index].set(value, mode="drop")

  depth = st.depth + any_push.astype(jnp.int32) - (pop | unwinding).astype(
      jnp.int32)
  new_mode = jnp.where(
      advance & row_finished, _FINISHED,
      jnp.where(slow_start, _SEARCH,
                jnp.where(closes, _UNWIND,
                          jnp.where(source_fails | (unwinding & (depth == 0)),
                                    _PICK, mode))))
  gone_dir = jnp.where(two_cycle, 0, u_dir)
  up_left = st.up_left - ((leaving & (gone_dir == UP)) | two_cycle)
  down_left = st.down_left - ((leaving & (gone_dir == DOWN)) | two_cycle)
  load = advance & ~row_finished
  return _Search(
      mode=new_mode,
      sub_lo=jnp.where(load, new_lo, st.sub_lo),
      sub_hi=jnp.where(load, new_hi, st.sub_hi),
      src_ptr=jnp.where(load, new_lo, src_ptr),
      src_end=jnp.where(load, new_lo + new_sources, st.src_end),
      up_left=jnp.where(load, new_up, up_left),
      down_left=jnp.where(load, new_down, down_left),
      source=jnp.where(slow_start, s, src),
      a=jnp.where(slow_start, s, jnp.where(push & (cur == prev_a), cur, a)),
      b=jnp.where(slow_start, s, jnp.where(push & (cur == next_b), cur, b)),
      depth=depth,
      stamp=stamp,
      follow=jnp.where(closes, src, jnp.where(unwinding, u, st.follow)),
      buffers=buffers)


def find_cycles_loop(partitions: Sequence[Partition],
                     graphs: Sequence[PermissibilityGraph]
                     ) -> list[jax.Array]:
  """The successors of every batch, searched in one while loop."""
  table, buffers, row_start, row_end, size = _flatten(partitions, graphs)
  zeros = jnp.zeros_like(row_start)
  init = _Search(
      mode=zeros + _PICK, sub_lo=row_start, sub_hi=row_start, src_ptr=zeros,
      src_end=zeros, up_left=zeros, down_left=zeros, source=zeros, a=zeros,
      b=zeros, depth=zeros, stamp=zeros, follow=zeros, buffers=buffers)
  final = lax.while_loop(lambda st: jnp.any(st.mode != _FINISHED),
                         lambda st: _search_step(table, row_end, size, st),
                         init)
  successor = final.buffers[_SUCCESSOR * size:]
  out, base = [], 0
  for part in partitions:
    rows, n = part.values.shape
    succ = successor[base:base + rows * n].reshape(rows, n)
    out.append(succ - (base + jnp.arange(rows, dtype=jnp.int32) * n)[:, None])
    base += rows * n
  return out
