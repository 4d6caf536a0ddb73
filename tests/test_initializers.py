"""Sparse and weight-agnostic initialisers: exact nonzero counts per row,
shared values, determinism, dtypes, jit, and that permutation training keeps
every row's values (the "rewiring" the initialisers are for)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sgperm_jax
from sgperm_jax import initializers
from sgperm_jax.initializers import agnostic, row_nonzeros, sparse
from tests import helpers

# Each new (configuration, shape, dtype) compiles a program (~0.3 s): few
# examples, drawn from small catalogues.
SETTINGS = dict(max_examples=4, deadline=None, database=None)
SHAPES = st.sampled_from([(5,), (4, 3), (2, 3, 2), (1, 1)])
DENSITIES = st.sampled_from([1.0, 0.5, 0.1])
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "float16": jnp.float16}
# One object each, so that the compiled draws are shared between tests.
def UNIFORM(key, shape, dtype=jnp.float32):
  """Uniform in [1, 2): never 0, so every kept slot is nonzero."""
  return 1 + jax.random.uniform(key, shape, dtype)
NORMAL = jax.nn.initializers.normal()


def _row_counts(w) -> np.ndarray:
  return (helpers.rows(np.asarray(w, np.float32)) != 0).sum(axis=-1)


def _row_length(shape) -> int:
  return math.prod(shape[:-1]) if len(shape) >= 2 else shape[0]


def test_row_nonzeros_rounds_half_up_and_keeps_one():
  assert [row_nonzeros(10, d) for d in (1.0, 0.5, 0.25, 0.24, 0.01)] == [
      10, 5, 3, 2, 1]
  assert row_nonzeros(5, 0.5) == 3 and row_nonzeros(3, 0.1) == 1
  assert row_nonzeros(0, 0.5) == 0 and row_nonzeros(30, 0.1) == 3


@settings(**SETTINGS)
@given(SHAPES, DENSITIES, st.integers(0, 2**31 - 1))
def test_sparse_keeps_exactly_the_rounded_count_per_row(shape, density,
                                                        seed):
  w = sparse(UNIFORM, density)(jax.random.key(seed), shape)
  assert w.shape == shape and w.dtype == jnp.float32
  np.testing.assert_array_equal(
      _row_counts(w), row_nonzeros(_row_length(shape), density))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_sparse_keeps_base_init_values_in_its_dtype(dtype):
  dtype = DTYPES[dtype]
  w = np.asarray(sparse(NORMAL, 0.5)(jax.random.key(3), (4, 3), dtype))
  assert w.dtype == dtype
  np.testing.assert_array_equal(_row_counts(w), 2)
  # the kept slots hold base_init's values, drawn with the first key (up to
  # the rounding XLA chooses, compiled and not)
  dense = np.asarray(NORMAL(jax.random.split(jax.random.key(3))[0], (4, 3),
                          dtype), np.float32)
  kept = w != 0
  np.testing.assert_allclose(w[kept].astype(np.float32), dense[kept],
                             rtol=1e-2)


@settings(**SETTINGS)
@given(SHAPES, DENSITIES, st.sampled_from(initializers.SIGNS),
       st.sampled_from(sorted(DTYPES)), st.integers(0, 2**31 - 1))
def test_agnostic_values_are_one_shared_magnitude(shape, density, sign, dtype,
                                                   seed):
  dtype = DTYPES[dtype]
  w = np.asarray(agnostic(0.3, density, sign)(jax.random.key(seed), shape,
                                               dtype))
  assert w.shape == shape and w.dtype == dtype
  np.testing.assert_array_equal(
      _row_counts(w), row_nonzeros(_row_length(shape), density))
  value = float(np.asarray(0.3, dtype))  # 0.3 rounded to the dtype
  allowed = {"random": {value, -value}, "positive": {value},
             "negative": {-value}}[sign]
  assert set(w[w != 0].astype(np.float64).tolist()) <= allowed
  assert not np.any(np.signbit(w[w == 0]))  # zeros are +0.0


def test_positions_and_signs_are_uniform_and_independent_per_row():
  ws = np.asarray(jax.vmap(lambda k: agnostic(1.0, 0.3)(k, (10, 3)))(
      jax.random.split(jax.random.key(1), 1000)))
  kept = ws != 0
  assert np.all(np.abs(kept.mean(axis=0) - 0.3) < 0.05)  # each slot: 0.3
  assert 0.45 < np.mean(ws[kept] > 0) < 0.55  # signs: half each
  # the three rows of one draw are independent: rarely all the same
  same = [np.array_equal(k[:, 0], k[:, 1]) and np.array_equal(k[:, 1], k[:, 2])
          for k in kept]
  assert np.mean(same) < 0.05


def test_same_key_same_weights_other_key_other_weights():
  for init in (sparse(NORMAL, 0.5), agnostic(0.5, 0.5)):
    a = init(jax.random.key(3), (8, 5))
    assert a.dtype == jnp.float32  # the default without x64
    b = init(jax.random.key(3), (8, 5))
    c = init(jax.random.key(4), (8, 5))
    np.testing.assert_array_equal(helpers.bits(a), helpers.bits(b))
    assert not np.array_equal(a, c)
  # old-style raw keys work too
  assert agnostic(0.5, 0.5)(jax.random.PRNGKey(3), (8, 5)).shape == (8, 5)


def test_jit_gives_the_eager_result():
  init = sparse(NORMAL, 0.5)
  eager = init(jax.random.key(3), (8, 5))
  jitted = jax.jit(init, static_argnums=(1, 2))(jax.random.key(3), (8, 5),
                                                 jnp.float32)
  np.testing.assert_array_equal(helpers.bits(eager), helpers.bits(jitted))
  # An unhashable base_init cannot be a static argument of the compiled
  # draw: it is drawn op by op instead, to the same weights.

  class Unhashable:
    __hash__ = None

    def __call__(self, key, shape, dtype=jnp.float32):
      return NORMAL(key, shape, dtype)

  drawn = sparse(Unhashable(), 0.5)(jax.random.key(3), (8, 5))
  np.testing.assert_array_equal(helpers.bits(drawn), helpers.bits(eager))


def test_scalars_vectors_and_empty_shapes():
  init = agnostic(2.0, 0.5, "positive")
  assert float(init(jax.random.key(0), ())) == 2.0  # a row of one: kept
  assert int(jnp.sum(init(jax.random.key(0), 7) != 0)) == 4  # int shape
  assert init(jax.random.key(0), (0, 3)).shape == (0, 3)


def test_float64_under_x64(x64):
  w = agnostic(0.1, 0.5)(jax.random.key(0), (4, 2))
  assert w.dtype == jnp.float64
  assert set(np.abs(np.asarray(w)).ravel().tolist()) == {0.0, 0.1}
  w = sparse(NORMAL, 0.5)(jax.random.key(0), (4, 2), jnp.float64)
  assert w.dtype == jnp.float64


@pytest.mark.parametrize("call, match", [
    (lambda: sparse(jax.nn.initializers.normal(), 0.0), "density"),
    (lambda: sparse(jax.nn.initializers.normal(), 1.5), "density"),
    (lambda: sparse(jax.nn.initializers.normal(), float("nan")), "density"),
    (lambda: sparse(jax.nn.initializers.normal(), True), "density"),
    (lambda: sparse(jax.nn.initializers.normal(), "0.5"), "density"),
    (lambda: agnostic(0.0), "value"),
    (lambda: agnostic(-1.0), "value"),
    (lambda: agnostic(float("inf")), "value"),
    (lambda: agnostic(float("nan")), "value"),
    (lambda: agnostic(True), "value"),
    (lambda: agnostic(1.0, density=0), "density"),
    (lambda: agnostic(1.0, sign="neg"), "sign"),
    (lambda: agnostic(1e6)(jax.random.key(0), (2,), jnp.float16), "value"),
    (lambda: agnostic(1e-9)(jax.random.key(0), (2,), jnp.float16), "value"),
    (lambda: agnostic(1.0)(jax.random.key(0), (2,), jnp.int32), "dtype"),
    (lambda: row_nonzeros(-1, 0.5), "row_length"),
])
def test_bad_arguments_are_value_errors_that_name_them(call, match):
  with pytest.raises(ValueError, match=f"^sgperm_jax: {match}"):
    call()


def test_base_init_must_be_callable():
  with pytest.raises(TypeError, match=r"^sgperm_jax: base_init"):
    sparse(0.1, 0.5)


def test_as_flax_kernel_init():
  from flax import nnx  # noqa: PLC0415 (an optional dependency)
  layer = nnx.Linear(8, 4, rngs=nnx.Rngs(0), kernel_init=sparse(
      nnx.initializers.lecun_normal(), 0.25))
  np.testing.assert_array_equal(_row_counts(layer.kernel[...]), 2)


@functools.cache
def _mlp_params(seed=0):
  k0, k1 = jax.random.split(jax.random.key(seed))
  return {
      "dense0": {"kernel": sparse(jax.nn.initializers.he_normal(), 0.25)(
          k0, (12, 6)), "bias": jnp.zeros(6)},
      "dense1": {"kernel": agnostic(0.3, 0.5)(k1, (6, 4)),
                 "bias": jnp.zeros(4)},
  }


@jax.jit
def _loss(params, x, y):
  h = jax.nn.relu(x @ params["dense0"]["kernel"]
                  + params["dense0"]["bias"][None, :])
  out = h @ params["dense1"]["kernel"] + params["dense1"]["bias"][None, :]
  return jnp.mean((out - y) ** 2)


def _kernels(params):
  return {k: v["kernel"] for k, v in params.items()}


@pytest.mark.parametrize("make_tx, permuted", [
    (lambda: sgperm_jax.sgperm(lamda0=0.5, partition_size_min=2, alpha0=1.0),
     lambda params: params),
    # LaPerm leaves vectors (the biases) free by default (skip_vectors)
    (lambda: sgperm_jax.laperm(optax.adam(0.05), sync_period=2), _kernels),
], ids=["sgperm", "laperm"])
@pytest.mark.slow
def test_permutation_training_rewires_sparse_and_agnostic_nets(make_tx,
                                                               permuted):
  """Each row of the exact weights keeps its multiset of bit patterns, so
  its zeros (count and sign) and its shared value, while the net trains."""
  init = _mlp_params()
  x = jax.random.normal(jax.random.key(1), (32, 12))
  y = jax.random.normal(jax.random.key(2), (32, 4))
  tx = make_tx()

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(_loss)(params, x, y), state, params)
    return optax.apply_updates(params, updates), state

  params, state = init, tx.init(init)
  for _ in range(4):
    params, state = step(params, state)
  exact = sgperm_jax.exact_params(params, state)
  helpers.assert_same_rows(permuted(exact), permuted(init), by_bits=True)
  for new, old in zip(jax.tree.leaves(permuted(exact)),
                      jax.tree.leaves(permuted(init))):
    np.testing.assert_array_equal(_row_counts(new), _row_counts(old))
  moved = [not np.array_equal(exact[k]["kernel"], init[k]["kernel"])
           for k in init]
  assert any(moved), "nothing was rewired: the test shows nothing"
  assert float(_loss(exact, x, y)) < float(_loss(init, x, y))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_a_subnormal_value_is_kept_with_either_sign(dtype):
  dtype = jnp.dtype(dtype)
  value = float(jnp.finfo(dtype).smallest_subnormal) * 3
  w = initializers.agnostic(value, 0.5)(jax.random.key(0), (6, 3), dtype)
  assert (_row_counts(w) == initializers.row_nonzeros(6, 0.5)).all()
  magnitudes = np.unique(np.abs(np.asarray(w, np.float64)))
  assert magnitudes.tolist() == [0.0, float(jnp.asarray(value, dtype))]
