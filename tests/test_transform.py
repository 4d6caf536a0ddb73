"""SGPerm as an optax transformation: descent, schedules, exactness, layouts,
bad input (the optax battery common to every transformation is in
test_battery.py)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgperm_jax
from tests import helpers


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


class TestSGPermInOptax(chex.TestCase):

  def test_descends_and_keeps_rows(self):
    params = _mlp_params()
    tx = sgperm_jax.sgperm(lamda0=0.5)
    state = tx.init(params)
    update = jax.jit(tx.update)
    grad = jax.jit(jax.grad(_loss))
    start = params
    for _ in range(15):
      grads = grad(params)
      updates, state = update(grads, state, params)
      params = optax.apply_updates(params, updates)
    exact = sgperm_jax.exact_params(params, state)
    helpers.assert_same_rows(exact, start)
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

    for _ in range(120):
      params, state = step(params, state)
    sizes = jax.jit(jax.vmap(lambda t: sgperm_jax.partition_size(
        sgperm_jax.partition_ratio(0.05, 1.05, 1.0)(t), 12, 2)))(
            jnp.arange(120))
    self.assertGreater(len(set(sizes.tolist())), 5)  # the size did change
    helpers.assert_same_rows(sgperm_jax.exact_params(params, state),
                             _mlp_params())

  def test_map_params(self):
    params = _mlp_params()
    tx = sgperm_jax.sgperm()
    state = tx.init(params)
    state = optax.tree.map_params(tx, lambda v: v, state)
    updates, _ = jax.eval_shape(tx.update, params, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)

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
    for _ in range(2):
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
    helpers.assert_same_rows(
        sgperm_jax.exact_params(optax.apply_updates(params, updates), state),
        params)


@jax.jit
def _drift(params, before, exact):
  """Slots that moved, whether every param is within 2 ulps of its exact
  weight, and the largest error (one program; ``params`` as the step
  rounded and returned them)."""
  moved, ok, worst = 0, True, 0.0
  for p, e, b in zip(jax.tree.leaves(params), jax.tree.leaves(exact),
                     jax.tree.leaves(before)):
    moved += jnp.sum(b != e)
    # p + (e - p) rounds at the scale of the larger of the old and the
    # new value of the slot; the error never builds up over steps.
    wide = jnp.float64 if p.dtype == jnp.float64 else jnp.float32
    scale = jnp.maximum(jnp.abs(e), jnp.abs(b)).astype(p.dtype)
    ulp = jnp.spacing(scale).astype(wide)
    err = jnp.abs(p.astype(wide) - e.astype(wide))
    ok &= jnp.all(err <= 2 * ulp)
    worst = jnp.maximum(worst, jnp.max(err).astype(jnp.float32))
  return moved, ok, worst


@pytest.mark.slow
@pytest.mark.parametrize("dtypes", [
    ("bfloat16", "float16", "float32"), ("float64",)],
                         ids=["narrow", "float64"])
def test_drift_stays_within_an_ulp_of_exact_params(dtypes):
  """Through optax.apply_updates, rounding never accumulates.

  See docs/algorithm.md §9. The narrow dtypes share one tree (one compiled
  step), a subtree each; every subtree is checked on its own.
  """
  with jax.enable_x64("float64" in dtypes):
    params = {name: _mlp_params(1, jnp.dtype(name)) for name in dtypes}
    start = params
    tx = sgperm_jax.sgperm(alpha0=1.0, lamda0=0.3, partition_size_min=3)
    state = tx.init(params)

    @jax.jit
    def step(params, state):
      updates, state = tx.update(jax.grad(_loss)(params), state, params)
      chex.assert_trees_all_equal_dtypes(updates, params)
      return optax.apply_updates(params, updates), state

    moved = dict.fromkeys(dtypes, 0)
    exact = sgperm_jax.exact_params(params, state)  # before step 0: params
    for _ in range(60):
      before = exact
      params, state = step(params, state)
      exact = sgperm_jax.exact_params(params, state)
      helpers.assert_same_rows(exact, start)
      for dtype in dtypes:
        for p, e in zip(jax.tree.leaves(params[dtype]),
                        jax.tree.leaves(exact[dtype])):
          assert p.dtype == e.dtype == jnp.dtype(dtype)
        # checked apart from the step, on the params as rounded to ``dtype``
        step_moved, ok, worst = _drift(params[dtype], before[dtype],
                                       exact[dtype])
        moved[dtype] += int(step_moved)
        assert bool(ok), (dtype, float(worst))
    assert all(m > 100 for m in moved.values()), moved


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


@pytest.mark.slow
def test_exact_params_inside_partition_and_chain():
  params = _mlp_params()
  labels = {"dense": {"kernel": "perm", "bias": "adam"},
            "conv": {"kernel": "perm"}}
  tx = optax.chain(
      optax.clip_by_global_norm(1e9),
      optax.partition({"perm": sgperm_jax.sgperm(lamda0=1.0, alpha0=1.0),
                       "adam": optax.adam(0.1)}, labels))
  state = tx.init(params)

  @jax.jit
  def step(p, state):
    updates, state = tx.update(jax.grad(_loss)(p), state, p)
    return optax.apply_updates(p, updates), state

  p = params
  for _ in range(5):
    p, state = step(p, state)
  exact = sgperm_jax.exact_params(p, state)
  helpers.assert_same_rows({"k": exact["dense"]["kernel"],
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
      helpers.assert_same_rows(e, p, "whole")
      # values may cross the neuron boundary: the rows are not kept
    else:
      helpers.assert_same_rows(e, p)
  if layout == "whole":
    k, e = params["dense"]["kernel"], exact["dense"]["kernel"]
    assert not helpers.same_rows(e, k)


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
  from sgperm_jax._layout import center_rows  # noqa: PLC0415 (lazy import)
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
    helpers.assert_same_rows(exact, params)
    moved.append(bool(jnp.any(exact["w"] != params["w"])))
  assert moved == [False, True]


def test_center_recommendations_must_be_a_bool():
  with pytest.raises(TypeError, match="center_recommendations"):
    sgperm_jax.sgperm(center_recommendations="yes")
