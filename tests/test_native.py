"""The native CPU cycle search against the portable one, bit for bit."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax import lax

import sgperm_jax
from sgperm_jax import _native
from sgperm_jax._layout import compute_dtype
from tests import reference
from tests import strategies

_DISABLED = os.environ.get("SGPERM_JAX_NO_NATIVE", "") not in ("", "0")
needs_native = pytest.mark.skipif(
    _DISABLED, reason="SGPERM_JAX_NO_NATIVE is set")

def _magnitude(part):
  cdt = compute_dtype(part.recommendations.dtype)
  bits = jnp.uint64 if cdt == jnp.float64 else jnp.uint32
  return lax.bitcast_convert_type(jnp.abs(part.recommendations.astype(cdt)),
                                  bits)


def _native_cycles(part, graph):
  return _native.find_cycles_native(
      graph.direction, graph.reach_lo, graph.reach_hi, part.subset_lo,
      part.subset_hi, _magnitude(part))


@jax.jit
def _both(w, r, size, alpha, remainder, seed):
  part = sgperm_jax.partition(jax.random.key(seed), w, r, size, remainder)
  graph = sgperm_jax.permissibility_graph(part, alpha)
  return (sgperm_jax.find_cycles(part, graph, cycle_search="loop"),
          _native_cycles(part, graph))


def _check(w, r, size, alpha, remainder, seed):
  portable, native = _both(w, r, size, alpha, remainder, seed)
  assert native.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(native), np.asarray(portable))
  return np.asarray(native)


# (shape, dtype) pairs the hypothesis test draws from: one compilation of
# ``_both`` each, reused by the tiny-row and spec tests below.
# (Long float32 rows: test_matches_portable_search_on_long_rows.)
_CASES = [((2, 1), "float32"), ((1, 2), "float32"), ((4, 3), "float32"),
          ((3, 5), "bfloat16"), ((3, 40), "bfloat16")]


def test_available():
  if _DISABLED:
    assert not _native.available()
    return
  assert _native.available(), _native.load_error()


@needs_native
@pytest.mark.slow
def test_spec_example():
  # The spec's row, four times (one subset of 3: the key does not matter);
  # shape (4, 3) reuses a compiled program of the tests below.
  w = jnp.tile(jnp.array([[0., 1., 2.]]), (4, 1))
  r = jnp.tile(jnp.array([[-1., 1., 1.]]), (4, 1))
  assert _check(w, r, 3, 1.0, True, 0).tolist() == [[2, 0, 1]] * 4


@needs_native
@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(st.one_of(*[strategies.stage_inputs([shape], dtypes=(dtype,))
                   for shape, dtype in _CASES]))
def test_matches_portable_search(case):
  _check(*case)


# (rows, n, partition ratio, alpha, distinct values): long rows, chosen so
# that the portable loop (the slow side here) stays fast.
_LONG = [(6, 784, 0.1, 0.01, 784), (6, 784, 0.1, 5.0, 7),
         (6, 784, 1.0, 0.01, 784), (6, 784, 1.0, 0.495, 784),
         (2, 10000, 0.1, 0.495, 1000), (2, 10000, 1.0, 0.495, 10000)]


@needs_native
@pytest.mark.slow
@pytest.mark.parametrize("rows,n,ratio,alpha,distinct", _LONG)
def test_matches_portable_search_on_long_rows(rows, n, ratio, alpha, distinct):
  rng = np.random.default_rng(n + distinct)
  size = int(sgperm_jax.partition_size(ratio, n, 10))
  w, r = strategies.random_rows(
      rng, rows, n, distinct, 1.0, 0.05, 0.01, tied=0.3)
  succ = _check(jnp.asarray(w, jnp.float32), jnp.asarray(r, jnp.float32),
                size, alpha, True, int(rng.integers(2**31)))
  assert np.any(succ != np.arange(n))  # cycles were found


@jax.jit
def _native_step(w, r, size, alpha, seed):
  """The partition's order and the native search's new rows."""
  part = sgperm_jax.partition(jax.random.key(seed), w, r, size)
  graph = sgperm_jax.permissibility_graph(part, alpha)
  return part.order, sgperm_jax.permute(part, _native_cycles(part, graph))


@needs_native
@pytest.mark.slow
@pytest.mark.parametrize("distinct", [1, 3, 30])
def test_heavy_ties_match_oracle(distinct):
  """Many equal values and a wide reach (slow for the portable loop)."""
  rng = np.random.default_rng(distinct)
  n = 300
  w, r = strategies.random_rows(
      rng, 2, n, distinct, 1.0, 0.05, 0.01, tied=0.3)
  w = jnp.asarray(w, jnp.float32)
  for size, alpha in ((n, 0.495), (n, 5.0), (100, 0.3)):
    orders, out = _native_step(w, jnp.asarray(r, jnp.float32), size, alpha,
                               size)
    out = np.asarray(out)
    w_np = np.asarray(w)
    for row in range(2):
      order = np.asarray(orders[row])
      subsets = [order[lo:lo + size].tolist() for lo in range(0, n, size)]
      expected = reference.row_step(w_np[row], r[row], np.ptp(w_np[row]),
                                    alpha, subsets)
      np.testing.assert_array_equal(out[row], expected)


@needs_native
@pytest.mark.slow
def test_float64_magnitudes(x64):  # the fixture enables x64
  rng = np.random.default_rng(64)
  for alpha in (0.0, 0.3):
    w, r = strategies.random_rows(
      rng, 3, 40, 12, 1.0, 0.1, 0.05, tied=0.3)
    r[0, :5] = [1e-310, -1e-310, 2e-310, 1e-300, -1e-320]  # subnormals
    w = jnp.asarray(w, jnp.float64)
    r = jnp.asarray(r, jnp.float64)
    assert jax.eval_shape(lambda w, r: _magnitude(sgperm_jax.partition(
        jax.random.key(0), w, r, 7)), w, r).dtype == jnp.uint64
    _check(w, r, 7, alpha, False, 5)
    _check(w, r, 40, alpha, True, 6)


@needs_native
@pytest.mark.slow
def test_vmap_and_jit():
  rng = np.random.default_rng(3)
  w, r = strategies.random_rows(
      rng, 8, 16, 16, 1.0, 0.1, 0.0, tied=0.3)
  w = jnp.asarray(w, jnp.float32).reshape(2, 4, 16)
  r = jnp.asarray(r, jnp.float32).reshape(2, 4, 16)

  @jax.jit
  def stages(w, r):
    def one(w, r):
      part = sgperm_jax.partition(jax.random.key(0), w, r, 5)
      return part, sgperm_jax.permissibility_graph(part, 0.3)
    parts, graphs = jax.vmap(one)(w, r)
    alone = [_native_cycles(*jax.tree.map(lambda x, i=i: x[i],
                                          (parts, graphs)))
             for i in range(2)]
    # the native kernel vmapped under jit, and each batch searched alone
    return (parts, graphs, jax.vmap(_magnitude)(parts),
            jax.vmap(_native_cycles)(parts, graphs), alone)

  parts, graphs, magnitudes, batched, alone = stages(w, r)
  for i in range(2):  # (alone, the kernel equals the loop: tests above)
    np.testing.assert_array_equal(np.asarray(batched[i]),
                                  np.asarray(alone[i]))
  assert np.any(np.asarray(batched) != np.arange(16))  # not vacuous
  # one argument unbatched (outside jit): broadcast like the others
  mixed = jax.vmap(_native.find_cycles_native,
                   in_axes=(None, 0, 0, 0, 0, 0))(
                       graphs.direction[0], graphs.reach_lo, graphs.reach_hi,
                       parts.subset_lo, parts.subset_hi, magnitudes)
  np.testing.assert_array_equal(np.asarray(mixed[0]), np.asarray(batched[0]))


@needs_native
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
def test_empty_shapes(shape):
  z = jnp.zeros(shape, jnp.int32)
  out = jax.jit(_native.find_cycles_native)(
      z.astype(jnp.int8), z, z, z, z, z.astype(jnp.uint32))
  assert out.shape == shape and out.dtype == jnp.int32


@needs_native
@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 1), (1, 2), (4, 3)])
def test_tiny_rows(shape):
  rows, n = shape
  w = jnp.arange(rows * n, dtype=jnp.float32).reshape(shape)
  r = jnp.asarray(np.where(np.arange(rows * n) % 2 == 0, 1., -1.),
                  jnp.float32).reshape(shape)  # not weak-typed: no recompile
  out = _check(w, r, n, 1.0, True, 0)  # native == loop, bit for bit
  assert out.shape == shape


@needs_native
def test_malformed_input_stays_in_bounds():
  """Garbage ranges give some permutation-free result, never a crash."""
  rng = np.random.default_rng(11)
  for _ in range(20):  # few distinct lengths: one compilation each
    rows, n = 3, int(rng.choice([1, 2, 7, 29]))
    shape = (rows, n)
    ints = lambda shape=shape: jnp.asarray(rng.integers(-40, 40, size=shape),
                                           jnp.int32)
    out = _native.find_cycles_native(
        jnp.asarray(rng.integers(-2, 3, size=shape), jnp.int8), ints(),
        ints(), ints(), ints(),
        jnp.asarray(rng.integers(0, 5, size=shape), jnp.uint32))
    out = np.asarray(out)
    assert np.all((out >= 0) & (out < n))


@needs_native
def test_bad_magnitude_dtype():
  z = jnp.zeros((1, 3), jnp.int32)
  with pytest.raises(ValueError, match="magnitude"):
    _native.find_cycles_native(z.astype(jnp.int8), z, z, z, z,
                               z.astype(jnp.float32))
