"""LaPerm's bank and synchronisation, on every row of every leaf at once.

:func:`laperm` keeps, per synced leaf, each row of the initial weights sorted
(the *bank*), and at a synchronisation gives each slot of a row the bank value
of its rank among the row's free weights: ``sorted(initial)[rank(free)]``.
Both are row sorts. As for SGPerm's step (``_step.py``), they run once on all
leaves of a dtype, so the compiled update does not grow with the number of
leaves: on CPU a native kernel reads and writes the leaves as they are
(``_native.laperm_sync_native``); elsewhere the leaves are concatenated and
their rows sorted in tiles (``_packing.py``), one sort for all.

Ranks follow the exact value order, as NumPy's stable sort does: NaNs last
(tied), -0 as +0, subnormals by value (where XLA's float comparisons on CPU
would flush them to zero), ties by position.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import PartitionSpec as P

from sgperm_jax import _native
from sgperm_jax import _packing
from sgperm_jax import _sharding
from sgperm_jax._partition import _ordered, sort_key, unsigned_key
from sgperm_jax._sorting import wide_ints


def rank_key(values: jax.Array) -> jax.Array:
  """Unsigned integers that order like the values: NaNs last (tied)."""
  key = sort_key(values)
  if key.dtype.itemsize <= 4:
    key = unsigned_key(key)
    top = jnp.uint32(0xFFFFFFFF)
  else:
    top = jnp.iinfo(key.dtype).max
  return jnp.where(jnp.isnan(values), top, key)


def synced_update(synced: jax.Array, params: jax.Array, dtype) -> jax.Array:
  """``synced - params`` in the wider compute dtype, rounded once to ``dtype``
  (stated explicitly: XLA may otherwise keep or drop the rounding of a
  narrower params dtype, depending on fusion)."""
  cdt = jnp.promote_types(jnp.promote_types(params.dtype, dtype), jnp.float32)
  return (synced.astype(cdt) - params.astype(cdt)).astype(dtype)


class _Group(NamedTuple):
  """Synced leaves of one params dtype and one updates dtype."""
  params: list[jax.Array]
  updates: list[jax.Array]
  bank: list[jax.Array]


def _split(flat: jax.Array, like: list[jax.Array]) -> list[jax.Array]:
  starts = np.cumsum([0] + [x.size for x in like])
  return [flat[a:b].reshape(x.shape) for a, b, x in
          zip(starts[:-1], starts[1:], like)]


def _sorted_rows(table: _packing.RowTable, values: jax.Array,
                 ranks: jax.Array | None = None) -> jax.Array:
  """Each row of ``values`` (flat) sorted, in place; or, with ``ranks``
  (flat), each row's sorted values placed by the ranks of ``ranks``."""
  out = values
  for tiles, _ in _packing.tiles_of(table):
    slots = _packing.slots(tiles)
    index = _packing.gather_index(table, slots)
    tile = jnp.where(slots.valid, values[index], 0)
    key_source = tile if ranks is None else ranks[index]
    key = jnp.where(slots.valid, rank_key(key_source), 0)
    column = lax.broadcasted_iota(jnp.int32, tile.shape, 1)
    order = _ordered(slots.start, key, column, jnp.full_like(
        column, tiles.width), tiles.shared)
    if ranks is None:  # the k-th of a row's sorted values at its k-th slot
      placed = jnp.take_along_axis(tile, order, axis=1)
    else:  # the slot of rank k gets the row's k-th (sorted) value
      rows = lax.broadcasted_iota(jnp.int32, tile.shape, 0)
      placed = jnp.zeros_like(tile).at[rows, order].set(
          tile, unique_indices=True)
    out = out.at[jnp.where(slots.valid, index, out.shape[0])].set(
        placed, mode="drop", unique_indices=True)
  return out


def _jax_sync(table: _packing.RowTable, group: _Group, fill: jax.Array,
              sync: jax.Array):
  """The bank and the updates by sorts of tiles."""
  flat = lambda leaves: jnp.concatenate([jnp.ravel(x) for x in leaves])

  def filled():
    return _split(_sorted_rows(table, flat(group.params)), group.bank)

  bank = lax.cond(fill, filled, lambda: list(group.bank))

  def synced():
    free = flat([(p + u).astype(p.dtype) for p, u in
                 zip(group.params, group.updates)])
    values = _sorted_rows(table, flat(bank), ranks=free)
    return [synced_update(w, p, u.dtype) for w, p, u in
            zip(_split(values, group.params), group.params, group.updates)]

  updates = lax.cond(sync, synced, lambda: list(group.updates))
  return bank, updates


def _native_sync(table: _packing.RowTable, group: _Group, fill: jax.Array,
                 sync: jax.Array):
  """The bank and the updates by the native kernel (only when needed)."""
  def run():
    with wide_ints():
      return _native.laperm_sync_native(
          group.params, group.updates, group.bank, offset=table.offset,
          stride=table.stride, length=table.length, leaf=table.leaf,
          fill=fill, sync=sync)
  return lax.cond(fill | sync, run,
                  lambda: (list(group.bank), list(group.updates)))


def laperm_sync(params: list[jax.Array], updates: list[jax.Array],
                bank: list[jax.Array], layouts: list[Any], fill: jax.Array,
                sync: jax.Array) -> tuple[list[jax.Array], list[jax.Array]]:
  """Fills the bank and synchronises the given leaves.

  Args:
    params: the synced leaves' params.
    updates: the inner optimizer's updates of those leaves.
    bank: their banks (each row of the initial params, sorted; the bank of
      a ``"whole"`` leaf is flat).
    layouts: their row layouts.
    fill: whether to (re)fill the banks from ``params`` first.
    sync: whether to synchronise: the updates then move the params onto
      ``sorted(initial)[rank(params + updates)]``, row by row.

  Returns:
    The banks and the updates, in the shardings of ``bank`` and
    ``updates``. Leaves sharded with explicit axes are synchronised whole on
    every device (a row sort cannot be split), then handed back sharded.
  """
  given_bank, given_updates = bank, updates
  whole = lambda xs: [_sharding.as_spec(jnp.asarray(x), P()) for x in xs]
  params, updates, bank = whole(params), whole(updates), whole(bank)
  groups: dict[Any, list[int]] = {}
  for i, (p, u) in enumerate(zip(params, updates)):
    groups.setdefault((jnp.dtype(p.dtype), jnp.dtype(u.dtype)), []).append(i)
  new_bank: list[Any] = [None] * len(params)
  new_updates: list[Any] = [None] * len(params)
  for members in groups.values():
    table = _packing.row_table([(i, jnp.shape(params[i]), layouts[i])
                                for i in members])
    group = _Group([params[i] for i in members],
                   [updates[i] for i in members],
                   [bank[i].astype(params[i].dtype) for i in members])
    branches = {"default": functools.partial(_jax_sync, table)}
    if _native.available():
      branches["cpu"] = functools.partial(_native_sync, table)
    out_bank, out_updates = lax.platform_dependent(group, fill, sync,
                                                   **branches)
    for k, i in enumerate(members):
      new_bank[i] = _sharding.like(out_bank[k], given_bank[i])
      new_updates[i] = _sharding.like(out_updates[k], given_updates[i])
  return new_bank, new_updates
