"""Permutation statistics: what a step (or a synchronisation) moved, per leaf.

Opt-in with ``track_stats=True`` on :func:`permute_by_recommendation`,
:func:`sgperm` and :func:`laperm`; computed inside the jitted update and read
with :func:`permutation_stats`. docs/algorithm.md §14 defines them: the share
of slots that moved, rank displacements (a value's rank is the count of
smaller values in its row), and the cycles of the permutation. Like the step,
the computation runs once on the rows of all leaves together (a few sorts of
one flat buffer), so its compiled size does not grow with the number of
leaves. When tracking is off, the state holds ``None`` and nothing is
computed.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from sgperm_jax import _layout
from sgperm_jax import _sharding
from sgperm_jax._exact import _pure
from sgperm_jax._laperm_sync import rank_key
from sgperm_jax._sorting import wide_ints


class PermutationStats(NamedTuple):
  """What the last step of SGPerm did to each leaf.

  In the optimizer state every field is a vector with one entry per leaf of
  the params (``jax.tree.leaves`` order; ``NaN`` / ``-1`` for leaves that are
  not permuted, or before the first step). :func:`permutation_stats` hands
  them back as a tree like the params with a ``PermutationStats`` of scalars
  per permuted leaf.
  """
  step: jax.Array  # int32: the step these describe (1 = the first)
  moved_fraction: jax.Array  # float32: share of the leaf's slots that moved
  mean_displacement: jax.Array  # float32: mean rank displacement, all slots
  max_displacement: jax.Array  # int32: largest rank displacement
  cycles: jax.Array  # int32: cycles (of length >= 2), all rows together
  mean_cycle_length: jax.Array  # float32: moved slots per cycle (0: none)
  partition_size: jax.Array  # int32: the random subsets' size P_t
  alpha: jax.Array  # float32: the aggressiveness alpha_t used
  lamda: jax.Array  # float32: the partition ratio lamda_t used


class SyncStats(NamedTuple):
  """What LaPerm's last synchronisation did to each synced leaf.

  The movement fields compare the synchronised weights with those of the
  previous synchronisation (the initial weights at the first), as
  :class:`PermutationStats` does for a step. ``free_distance`` says how far
  the freely trained weights had gone from what the synchronisation made of
  them: ``||free - synced|| / ||synced||`` over the leaf (0 if equal).
  """
  step: jax.Array  # int32: the step after which the sync happened
  moved_fraction: jax.Array  # float32
  mean_displacement: jax.Array  # float32
  max_displacement: jax.Array  # int32
  cycles: jax.Array  # int32
  mean_cycle_length: jax.Array  # float32
  free_distance: jax.Array  # float32
  sync_period: jax.Array  # int32: the period in force at the sync


class _Moves(NamedTuple):
  """The movement fields of both stats, one entry per tracked leaf."""
  moved_fraction: jax.Array
  mean_displacement: jax.Array
  max_displacement: jax.Array
  cycles: jax.Array
  mean_cycle_length: jax.Array


class RowIndex(NamedTuple):
  """Where the rows of the tracked leaves sit in one flat buffer (static).

  Rows are laid out back to back, leaf after leaf, each as
  ``_layout.to_rows`` gives it.
  """
  shapes: tuple[tuple[int, ...], ...]
  layouts: tuple[Any, ...]
  leaf_of_row: np.ndarray  # (R,) int32
  row_start: np.ndarray  # (R,) int32: offset of each row in the buffer
  sizes: tuple[int, ...]  # slots per leaf
  longest: int  # the longest row

  @property
  def leaves(self) -> int:
    return len(self.shapes)


def row_index(shapes: list[tuple[int, ...]], layouts: list[Any]) -> RowIndex:
  """The :class:`RowIndex` of leaves of these shapes and row layouts."""
  leaf_of_row, lengths = [], []
  for k, (shape, spec) in enumerate(zip(shapes, layouts)):
    rows, n = _layout.row_shape(tuple(shape), spec) or (0, 0)
    leaf_of_row += [k] * rows
    lengths += [n] * rows
  row_start = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int32)
  return RowIndex(tuple(tuple(s) for s in shapes), tuple(layouts),
                  np.asarray(leaf_of_row, np.int32), row_start,
                  tuple(math.prod(s) for s in shapes), max(lengths, default=1))


def _whole(x: Any) -> jax.Array:
  """``x`` on every device where its type says it is sharded (explicit
  axes): the record sorts whole rows, which a sharded sort cannot."""
  return _sharding.as_spec(jnp.asarray(x), P())


def flat_rows(leaves: list[jax.Array], index: RowIndex) -> jax.Array:
  """The leaves' rows back to back, as one vector (each leaf's dtype kept if
  they share one, else promoted)."""
  return jnp.concatenate([_layout.to_rows(_whole(x), spec).ravel()
                          for x, spec in zip(leaves, index.layouts)])


def _row_of_slot(index: RowIndex) -> jax.Array:
  """The row of every slot of the flat buffer, (N,) int32."""
  parts, first = [], 0
  for shape, spec in zip(index.shapes, index.layouts):
    rows, n = _layout.row_shape(shape, spec)  # type: ignore[misc]
    parts.append(first + lax.broadcasted_iota(jnp.int32, (rows, n), 0).ravel())
    first += rows
  return jnp.concatenate(parts)


def _keys(leaves: list[jax.Array], index: RowIndex) -> jax.Array:
  """Integer keys ordering each slot's value exactly (NaNs last), flat."""
  keys = [rank_key(_layout.to_rows(_whole(x), spec)).ravel()
          for x, spec in zip(leaves, index.layouts)]
  if all(k.dtype.itemsize <= 4 for k in keys):
    return jnp.concatenate([k.astype(jnp.uint32) for k in keys])
  return jnp.concatenate([k.astype(jnp.int64) for k in keys])


