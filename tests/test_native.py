"""The native CPU cycle search against the portable one, bit for bit."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
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
  return (sgperm_jax.find_cycles(part, graph, method="loop"),
          _native_cycles(part, graph))


def _check(w, r, size, alpha, remainder, seed):
  portable, native = _both(w, r, size, alpha, remainder, seed)
  assert native.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(native), np.asarray(portable))
  return np.asarray(native)


_SHAPES = [(1, 2), (3, 5), (2, 16), (3, 40)]  # one compilation per shape


def test_available():
  if _DISABLED:
    assert not _native.available()
    return
  assert _native.available(), _native.load_error()


@needs_native
def test_spec_example():
  part = sgperm_jax.partition(jax.random.key(0), jnp.array([[0., 1., 2.]]),
                              jnp.array([[-1., 1., 1.]]), size=3)
  graph = sgperm_jax.permissibility_graph(part, alpha=1.0)
  assert _native_cycles(part, graph).tolist() == [[2, 0, 1]]


@needs_native
@settings(max_examples=60, deadline=None)
@given(strategies.stage_inputs(_SHAPES, dtypes=("bfloat16", "float32")))
def test_matches_portable_search(case):
  _check(*case)


# (rows, n, partition ratio, alpha, distinct values): long rows, chosen so
# that the portable loop (the slow side here) stays fast.
_LONG = [(6, 784, 0.1, 0.01, 784), (6, 784, 0.1, 5.0, 7),
         (6, 784, 1.0, 0.01, 784), (6, 784, 1.0, 0.495, 784),
         (2, 10000, 0.1, 0.495, 1000), (2, 10000, 1.0, 0.495, 10000)]


@needs_native
@pytest.mark.parametrize("rows,n,ratio,alpha,distinct", _LONG)
def test_matches_portable_search_on_long_rows(rows, n, ratio, alpha, distinct):
  rng = np.random.default_rng(n + distinct)
  size = int(sgperm_jax.partition_size(ratio, n, 10))
  w, r = strategies.random_rows(
      rng, rows, n, distinct, 1.0, 0.05, 0.01, tied=0.3)
  succ = _check(jnp.asarray(w, jnp.float32), jnp.asarray(r, jnp.float32),
                size, alpha, True, int(rng.integers(2**31)))
  assert np.any(succ != np.arange(n))  # cycles were found


@needs_native
@pytest.mark.parametrize("distinct", [1, 3, 30])
def test_heavy_ties_match_oracle(distinct):
  """Many equal values and a wide reach (slow for the portable loop)."""
  rng = np.random.default_rng(distinct)
  n = 300
  w, r = strategies.random_rows(
      rng, 2, n, distinct, 1.0, 0.05, 0.01, tied=0.3)
  w = jnp.asarray(w, jnp.float32)
  for size, alpha in ((n, 0.495), (n, 5.0), (100, 0.3)):
    part = sgperm_jax.partition(jax.random.key(size), w,
                                jnp.asarray(r, jnp.float32), size)
    graph = sgperm_jax.permissibility_graph(part, alpha)
    out = np.asarray(sgperm_jax.permute(part, _native_cycles(part, graph)))
    w_np = np.asarray(w)
    for row in range(2):
      order = np.asarray(part.order[row])
      subsets = [order[lo:lo + size].tolist() for lo in range(0, n, size)]
      expected = reference.row_step(w_np[row], r[row], np.ptp(w_np[row]),
                                    alpha, subsets)
      np.testing.assert_array_equal(out[row], expected)


@needs_native
def test_float64_magnitudes(x64):  # pylint: disable=unused-argument,redefined-outer-name
  rng = np.random.default_rng(64)
  for alpha in (0.0, 0.3):
    w, r = strategies.random_rows(
      rng, 3, 40, 12, 1.0, 0.1, 0.05, tied=0.3)
    r[0, :5] = [1e-310, -1e-310, 2e-310, 1e-300, -1e-320]  # subnormals
    w = jnp.asarray(w, jnp.float64)
    r = jnp.asarray(r, jnp.float64)
    assert _magnitude(sgperm_jax.partition(
        jax.random.key(0), w, r, 7)).dtype == jnp.uint64
    _check(w, r, 7, alpha, False, 5)
    _check(w, r, 40, alpha, True, 6)


@needs_native
def test_vmap_and_jit():
  rng = np.random.default_rng(3)
  w, r = strategies.random_rows(
      rng, 8, 16, 16, 1.0, 0.1, 0.0, tied=0.3)
  w = jnp.asarray(w, jnp.float32).reshape(2, 4, 16)
  r = jnp.asarray(r, jnp.float32).reshape(2, 4, 16)

  def stages(w, r):
    part = sgperm_jax.partition(jax.random.key(0), w, r, 5)
    return part, sgperm_jax.permissibility_graph(part, 0.3)

  parts, graphs = jax.vmap(stages)(w, r)
  batched = jax.jit(jax.vmap(_native_cycles))(parts, graphs)
  for i in range(2):
    part, graph = jax.tree.map(lambda x, i=i: x[i], (parts, graphs))
    np.testing.assert_array_equal(
        np.asarray(batched[i]),
        np.asarray(sgperm_jax.find_cycles(part, graph, method="loop")))
  # one argument unbatched: broadcast like the others
  part0, graph0 = jax.tree.map(lambda x: x[0], (parts, graphs))
  mixed = jax.vmap(_native.find_cycles_native,
                   in_axes=(None, 0, 0, 0, 0, 0))(
                       graph0.direction, graphs.reach_lo, graphs.reach_hi,
                       parts.subset_lo, parts.subset_hi,
                       jax.vmap(_magnitude)(parts))
  np.testing.assert_array_equal(np.asarray(mixed[0]),
                                np.asarray(_native_cycles(part0, graph0)))


@needs_native
@pytest.mark.parametrize("shape", [(0, 5), (3, 0), (0, 0)])
def test_empty_shapes(shape):
  z = jnp.zeros(shape, jnp.int32)
  out = jax.jit(_native.find_cycles_native)(
      z.astype(jnp.int8), z, z, z, z, z.astype(jnp.uint32))
  assert out.shape == shape and out.dtype == jnp.int32


@needs_native
@pytest.mark.parametrize("shape", [(2, 1), (1, 2), (4, 3)])
def test_tiny_rows(shape):
  rows, n = shape
  w = jnp.arange(rows * n, dtype=jnp.float32).reshape(shape)
  r = jnp.where(jnp.arange(rows * n) % 2 == 0, 1., -1.).reshape(shape)
  part = sgperm_jax.partition(jax.random.key(0), w, r, size=n)
  graph = sgperm_jax.permissibility_graph(part, alpha=1.0)
  out = jax.jit(_native_cycles)(part, graph)
  assert out.shape == shape and out.dtype == jnp.int32
  np.testing.assert_array_equal(np.asarray(out),
                                np.asarray(sgperm_jax.find_cycles(
                                    part, graph, method="loop")))


@needs_native
def test_malformed_input_stays_in_bounds():
  """Garbage ranges give some permutation-free result, never a crash."""
  rng = np.random.default_rng(11)
  for _ in range(20):
    rows, n = 3, int(rng.integers(1, 30))
    shape = (rows, n)
    ints = lambda: jnp.asarray(rng.integers(-40, 40, size=shape), jnp.int32)
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
