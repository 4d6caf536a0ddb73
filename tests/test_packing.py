"""Where the rows are: the row table, the tiles, and each slot's random bits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgperm_jax import _layout, _native, _packing, _partition, _step
from sgperm_jax._sorting import wide_ints

_LEAVES = [(0, (24, 7), "neurons"), (1, (3, 3, 2, 5), "neurons"),
           (2, (9,), "neurons"), (4, (4, 6), "whole"), (5, (40, 3), "neurons")]


def _flat(leaves):
  arrays = [jnp.arange(np.prod(s), dtype=jnp.float32).reshape(s) * 10 + i
            for i, s, _ in leaves]
  return arrays, jnp.concatenate([a.ravel() for a in arrays])


def test_row_table_reads_each_row_of_each_leaf():
  table = _packing.row_table(_LEAVES)
  arrays, flat = _flat(_LEAVES)
  flat = np.asarray(flat)
  for i in range(table.rows):
    k = table.leaf[i]
    rows = np.asarray(_layout.to_rows(arrays[k], _LEAVES[k][2]))
    p = np.arange(table.length[i])
    got = flat[table.flat_offset[i] + p * table.stride[i]]
    np.testing.assert_array_equal(got, rows[table.row_in_leaf[i]])
  assert table.sizes == tuple(int(np.prod(s)) for _, s, _ in _LEAVES)


def _slots_and_index(table, tiles):
  """The slots of a tiling and their gather index, as one compiled program
  (not an eager op at a time)."""
  def run():
    slots = _packing.slots(tiles)
    return slots, _packing.gather_index(table, slots)
  return jax.jit(run)()


@pytest.mark.parametrize("leaves", [
    _LEAVES, [(0, (5, 3), "neurons"), (1, (2**15 + 3,), "neurons"),
              (2, (2**15 + 9, 2), "neurons")]],
    ids=["shared", "long rows"])
def test_tiles_hold_every_row_once(leaves):
  table = _packing.row_table(leaves)
  seen = []
  for tiles, _ in _packing.tiles_of(table):
    slots, index = _slots_and_index(table, tiles)
    index = np.asarray(index)
    valid = np.asarray(slots.valid)
    row = np.asarray(slots.row)
    start = np.asarray(slots.start)
    seen.append(index[valid])
    column = np.arange(tiles.width)[None, :] + 0 * row
    for r in np.unique(row[valid]):  # a row's slots: consecutive, in order
      at = row == r
      assert at.sum() == table.length[r]
      p = (column - start)[at]
      np.testing.assert_array_equal(p, np.arange(table.length[r]))
      np.testing.assert_array_equal(
          index[at], table.flat_offset[r] + p * table.stride[r])
    assert not tiles.shared or tiles.width <= _packing.SHARED_WIDTH_MAX
    if not tiles.shared:  # long rows get a tile each, starting at column 0
      assert np.all(start[valid] == 0)
    # padding is inactive on its own: a stretch of one slot
    np.testing.assert_array_equal(start[~valid], column[~valid])
  seen = np.sort(np.concatenate(seen))
  np.testing.assert_array_equal(seen, np.arange(sum(table.sizes)))


def test_slot_bits_are_each_rows_random_bits():
  keys = jax.jit(jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3),
                                                       i)))(jnp.arange(4))
  row = jnp.asarray([[0, 0, 0, 1, 1], [2, 2, 3, 3, 3]], jnp.int32)
  position = jnp.asarray([[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]], jnp.int32)
  got = np.asarray(jax.jit(_partition.slot_bits)(keys, row, position))
  each = np.asarray(jax.jit(jax.vmap(  # each row's bits, by its own key
      lambda k: jax.random.bits(k, (8,), jnp.uint32)))(keys))
  for t in range(2):
    for c in range(5):
      assert got[t, c] == each[row[t, c], position[t, c]]


@pytest.mark.skipif(not _native.available(), reason="no native kernel")
def test_native_kernel_rejects_rows_outside_their_leaf():
  w = [jnp.zeros((4, 3))]
  with wide_ints(), pytest.raises(Exception, match="outside its leaf"):
    jax.block_until_ready(_native.permute_leaves_native(
        w, w, offset=np.array([0]), stride=np.array([3]),
        length=np.array([5]), leaf=np.array([0]), size=jnp.array([5]),
        keys=jnp.zeros((1, 2), jnp.uint32), alpha=0.5,
        include_partition_remainder=True)[0])
  with wide_ints(), pytest.raises(Exception, match="outside its leaf"):
    jax.block_until_ready(_native.laperm_sync_native(
        w, w, w, offset=np.array([0]), stride=np.array([1]),
        length=np.array([3]), leaf=np.array([1]), fill=True, sync=True)[0])


def test_overflowing_update_sends_the_slot_to_zero():
  big = float(jnp.finfo(jnp.bfloat16).max)
  weights = jnp.array([big, -1.0, 2.0], jnp.bfloat16)
  params = jnp.array([-big, 1.0, 3e38], jnp.bfloat16)
  d = _step.delta(weights, params)
  assert d.tolist()[:2] == [big, -2.0]  # -params where the difference is inf
  assert np.isfinite(np.asarray(d, np.float32)).all()