def stable_ranks(leaves: list[jax.Array], index: RowIndex) -> jax.Array:
  """Each slot's position in its row sorted stably by value, flat (N,).

  Ties keep their order and NaNs come last, as LaPerm's synchronisation
  ranks them.
  """
  with wide_ints():
    keys = _keys(leaves, index)
    row = _row_of_slot(index)
    slot = lax.iota(jnp.int32, keys.shape[0])
    s_row, _, s_slot = lax.sort((row, keys, slot), num_keys=2,
                                is_stable=True)
    position = slot - jnp.asarray(index.row_start)[s_row]
    return jnp.zeros_like(slot).at[s_slot].set(position, unique_indices=True)


def _moves(index: RowIndex, before: list[jax.Array], after: list[jax.Array]
           ) -> _Moves:
  """The movement fields of every leaf, from its weights before and after."""
  with wide_ints():
    kb, ka = _keys(before, index), _keys(after, index)
    row = _row_of_slot(index)
    size = kb.shape[0]
    slot = lax.iota(jnp.int32, size)
    starts = jnp.asarray(index.row_start)
    leaf = jnp.asarray(index.leaf_of_row)[row]
    count = index.leaves

    # The permutation: moved slots paired by value, in slot order.
    stays = (kb == ka).astype(jnp.int32)
    order_before = lax.sort((row, stays, kb, slot), num_keys=3,
                            is_stable=True)[3]
    order_after = lax.sort((row, stays, ka, slot), num_keys=3,
                           is_stable=True)[3]
    place_after = jnp.zeros_like(slot).at[order_after].set(
        slot, unique_indices=True)
    source = order_before[place_after]  # where the value now at i came from

    # Ranks before (the start of each run of equal values in its sorted
    # row); the value now at i is the one before at source[i], so its rank
    # is that one's.
    s_row, s_key, s_slot = lax.sort((row, kb, slot), num_keys=2,
                                    is_stable=True)
    new_run = jnp.concatenate([jnp.ones(1, bool),
                               (s_row[1:] != s_row[:-1])
                               | (s_key[1:] != s_key[:-1])])
    run_start = lax.cummax(jnp.where(new_run, slot, 0))
    rank = jnp.zeros_like(slot).at[s_slot].set(run_start - starts[s_row],
                                               unique_indices=True)
    displacement = jnp.abs(rank[source] - rank)

    # Cycles: each slot's smallest slot along its cycle, by pointer doubling.
    def halve(_, carry):
      low, jump = carry
      return jnp.minimum(low, low[jump]), jump[jump]

    steps = max(1, (index.longest - 1).bit_length())
    low, _ = lax.fori_loop(0, steps, halve, (slot, source))
    moved = stays == 0
    leads = moved & (low == slot)

  sizes = jnp.asarray(index.sizes, jnp.float32)
  total = lambda x: jax.ops.segment_sum(x, leaf, count)
  n_moved = total(moved.astype(jnp.int32))
  n_cycles = total(leads.astype(jnp.int32))
  return _Moves(
      moved_fraction=n_moved / sizes,
      mean_displacement=total(displacement.astype(jnp.float32)) / sizes,
      max_displacement=jnp.maximum(
          jax.ops.segment_max(displacement, leaf, count), 0),
      cycles=n_cycles,
      mean_cycle_length=jnp.where(
          n_cycles > 0, n_moved / jnp.maximum(n_cycles, 1), 0.0))


