"""The transformation: the optax battery, exactness, layouts, bad input."""

import contextlib
import logging

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgperm_jax


def _mlp_params(key=0, dtype=jnp.float32):
  k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
  return {
      "dense": {"kernel": jax.random.normal(k1, (12, 5)).astype(dtype),
                "bias": jax.random.normal(k2, (5,)).astype(dtype)},
      "conv": {"kernel": jax.random.normal(k3, (2, 2, 3, 4)).astype(dtype)},
  }


def _loss(params):
  target = jax.tree.map(lambda p: jnp.sin(jnp.arange(p.size).reshape(p.shape)
                                          ).astype(p.dtype), params)
  return sum(jnp.sum((p.astype(jnp.float32) - t.astype(jnp.float32)) ** 2)
             for p, t in zip(jax.tree.leaves(params), jax.tree.leaves(target)))


def _rows(x):
  x = np.asarray(x.astype(jnp.float32))
  return x.reshape(1, -1) if x.ndim == 1 else x.reshape(-1, x.shape[-1]).T


def _assert_row_permutation(a, b):
  """Every row of ``a`` holds exactly the values of the same row of ``b``."""
  def check(x, y):
    assert x.dtype == y.dtype
    np.testing.assert_array_equal(np.sort(_rows(x), -1), np.sort(_rows(y), -1))
  jax.tree.map(check, a, b)


class TestOptaxBattery(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_descends_and_keeps_rows(self):
    params = _mlp_params()
    tx = sgperm_jax.sgperm(lamda0=0.5)
    state = tx.init(params)
    update = self.variant(tx.update)
    start = params
    for _ in range(15 if self.variant.type == "with_jit" else 2):
      grads = jax.grad(_loss)(params)
      updates, state = update(grads, state, params)
      params = optax.apply_updates(params, updates)
    exact = sgperm_jax.exact_params(params, state)
    _assert_row_permutation(exact, start)
    self.assertLess(float(_loss(exact)), float(_loss(start)))

  def test_one_trace_while_alpha_and_partition_size_change(self):
    params = _mlp_params()
    tx = sgperm_jax.sgperm(alpha0=0.9, beta1=0.97, lamda0=0.05, beta2=1.05,
                           partition_size_min=2)
    state = tx.init(params)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, state):
      updates, state = tx.update(jax.grad(_loss)(params), state, params)
      return optax.apply_updates(params, updates), state

    sizes = set()
    for t in range(120):
      params, state = step(params, state)
      lamda = sgperm_jax.partition_ratio(0.05, 1.05, 1.0)(t)
      sizes.add(int(sgperm_jax.partition_size(lamda, 12, 2)))
    self.assertGreater(len(sizes), 5)  # the partition size did change
    _assert_row_permutation(sgperm_jax.exact_params(params, state),
                            _mlp_params())

  def test_no_recompilation_on_second_call(self):
    params = _mlp_params()
    tx = sgperm_jax.sgperm()
    update = jax.jit(tx.update)
    state = tx.init(params)
    grads = jax.grad(_loss)(params)
    _, state = update(grads, state, params)
    with _no_compiles():
      update(grads, state, params)
    with pytest.raises(AssertionError, match="Compiling"):  # the check works
      with _no_compiles():
        jax.jit(lambda x: x * 3)(jnp.ones(7))

  def test_init_is_shape_only(self):
    params = _mlp_params()
    tx = sgperm_jax.sgperm()
    shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                          params)
    abstract = jax.eval_shape(tx.init, shapes)
    concrete = tx.init(shapes)
    chex.assert_trees_all_equal_shapes_and_dtypes(abstract, tx.init(params))
    chex.assert_trees_all_equal_shapes_and_dtypes(concrete, tx.init(params))

  def test_map_params(self):
    params = _mlp_params()
    tx = sgperm_jax.sgperm()
    state = tx.init(params)
    state = optax.tree.map_params(tx, lambda v: v, state)
    updates, _ = tx.update(jax.grad(_loss)(params), state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)

  def test_extra_args_are_ignored(self):
    params = _mlp_params()
    tx = sgperm_jax.sgperm()
    state = tx.init(params)
    grads = jax.grad(_loss)(params)
    plain = tx.update(grads, state, params)
    extra = tx.update(grads, state, params, unexpected_extra_arg=1, value=2.)
    chex.assert_trees_all_equal(plain, extra)

  def test_inject_hyperparams_gives_the_same_result(self):
    params = _mlp_params()
    hp = dict(alpha0=0.7, lamda0=0.4, beta1=0.95, beta2=1.02, alpha_min=0.02,
              lamda_max=0.9, momentum_lr=0.5, momentum=0.8,
              partition_size_min=3, include_partition_remainder=False, seed=5)
    plain = sgperm_jax.sgperm(**hp)
    injected = optax.inject_hyperparams(sgperm_jax.sgperm,
                                        static_args=("layout",))(**hp)
    s1, s2 = plain.init(params), injected.init(params)
    u1 = jax.jit(plain.update)
    u2 = jax.jit(injected.update)
    p1 = p2 = params
    for _ in range(4):
      g = jax.grad(_loss)(p1)
      d1, s1 = u1(g, s1, p1)
      d2, s2 = u2(g, s2, p2)
      p1, p2 = optax.apply_updates(p1, d1), optax.apply_updates(p2, d2)
    chex.assert_trees_all_equal(p1, p2)
    chex.assert_trees_all_equal(s1, s2.inner_state)

  def test_schedules_replace_the_reference_rules(self):
    params = _mlp_params()
    calls = []
    alpha = optax.linear_schedule(1.0, 0.0, 10)
    lamda = lambda count: (calls.append(1), jnp.where(count < 2, 1.0, 0.5))[1]
    tx = sgperm_jax.sgperm(alpha0=alpha, lamda0=lamda)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(jax.grad(_loss)(params), state, params)
    self.assertTrue(calls)
    _assert_row_permutation(
        sgperm_jax.exact_params(optax.apply_updates(params, updates), state),
        params)


