"""Where the rows of the permuted leaves are: a flat buffer, and tiles.

A step works on every row of every permuted leaf at once, so that the
compiled program does not grow with the number of leaves. The leaves of one
dtype are raveled and concatenated into one flat buffer, and a
:class:`RowTable`, computed from the shapes alone, says where each row is in
it: row ``i`` holds ``flat[offset[i] + p * stride[i]]`` for ``p`` below
``length[i]`` (a kernel's neuron ``j`` is the strided column ``leaf[..., j]``).

The native CPU kernel reads the rows from the flat buffer directly. The JAX
stages want a 2-D array whose lines hold whole rows, so for them the rows are
gathered into *tiles* (:class:`Tiles`): ``(tiles, width)`` with ``width`` the
longest row, each tile holding whole rows back to back, then padding. A
leaf's rows fill whole tiles, ``width // n`` a tile, and the rows left over
go into the first tile with room. Rows never cross tiles, so a row's random
partition, subsets and cycles never leave its stretch of its tile; padding
slots are inactive and never move.

Rows longer than ``SHARED_WIDTH_MAX`` get a tile each (the packed sort keys
of the partition need ``2 * bits(width) + 32 <= 63`` bits to tell the rows of
a shared tile apart), in tiles of their own.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sgperm_jax import _layout

SHARED_WIDTH_MAX = 2**15  # longest tile in which rows share a tile


@dataclasses.dataclass(frozen=True)
class RowTable:
  """Where the rows of a group of leaves are (NumPy, static).

  Row ``i`` holds ``leaves[leaf[i]].ravel()[offset[i] + p * stride[i]]`` for
  ``p`` below ``length[i]``; in the flat buffer of the group (the leaves
  raveled and concatenated), ``leaf_start[leaf[i]] + offset[i] + ...``.
  Every field has one entry per row; leaves come in the order given, each
  leaf's rows in order.
  """
  leaf: np.ndarray  # int32: the row's leaf, a position in the group
  leaf_index: np.ndarray  # int32: that leaf's position among the tree's
  row_in_leaf: np.ndarray  # int32: the row's index in its leaf
  offset: np.ndarray  # int64: position of the row's first value in its leaf
  stride: np.ndarray  # int64: distance between its consecutive values
  length: np.ndarray  # int32: its length n
  sizes: tuple[int, ...]  # values of each leaf

  @property
  def rows(self) -> int:
    return int(self.length.shape[0])

  @property
  def leaf_start(self) -> np.ndarray:
    """Where each leaf starts in the group's flat buffer (int64)."""
    return np.cumsum((0,) + self.sizes[:-1], dtype=np.int64)

  @property
  def flat_offset(self) -> np.ndarray:
    """Where each row starts in the group's flat buffer (int64)."""
    return self.leaf_start[self.leaf] + self.offset

  @property
  def leaf_rows(self) -> list[tuple[int, int]]:
    """``(rows, n)`` of each leaf."""
    counts = np.bincount(self.leaf, minlength=len(self.sizes))
    return [(int(c), size // int(c)) for c, size in zip(counts, self.sizes)]


def row_table(leaves: list[tuple[int, tuple[int, ...], _layout.RowLayout]]
              ) -> RowTable:
  """The :class:`RowTable` of leaves given as ``(tree index, shape, layout)``.

  Every leaf must have rows (:func:`_layout.row_shape` not None).
  """
  fields: list[list[np.ndarray]] = [[] for _ in range(6)]
  sizes = []
  for k, (index, shape, spec) in enumerate(leaves):
    row_shape = _layout.row_shape(shape, spec)
    assert row_shape is not None, "row_table: a leaf without rows"
    rows, n = row_shape
    by_neuron = spec == _layout.NEURONS and len(shape) >= 2
    j = np.arange(rows, dtype=np.int64)
    for field, value in zip(fields, (
        np.full(rows, k), np.full(rows, index), j, j if by_neuron else j * n,
        np.full(rows, rows if by_neuron else 1), np.full(rows, n))):
      field.append(value)
    sizes.append(math.prod(shape))
  leaf, leaf_index, row_in_leaf, offset, stride, length = (
      np.concatenate(f) for f in fields)
  return RowTable(leaf.astype(np.int32), leaf_index.astype(np.int32),
                  row_in_leaf.astype(np.int32), offset.astype(np.int64),
                  stride.astype(np.int64), length.astype(np.int32),
                  tuple(sizes))


# ------------------------------------------------------------------- tiles


class Block(NamedTuple):
  """A rectangle of the tiles filled with rows of one leaf, row after row."""
  first_row: int  # the block's first row among the table's rows
  tile: int  # first tile of the block
  tiles: int  # number of tiles
  rows_per_tile: int
  column: int  # first column of the block in each of its tiles
  n: int  # row length


@dataclasses.dataclass(frozen=True)
class Tiles:
  """Where every row of a :class:`RowTable` sits in ``(tiles, width)``."""
  blocks: tuple[Block, ...]
  tiles: int
  width: int
  rows: int

  @property
  def shared(self) -> bool:
    """Whether a tile may hold several rows (else every row starts at 0)."""
    return self.width <= SHARED_WIDTH_MAX

  @functools.cached_property
  def segments(self) -> tuple[np.ndarray, np.ndarray]:
    """Flat slot of each stretch of a tile (a row, or padding), in order,
    and its row (``rows`` for padding)."""
    start_list, row_list = [], []
    for b in self.blocks:
      t = np.arange(b.tiles)[:, None]
      q = np.arange(b.rows_per_tile)[None, :]
      start_list.append(
          ((b.tile + t) * self.width + b.column + q * b.n).ravel())
      row_list.append((b.first_row + t * b.rows_per_tile + q).ravel())
    starts = np.concatenate(start_list)
    rows = np.concatenate(row_list)
    ends = starts + np.concatenate(
        [np.full(b.tiles * b.rows_per_tile, b.n) for b in self.blocks])
    # Padding: wherever no row starts at the end of a row or of a tile.
    tile_starts = np.arange(self.tiles) * self.width
    pad = np.setdiff1d(np.concatenate([ends, tile_starts]),
                       np.concatenate([starts, [self.tiles * self.width]]))
    starts = np.concatenate([starts, pad])
    rows = np.concatenate([rows, np.full(pad.shape, self.rows)])
    order = np.argsort(starts, kind="stable")
    return starts[order].astype(np.int64), rows[order].astype(np.int32)


def _place(leaf_rows: list[tuple[int, int]], width: int, shared: bool,
           first_rows: list[int]) -> tuple[list[Block], int]:
  """Blocks for leaves of ``(rows, n)``, longest rows first; and the tiles."""
  blocks: list[Block] = []
  fill: list[int] = []  # columns used in each tile
  for i in sorted(range(len(leaf_rows)), key=lambda i: -leaf_rows[i][1]):
    rows, n = leaf_rows[i]
    per_tile = width // n if shared else 1
    full, rest = divmod(rows, per_tile)
    if full:
      blocks.append(Block(first_rows[i], len(fill), full, per_tile, 0, n))
      fill.extend([per_tile * n] * full)
    if rest:
      need = rest * n
      tile = next((t for t, used in enumerate(fill) if width - used >= need),
                  None)
      if tile is None:
        tile = len(fill)
        fill.append(0)
      blocks.append(Block(first_rows[i] + full * per_tile, tile, 1, rest,
                          fill[tile], n))
      fill[tile] += need
  return blocks, len(fill)


def tiles_of(table: RowTable) -> list[tuple[Tiles, list[int]]]:
  """Tiles for the rows of ``table``, and the leaves (positions) in each:
  one set for rows up to ``SHARED_WIDTH_MAX`` long, which share tiles, and
  one for longer rows, a tile each."""
  leaf_rows = table.leaf_rows
  first = np.cumsum([0] + [r for r, _ in leaf_rows]).tolist()
  out = []
  for shared in (True, False):
    members = [i for i, (_, n) in enumerate(leaf_rows)
               if (n <= SHARED_WIDTH_MAX) == shared]
    if not members:
      continue
    width = max(leaf_rows[i][1] for i in members)
    blocks, count = _place([leaf_rows[i] for i in members], width, shared,
                           [first[i] for i in members])
    out.append((Tiles(tuple(blocks), count, width, table.rows), members))
  return out


class Slots(NamedTuple):
  """What every slot of a ``(tiles, width)`` buffer holds."""
  row: jax.Array  # int32: its row in the table; ``rows`` for padding
  start: jax.Array  # int32: column where its row starts (padding: its own)
  valid: jax.Array  # bool: the slot holds a value of a row


def slots(tiles: Tiles) -> Slots:
  """The :class:`Slots` of a tiling, from one cumulative sum of marks.

  Slot ``s`` is in the last stretch (a row, or padding) starting at or
  before it; a padding slot is a stretch of its own. The marks go
  through an optimization barrier so that XLA does not fold the sum (the
  size of the whole buffer) into a constant at compile time.
  """
  starts, rows = tiles.segments
  size = tiles.tiles * tiles.width
  if size >= 2**31:
    raise ValueError(f"sgperm_jax: {size} slots of tiles overflow int32"
                     " positions")
  starts = starts.astype(np.int32)
  marks = lax.optimization_barrier(jnp.zeros(size, jnp.int32))
  marks = marks.at[starts[1:]].set(1, unique_indices=True)
  segment = jnp.cumsum(marks).reshape(tiles.tiles, tiles.width)
  row = jnp.asarray(rows)[segment]
  valid = row < tiles.rows
  tile = lax.broadcasted_iota(jnp.int32, segment.shape, 0)
  column = lax.broadcasted_iota(jnp.int32, segment.shape, 1)
  start = jnp.where(valid, jnp.asarray(starts)[segment] - tile * tiles.width,
                    column)
  return Slots(row, start, valid)


def gather_index(table: RowTable, slots_: Slots) -> jax.Array:
  """The flat position of every slot's value (0 for padding), int32."""
  row = jnp.minimum(slots_.row, table.rows - 1)
  column = lax.broadcasted_iota(jnp.int32, row.shape, 1)
  offset = jnp.asarray(table.flat_offset.astype(np.int32))[row]
  stride = jnp.asarray(table.stride.astype(np.int32))[row]
  return jnp.where(slots_.valid, offset + (column - slots_.start) * stride, 0)