def _spread(values: jax.Array, at: list[int], leaves: int, fill: Any
            ) -> jax.Array:
  """``values`` (one per tracked leaf) placed at ``at`` among ``leaves``."""
  out = jnp.full((leaves,), fill, values.dtype)
  return out.at[np.asarray(at, np.int32)].set(values) if at else out


def empty_permutation_stats(leaves: int) -> PermutationStats:
  """The stats before the first step: nothing recorded."""
  nan = jnp.full((leaves,), jnp.nan, jnp.float32)
  none = jnp.full((leaves,), -1, jnp.int32)
  return PermutationStats(none, nan, nan, none, none, nan, none, nan, nan)


def empty_sync_stats(leaves: int) -> SyncStats:
  """The stats before the first synchronisation: nothing recorded."""
  nan = jnp.full((leaves,), jnp.nan, jnp.float32)
  none = jnp.full((leaves,), -1, jnp.int32)
  return SyncStats(none, nan, nan, none, none, nan, nan, none)


def step_stats(step: jax.Array, before: list[jax.Array],
               after: list[jax.Array], layouts: list[Any], at: list[int],
               leaves: int, sizes: jax.Array, alpha: Any, lamda: Any
               ) -> PermutationStats:
  """:class:`PermutationStats` of one SGPerm step.

  Args:
    step: the step number (1 for the first).
    before: the permuted leaves' exact weights before the step.
    after: the same leaves after it.
    layouts: their row layouts.
    at: their positions among the params' leaves.
    leaves: the number of the params' leaves.
    sizes: the partition size of each permuted leaf, (len(at),).
    alpha: the aggressiveness used.
    lamda: the partition ratio used.
  """
  if not at:
    return empty_permutation_stats(leaves)
  index = row_index([tuple(jnp.shape(x)) for x in before], layouts)
  m = _moves(index, before, after)
  f32 = lambda x: jnp.broadcast_to(jnp.asarray(x, jnp.float32), (len(at),))
  spread = lambda x, fill: _spread(x, at, leaves, fill)
  return PermutationStats(
      step=spread(jnp.full((len(at),), step, jnp.int32), -1),
      moved_fraction=spread(m.moved_fraction, jnp.nan),
      mean_displacement=spread(m.mean_displacement, jnp.nan),
      max_displacement=spread(m.max_displacement, -1),
      cycles=spread(m.cycles, -1),
      mean_cycle_length=spread(m.mean_cycle_length, jnp.nan),
      partition_size=spread(sizes.astype(jnp.int32), -1),
      alpha=spread(f32(alpha), jnp.nan), lamda=spread(f32(lamda), jnp.nan))


def sync_stats(step: jax.Array, index: RowIndex, bank: jax.Array,
               ranks_before: jax.Array, ranks_after: jax.Array,
               free: list[jax.Array], at: list[int], leaves: int,
               period: Any) -> SyncStats:
  """:class:`SyncStats` of one LaPerm synchronisation.

  Args:
    step: the step after which it happened.
    index: the synced leaves' rows.
    bank: their banks' rows, flat (each row sorted ascending).
    ranks_before: each slot's stable rank at the previous synchronisation.
    ranks_after: each slot's stable rank among the free weights now.
    free: the synced leaves' free weights.
    at: their positions among the params' leaves.
    leaves: the number of the params' leaves.
    period: the synchronisation period in force.
  """
  row = _row_of_slot(index)
  starts = jnp.asarray(index.row_start)[row]
  wide = jnp.promote_types(bank.dtype, jnp.float32)
  before_values, after_values = bank[starts + ranks_before], bank[
      starts + ranks_after]
  split = _split(index)
  m = _moves(index, split(before_values), split(after_values))
  leaf = jnp.asarray(index.leaf_of_row)[row]
  synced = after_values.astype(wide)
  gap = flat_rows(free, index).astype(wide) - synced
  total = lambda x: jax.ops.segment_sum(x, leaf, index.leaves)
  norm = jnp.sqrt(total(synced * synced))
  distance = jnp.sqrt(total(gap * gap))
  distance = jnp.where(norm > 0, distance / jnp.where(norm > 0, norm, 1),
                       jnp.where(distance > 0, jnp.inf, 0.0))
  spread = lambda x, fill: _spread(x, at, leaves, fill)
  count = len(at)
  return SyncStats(
      step=spread(jnp.full((count,), step, jnp.int32), -1),
      moved_fraction=spread(m.moved_fraction, jnp.nan),
      mean_displacement=spread(m.mean_displacement, jnp.nan),
      max_displacement=spread(m.max_displacement, -1),
      cycles=spread(m.cycles, -1),
      mean_cycle_length=spread(m.mean_cycle_length, jnp.nan),
      free_distance=spread(distance.astype(jnp.float32), jnp.nan),
      sync_period=spread(jnp.full((count,), period, jnp.int32), -1))