@contextlib.contextmanager
def _no_compiles():
  """Fails if anything is compiled inside the block."""
  messages = []

  class Handler(logging.Handler):
    def emit(self, record):
      messages.append(record.getMessage())

  handler = Handler()
  logger = logging.getLogger("jax")
  old_level = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.DEBUG)
  try:
    with jax.log_compiles(True):
      yield
  finally:
    logger.removeHandler(handler)
    logger.setLevel(old_level)
  compiles = [m for m in messages if m.startswith("Compiling")]
  assert not compiles, compiles


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32,
                                   jnp.float64])
def test_drift_stays_within_an_ulp_of_exact_params(dtype):
  """Through optax.apply_updates, rounding never accumulates (SPEC §4)."""
  with jax.enable_x64(dtype == jnp.float64):
    params = _mlp_params(1, dtype)
    start = params
    tx = sgperm_jax.sgperm(alpha0=1.0, lamda0=0.3, partition_size_min=3)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
      updates, state = tx.update(jax.grad(_loss)(params), state, params)
      chex.assert_trees_all_equal_dtypes(updates, params)
      return optax.apply_updates(params, updates), state

    moved = 0
    for _ in range(60):
      before = sgperm_jax.exact_params(params, state)
      params, state = step(params, state)
      exact = sgperm_jax.exact_params(params, state)
      moved += sum(int(jnp.sum(a != b)) for a, b in
                   zip(jax.tree.leaves(before), jax.tree.leaves(exact)))
      _assert_row_permutation(exact, start)
      for p, e, b in zip(jax.tree.leaves(params), jax.tree.leaves(exact),
                         jax.tree.leaves(before)):
        assert p.dtype == e.dtype == dtype
        # p + (e - p) rounds at the scale of the larger of the old and the
        # new value of the slot; the error never builds up over steps.
        wide = jnp.float64 if dtype == jnp.float64 else jnp.float32
        scale = jnp.maximum(jnp.abs(e), jnp.abs(b)).astype(dtype)
        ulp = jnp.spacing(scale).astype(wide)
        err = jnp.abs(p.astype(wide) - e.astype(wide))
        assert bool(jnp.all(err <= 2 * ulp)), (dtype, float(jnp.max(err)))
    assert moved > 100


def test_exact_params_is_exact_where_apply_updates_rounds():
  params = jnp.array([1e8, 1.0, -3.0], jnp.float32)
  tx = sgperm_jax.sgperm(alpha0=1.0, lamda0=1.0)
  state = tx.init(params)
  updates, state = tx.update(jnp.array([1., -1., 0.]), state, params)
  rounded = optax.apply_updates(params, updates)
  assert rounded.tolist() == [0.0, 1e8, -3.0]  # what optax gives
  assert sgperm_jax.exact_params(rounded, state).tolist() == [1.0, 1e8, -3.0]


