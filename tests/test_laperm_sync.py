"""LaPerm's bank and synchronisation: native kernel and JAX path agree.

Both are checked against the definition on each leaf (each row of the params
sorted for the bank, ``sorted(bank)[rank(params + updates)]`` for the synced
weights, NumPy's stable sort as the reference order), on rows with ties,
signed zeros, subnormals, NaN and infinities, in every dtype.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sgperm_jax import _laperm, _laperm_sync, _native, _packing
from tests import helpers
from tests.helpers import bits as _bits

_PALETTE = np.array([0.0, -0.0, 1.5, -2.0, np.nan, np.inf, -np.inf, 3.25,
                     1e-30, -1e-30, 1e-40])


_SHAPES = [(6, 5), (3, 3, 2, 4), (40,)]
_TABLE = _packing.row_table([(i, s, "neurons") for i, s in enumerate(_SHAPES)])


def _leaves(dtype, seed=0):
  rng = np.random.default_rng(seed)
  shapes = _SHAPES
  params = [jnp.asarray(rng.choice(_PALETTE, s), dtype) for s in shapes[::2]]
  params.insert(1, jnp.asarray(rng.normal(size=shapes[1]), dtype))
  updates = [jnp.asarray(rng.normal(size=p.shape) * 0.5, jnp.float32)
             for p in params]
  return params, updates, ["neurons", "neurons", "neurons"]


# One jitted function per path, for every test (fill and sync are traced):
# one compilation per path and dtype.
_SYNC = {path: jax.jit(lambda g, f, s, fn=fn: fn(_TABLE, g, f, s))
         for path, fn in (("jax", _laperm_sync._jax_sync),
                          ("native", _laperm_sync._native_sync))}


def _run(path, params, updates, bank, fill, sync):
  assert [p.shape for p in params] == _SHAPES
  group = _laperm_sync._Group(params, updates, bank)
  return _SYNC[path](group, jnp.asarray(fill), jnp.asarray(sync))


@jax.jit
def _synced_by_leaf(bank, free, params, updates):
  """The definition, leaf by leaf: the bank ranked like ``free``."""
  return [_laperm_sync.synced_update(_laperm._synchronize(b, f), p, u.dtype)
          for b, f, p, u in zip(bank, free, params, updates)]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_bank_and_sync_follow_their_definition(dtype):
  params, updates, layouts = _leaves(dtype)
  bank, synced = _run("jax", params, updates,
                      [jnp.zeros_like(p) for p in params], True, True)
  for p, b, spec in zip(params, bank, layouts):
    rows = helpers.rows(np.asarray(p), spec)
    order = np.argsort(rows.astype(np.float64), axis=-1, kind="stable")
    np.testing.assert_array_equal(
        _bits(helpers.rows(np.asarray(b), spec)),
        _bits(np.take_along_axis(rows, order, axis=-1)))
  free = [(p + u).astype(p.dtype) for p, u in zip(params, updates)]  # eager
  want = _synced_by_leaf(bank, free, params, updates)
  for s, w in zip(synced, want):
    np.testing.assert_array_equal(np.asarray(s), np.asarray(w))


@pytest.mark.skipif(not _native.available(), reason="no native kernel")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("fill, sync", [(True, True), (True, False),
                                        (False, True), (False, False)])
def test_native_kernel_equals_the_jax_path(dtype, fill, sync):
  params, updates, _ = _leaves(dtype, seed=1)
  bank = _run("jax", params, updates, [jnp.zeros_like(p) for p in params],
              True, False)[0]
  got = _run("native", params, updates, bank, fill, sync)
  want = _run("jax", params, updates, bank, fill, sync)
  for a, b in zip(got[0], want[0]):  # banks: values moved, bit for bit
    np.testing.assert_array_equal(_bits(a), _bits(b))
  for a, b in zip(got[1], want[1]):  # updates: NaN where NaN, else equal
    np.testing.assert_array_equal(np.asarray(a, np.float64),
                                  np.asarray(b, np.float64))


def test_rank_key_orders_like_numpy():
  x = np.random.default_rng(2).choice(_PALETTE, (4, 50)).astype(np.float32)
  order = jnp.argsort(_laperm_sync.rank_key(jnp.asarray(x)), axis=-1,
                      stable=True)
  np.testing.assert_array_equal(order, np.argsort(x, axis=-1, kind="stable"))