def _split(index: RowIndex):
  """Cuts a flat buffer back into the leaves (inverse of :func:`flat_rows`)."""
  bounds = np.cumsum((0,) + index.sizes)

  def split(flat: jax.Array) -> list[jax.Array]:
    out = []
    for a, b, shape, spec in zip(bounds[:-1], bounds[1:], index.shapes,
                                 index.layouts):
      rows, n = _layout.row_shape(shape, spec)  # type: ignore[misc]
      out.append(_layout.from_rows(flat[a:b].reshape(rows, n), spec, shape))
    return out

  return split


def tracking_states(state: Any) -> list[tuple[Any, Any]]:
  """``(stats, weights tree)`` of every tracking state inside ``state``."""
  has = lambda x: callable(getattr(type(x), "tracked_stats", None))
  found = []
  for s in jax.tree.leaves(state, is_leaf=has):
    if has(s):
      found.extend(s.tracked_stats())
  return found


def _per_leaf(stats: Any, like: Any) -> list[Any]:
  """One stats of scalars (or None) per leaf of ``like``, MaskedNodes too."""
  masked = lambda x: isinstance(x, optax.MaskedNode)
  step = np.asarray(stats.step)
  count = len(jax.tree.leaves(like))
  if step.shape != (count,):
    raise ValueError("sgperm_jax: permutation_stats: the stats hold"
                     f" {step.shape} entries, the state's tree {count}"
                     " leaves")
  values = iter(None if step[k] < 0 else type(stats)(*(f[k] for f in stats))
                for k in range(count))
  return [None if masked(x) else next(values)
          for x in jax.tree.leaves(like, is_leaf=masked)]


def permutation_stats(opt_state: Any) -> Any:
  """The statistics of the last step, per leaf, from an optimizer state.

  Finds every state of :func:`permute_by_recommendation` (so :func:`sgperm`)
  and :func:`laperm` made with ``track_stats=True`` inside ``opt_state``
  (``optax.chain``, ``optax.partition``, ``inject_hyperparams``,
  :func:`switch_after` (the active one), ``nnx.Optimizer``'s state ...).
  It reads the state on the host; call it outside ``jax.jit``.

  Args:
    opt_state: the optimizer state.

  Returns:
    A tree like the params: a :class:`PermutationStats` (SGPerm) or
    :class:`SyncStats` (LaPerm, the last synchronisation) of scalar arrays at
    every leaf the optimizer permutes, ``None`` at the others and at every
    leaf before the first step (sync). Where two tracking states cover one
    leaf, the more recent record wins.

  Raises:
    ValueError: if no state in ``opt_state`` tracks statistics.

  Example:
    >>> import jax, jax.numpy as jnp, sgperm_jax
    >>> tx = sgperm_jax.sgperm(lamda0=1.0, track_stats=True)
    >>> params = {"w": jnp.array([0., 1., 2., 3.]), "b": jnp.zeros(())}
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.array([1., -1., 1., -1.]), "b": jnp.ones(())}
    >>> _, state = jax.jit(tx.update)(grads, state, params)
    >>> s = sgperm_jax.permutation_stats(state)
    >>> s["b"] is None, float(s["w"].moved_fraction), int(s["w"].cycles)
    (True, 0.5, 1)
  """
  found = tracking_states(_pure(opt_state))
  if not found:
    raise ValueError("sgperm_jax: permutation_stats: opt_state holds no state"
                     " made with track_stats=True (pass it to sgperm,"
                     " permute_by_recommendation or laperm)")
  masked = lambda x: isinstance(x, optax.MaskedNode)
  treedef = jax.tree.structure(found[0][1], is_leaf=masked)
  merged: list[Any] = [None] * treedef.num_leaves
  for stats, like in found:
    if jax.tree.structure(like, is_leaf=masked) != treedef:
      raise ValueError("sgperm_jax: permutation_stats: the tracking states"
                       " were made for params of different structures")
    for k, s in enumerate(_per_leaf(stats, like)):
      if s is not None and (merged[k] is None
                            or int(s.step) > int(merged[k].step)):
        merged[k] = s
  return jax.tree.unflatten(treedef, merged)