def test_exact_params_before_the_first_step_and_without_state():
  params = _mlp_params()
  state = sgperm_jax.sgperm().init(params)
  chex.assert_trees_all_equal(sgperm_jax.exact_params(params, state), params)
  with pytest.raises(ValueError, match="no sgperm_jax state"):
    sgperm_jax.exact_params(params, optax.adam(1e-3).init(params))


def test_exact_params_inside_partition_and_chain():
  params = _mlp_params()
  labels = {"dense": {"kernel": "perm", "bias": "adam"},
            "conv": {"kernel": "perm"}}
  tx = optax.chain(
      optax.clip_by_global_norm(1e9),
      optax.partition({"perm": sgperm_jax.sgperm(lamda0=1.0, alpha0=1.0),
                       "adam": optax.adam(0.1)}, labels))
  state = tx.init(params)
  p = params
  for _ in range(5):
    updates, state = jax.jit(tx.update)(jax.grad(_loss)(p), state, p)
    p = optax.apply_updates(p, updates)
  exact = sgperm_jax.exact_params(p, state)
  _assert_row_permutation({"k": exact["dense"]["kernel"],
                           "c": exact["conv"]["kernel"]},
                          {"k": params["dense"]["kernel"],
                           "c": params["conv"]["kernel"]})
  assert bool(jnp.any(exact["dense"]["kernel"] != params["dense"]["kernel"]))
  # the Adam leaf is taken from params as it is
  np.testing.assert_array_equal(exact["dense"]["bias"], p["dense"]["bias"])
  assert bool(jnp.any(p["dense"]["bias"] != params["dense"]["bias"]))


@pytest.mark.parametrize("layout", [
    "whole",
    None,
    {"dense": {"kernel": "neurons", "bias": None}, "conv": {"kernel": "whole"}},
    lambda params: jax.tree.map(lambda p: None if p.ndim == 1 else "neurons",
                                params),
])
def test_layouts(layout):
  params = _mlp_params()
  tx = sgperm_jax.sgperm(layout=layout, alpha0=1.0, lamda0=1.0)
  state = tx.init(params)
  grads = jax.grad(_loss)(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  exact = sgperm_jax.exact_params(optax.apply_updates(params, updates), state)
  specs = (layout(params) if callable(layout) else
           jax.tree.map(lambda _: layout, params) if not isinstance(
               layout, dict) else layout)
  flat_specs = jax.tree.structure(params).flatten_up_to(specs)
  for spec, p, e, u in zip(flat_specs, jax.tree.leaves(params),
                           jax.tree.leaves(exact), jax.tree.leaves(updates)):
    if spec is None:
      np.testing.assert_array_equal(u, np.zeros_like(u))  # exact zeros
      np.testing.assert_array_equal(e, p)
    elif spec == "whole":
      np.testing.assert_array_equal(np.sort(e.ravel()), np.sort(p.ravel()))
      # values may cross the neuron boundary: the rows are not kept
    else:
      np.testing.assert_array_equal(np.sort(_rows(e), -1),
                                    np.sort(_rows(p), -1))
  if layout == "whole":
    k, e = params["dense"]["kernel"], exact["dense"]["kernel"]
    assert not np.array_equal(np.sort(_rows(e), -1), np.sort(_rows(k), -1))


def test_non_finite_gradients_are_inactive_and_do_not_poison_momentum():
  params = jnp.linspace(-1., 1., 10)
  tx = sgperm_jax.sgperm(alpha0=1.0, lamda0=1.0, momentum_lr=1.0,
                         momentum=0.9)
  state = tx.init(params)
  bad = jnp.array([jnp.nan, 1., -1., jnp.inf, 1., -1., -jnp.inf, 1., -1., 1.])
  updates, state = tx.update(bad, state, params)
  exact = sgperm_jax.exact_params(optax.apply_updates(params, updates), state)
  for i in (0, 3, 6):  # inactive slots keep their values
    assert exact[i] == params[i]
  momentum = state[0].momentum
  assert bool(jnp.all(jnp.isfinite(momentum)))
  assert momentum[0] == momentum[3] == momentum[6] == 0
  assert bool(jnp.any(exact != params))


@pytest.mark.parametrize("kwargs, name", [
    (dict(alpha0=-0.1), "alpha0"), (dict(lamda0=1.5), "lamda0"),
    (dict(lamda0=-0.5), "lamda0"), (dict(beta1=1.5), "beta1"),
    (dict(beta2=0.5), "beta2"), (dict(alpha_min=-1.), "alpha_min"),
    (dict(lamda_max=2.), "lamda_max"), (dict(momentum=-0.1), "momentum"),
    (dict(momentum_lr=0.), "momentum_lr"),
    (dict(partition_size_min=0), "partition_size_min"),
    (dict(partition_size_min=-3), "partition_size_min"),
    (dict(partition_size_min=2.5), "partition_size_min"),
    (dict(alpha0="big"), "alpha0"), (dict(seed="0"), "seed"),
    (dict(include_partition_remainder="yes"), "include_partition_remainder"),
    (dict(layout="rows"), "layout"), (dict(alpha0=float("nan")), "alpha0"),
])
def test_bad_arguments_name_the_argument(kwargs, name):
  with pytest.raises((ValueError, TypeError), match=name):
    sgperm_jax.sgperm(**kwargs)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.complex64])
def test_non_float_leaves_name_the_leaf(dtype):
  params = {"ok": jnp.ones(3), "bad": {"leaf": jnp.ones((2, 3), dtype)}}
  with pytest.raises(TypeError, match=r"\['bad'\]\['leaf'\]"):
    sgperm_jax.sgperm().init(params)
  # with layout None the leaf is left alone
  tx = sgperm_jax.sgperm(layout={"ok": "neurons", "bad": {"leaf": None}})
  state = tx.init(params)
  grads = {"ok": jnp.ones(3), "bad": {"leaf": jnp.zeros((2, 3), dtype)}}
  updates, _ = tx.update(grads, state, params)
  assert updates["bad"]["leaf"].dtype == dtype


def test_update_needs_params():
  tx = sgperm_jax.sgperm()
  state = tx.init(jnp.ones(3))
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(3), state)


def test_layout_tree_must_match():
  params = _mlp_params()
  tx = sgperm_jax.sgperm(layout={"dense": "neurons"})
  with pytest.raises(ValueError, match="layout"):
    tx.init(params)


def test_centered_rows_keep_inactive_slots_and_sum_to_zero():
  from sgperm_jax._layout import center_rows  # pylint: disable=import-outside-toplevel
  r = jnp.array([[3., 0.], [1., jnp.nan], [0., 2.], [2., 4.]])
  out = np.asarray(center_rows(r, "neurons", active_only=True))
  np.testing.assert_array_equal(out[:, 0], [1., -1., 0., 0.])  # mean 2
  assert out[0, 1] == 0 and np.isnan(out[1, 1])  # inactive: unchanged
  np.testing.assert_array_equal(out[2:, 1], [-1., 1.])  # mean 3
  np.testing.assert_array_equal(center_rows(r, "whole", active_only=True),
                                r - jnp.where(jnp.isfinite(r) & (r != 0),
                                              2.4, 0.))
  assert center_rows(r, None, active_only=True) is r


@pytest.mark.parametrize("jit", [False, True])
def test_centered_recommendations_move_a_row_whose_slots_all_ask_one_way(jit):
  """A gradient of one sign everywhere: the paper's step finds no cycle (every
  slot asks for a smaller value); centered, the row still reorders, and
  stays a permutation of its values."""
  params = {"w": jnp.linspace(-1., 1., 16).reshape(16, 1)}
  grads = {"w": jnp.linspace(0.1, 1.6, 16).reshape(16, 1)}  # all > 0
  moved = []
  for center in (False, True):
    tx = sgperm_jax.sgperm(lamda0=1.0, alpha0=1.0,
                           center_recommendations=center)
    state = tx.init(params)
    update = jax.jit(tx.update) if jit else tx.update
    _, state = update(grads, state, params)
    exact = sgperm_jax.exact_params(params, state)
    _assert_row_permutation(exact, params)
    moved.append(bool(jnp.any(exact["w"] != params["w"])))
  assert moved == [False, True]


def test_center_recommendations_must_be_a_bool():
  with pytest.raises(TypeError, match="center_recommendations"):
    sgperm_jax.sgperm(center_recommendations="yes")
