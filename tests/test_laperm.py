"""LaPerm: exact synchronisation, schedules, jit, optax wrappers, accuracy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import sgperm_jax
from tests import helpers


def _synced(initial, current, spec="neurons"):
  """``sorted(initial_row)[rank(current_row)]``, ties stable, as rows."""
  bank = np.sort(helpers.rows(initial, spec, np.float64), axis=1)
  cur = helpers.rows(current, spec, np.float64)
  out = np.empty_like(bank)
  for j in range(cur.shape[0]):
    out[j, np.argsort(cur[j], kind="stable")] = bank[j]
  return out


def _params(dtype, key=0):
  # NumPy draws: eager jax.random compiles a program per shape and dtype.
  rng = np.random.default_rng(key)
  normal = lambda *shape: jnp.asarray(
      rng.standard_normal(shape, np.float32), dtype)
  return {"dense": {"kernel": normal(7, 5), "bias": normal(5)},
          "conv": {"kernel": normal(3, 3, 2, 4)}}


def _grads(params, key):
  rng = np.random.default_rng(1000 + key)  # NumPy, as in _params
  return jax.tree.map(lambda p: jnp.asarray(
      rng.standard_normal(p.shape, np.float32), p.dtype), params)


@pytest.mark.slow
def test_every_sync_is_an_exact_permutation_through_apply_updates():
  """At every sync each row holds exactly its initial values (bit for bit),
  in float32 and bfloat16 (one tree, so that the step compiles once)."""
  initial = {"f32": _params(jnp.float32), "bf16": _params(jnp.bfloat16, 1)}
  period = 4
  inner = optax.adam(0.3)
  tx = sgperm_jax.laperm(inner, period, skip_vectors=False,
                         center_updates=False)  # updates pass through

  @jax.jit
  def step(params, state, inner_state, grads):
    updates, state = tx.update(grads, state, params)
    # Adam's updates do not depend on params: the free weights are known.
    inner_updates, inner_state = inner.update(grads, inner_state, params)
    free = optax.apply_updates(params, inner_updates)
    params = optax.apply_updates(params, updates)
    exact = sgperm_jax.exact_params(params, state)
    return params, state, inner_state, free, exact, updates, inner_updates

  params, state, inner_state = initial, tx.init(initial), inner.init(initial)
  syncs = 0
  for t in range(24):
    grads = {k: _grads(v, t) for k, v in params.items()}
    params, state, inner_state, free, exact, updates, inner_updates = step(
        params, state, inner_state, grads)
    chex.assert_trees_all_equal_dtypes(exact, params)
    if (t + 1) % period:
      chex.assert_trees_all_equal(updates, inner_updates)
      continue
    syncs += 1
    for kind, dtype in (("f32", jnp.float32), ("bf16", jnp.bfloat16)):
      for name in ("dense", "conv"):
        for leaf in initial[kind][name]:
          start = initial[kind][name][leaf]
          e, p = exact[kind][name][leaf], params[kind][name][leaf]
          assert e.dtype == dtype
          helpers.assert_same_rows(e, start)
          e_rows = helpers.rows(e, dtype=np.float64)
          # The synced view is the definition, computed independently.
          np.testing.assert_array_equal(e_rows, _synced(start, p))
          # Params are the synced weights up to apply_updates' rounding.
          scale = np.max(np.abs(np.asarray(start, np.float64)))
          np.testing.assert_allclose(
              helpers.rows(p, dtype=np.float64), e_rows, rtol=0,
              atol=scale * float(jnp.finfo(dtype).eps) * 4)
          if dtype == jnp.float32:
            # The sync followed the ranks of the freely trained weights.
            np.testing.assert_array_equal(
                e_rows, _synced(start, free[kind][name][leaf]))
  assert syncs == 6
  for kind in ("f32", "bf16"):
    moved = np.mean(np.asarray(exact[kind]["conv"]["kernel"], np.float32)
                    != np.asarray(initial[kind]["conv"]["kernel"],
                                  np.float32))
    assert moved > 0.5, kind


def test_sync_is_computed_from_values_not_deltas():
  """Rounding in apply_updates is repaired, never accumulated."""
  params = jnp.array([1e8, 1.0, 2.0, 3.0])
  tx = sgperm_jax.laperm(optax.sgd(1.0), sync_period=1, skip_vectors=False)
  state = tx.init(params)
  update = jax.jit(tx.update)  # one compilation, not one per eager op
  updates, state = update(jnp.array([2e8, -2e8, 0., 0.]), state, params)
  params = optax.apply_updates(params, updates)
  # Slot 0 should hold 1.0, but 1e8 + (1 - 1e8) is 0 in float32.
  assert params.tolist() == [0.0, 1e8, 2.0, 3.0]
  assert sgperm_jax.exact_params(params, state).tolist() == [1.0, 1e8, 2., 3.]
  # The next sync gathers the values again from the bank: exact once more.
  updates, state = update(jnp.zeros(4), state, params)
  params = optax.apply_updates(params, updates)
  assert params.tolist() == [1.0, 1e8, 2.0, 3.0]


def test_exact_params_is_the_synced_view_at_any_time():
  initial = _params(jnp.float32)
  tx = optax.chain(optax.clip_by_global_norm(10.0),
                   sgperm_jax.laperm(optax.adam(0.1), sync_period=50))
  params, state = initial, tx.init(initial)
  exact_params = jax.jit(sgperm_jax.exact_params)  # compiles once
  chex.assert_trees_all_equal(exact_params(params, state), params)
  step = jax.jit(tx.update)
  for t in range(7):  # no sync yet: free weights
    updates, state = step(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  exact = exact_params(params, state)
  kernel = params["dense"]["kernel"]
  assert np.any(np.asarray(kernel) != np.asarray(initial["dense"]["kernel"]))
  np.testing.assert_array_equal(
      helpers.rows(exact["dense"]["kernel"], dtype=np.float64),
      _synced(initial["dense"]["kernel"], kernel))
  np.testing.assert_array_equal(
      helpers.rows(exact["conv"]["kernel"], dtype=np.float64),
      _synced(initial["conv"]["kernel"], params["conv"]["kernel"]))
  # Vectors are skipped by default: the bias is the free bias.
  np.testing.assert_array_equal(exact["dense"]["bias"],
                                params["dense"]["bias"])


def test_skipped_leaves_train_exactly_like_the_inner_optimizer():
  initial = _params(jnp.float32)
  layout = {"dense": {"kernel": None, "bias": "neurons"},
            "conv": {"kernel": "whole"}}
  tx = sgperm_jax.laperm(optax.adam(0.1), 3, layout=layout)
  inner = optax.adam(0.1)
  params, state = initial, tx.init(initial)
  ref, ref_state = initial, inner.init(initial)
  update, ref_update = jax.jit(tx.update), jax.jit(inner.update)
  for t in range(9):
    grads = _grads(params, t)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    ref_updates, ref_state = ref_update(grads, ref_state, ref)
    ref = optax.apply_updates(ref, ref_updates)
  # The kernel (layout None) and the bias (a vector, skip_vectors) are free.
  np.testing.assert_array_equal(params["dense"]["kernel"],
                                ref["dense"]["kernel"])
  np.testing.assert_array_equal(params["dense"]["bias"], ref["dense"]["bias"])
  assert isinstance(state.bank["dense"]["bias"], optax.MaskedNode)
  # The conv kernel is one row ("whole"): a permutation of all its values.
  exact = sgperm_jax.exact_params(params, state)["conv"]["kernel"]
  helpers.assert_same_rows(exact, initial["conv"]["kernel"], "whole")
  np.testing.assert_array_equal(
      helpers.rows(exact, "whole", np.float64),
      _synced(initial["conv"]["kernel"], params["conv"]["kernel"], "whole"))


def test_inside_optax_partition():
  initial = _params(jnp.float32)
  labels = {"dense": {"kernel": "laperm", "bias": "sgd"},
            "conv": {"kernel": "sgd"}}
  tx = optax.partition({"laperm": sgperm_jax.laperm(optax.adam(0.2), 2),
                        "sgd": optax.sgd(0.1)}, labels)
  params, state = initial, tx.init(initial)
  step = jax.jit(tx.update)
  for t in range(4):
    updates, state = step(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  exact = sgperm_jax.exact_params(params, state)
  np.testing.assert_array_equal(
      helpers.rows(exact["dense"]["kernel"], dtype=np.float64),
      _synced(initial["dense"]["kernel"], params["dense"]["kernel"]))
  assert np.any(exact["dense"]["kernel"] != initial["dense"]["kernel"])
  np.testing.assert_array_equal(exact["conv"]["kernel"],
                                params["conv"]["kernel"])


def test_vectors_are_synced_when_asked():
  params = {"b": jnp.array([0.5, -1.0, 2.0])}
  tx = sgperm_jax.laperm(optax.sgd(1.0), 1, skip_vectors=False)
  state = tx.init(params)
  updates, state = tx.update({"b": jnp.array([-1.0, 0.0, 4.0])}, state, params)
  # free weights [1.5, -1, -2]: ranks [2, 1, 0]
  assert optax.apply_updates(params, updates)["b"].tolist() == [2.0, 0.5, -1.0]


def test_sync_period_schedule():
  schedule = lambda count: jnp.where(count < 10, 2, 5)
  tx = sgperm_jax.laperm(optax.sgd(0.1), schedule, skip_vectors=False)
  params = jnp.linspace(-1.0, 1.0, 6)
  state = tx.init(params)
  step = jax.jit(tx.update)
  synced_after = []
  for t in range(30):
    updates, state = step(jnp.sin(jnp.arange(6.0) * (t + 1)), state, params)
    params = optax.apply_updates(params, updates)
    if int(state.steps_since_sync) == 0:
      synced_after.append(t + 1)
  # Period 2 for counts 0..9, then 5 steps after the last sync.
  assert synced_after == [2, 4, 6, 8, 10, 15, 20, 25, 30]


@pytest.mark.slow
def test_one_trace_for_a_whole_run():
  initial = _params(jnp.float32)
  tx = sgperm_jax.laperm(optax.adam(0.1), 3)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def train_step(params, state, key):
    grads = jax.tree.map(lambda p: jax.random.normal(key, p.shape), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = initial, tx.init(initial)
  for t in range(25):
    params, state = train_step(params, state, jax.random.key(t))
  assert int(state.count) == 25 and int(state.steps_since_sync) == 1


@pytest.mark.slow
def test_inject_hyperparams_matches_direct_use():
  initial = _params(jnp.float32)
  direct = sgperm_jax.laperm(optax.adam(0.1), 3)
  injected = optax.inject_hyperparams(sgperm_jax.laperm)(
      inner=optax.adam(0.1), sync_period=3)
  kernels = lambda p: jax.tree.map(
      lambda x: "neurons" if x.ndim > 1 else None, p)
  with_callable_layout = optax.inject_hyperparams(
      sgperm_jax.laperm, static_args=("layout",))(
          optax.adam(0.1), sync_period=lambda count: 3, layout=kernels)
  results = []
  for tx in (direct, injected, with_callable_layout):
    params, state = initial, tx.init(initial)
    step = jax.jit(tx.update)
    for t in range(7):
      updates, state = step(_grads(params, t), state, params)
      params = optax.apply_updates(params, updates)
    results.append((params, sgperm_jax.exact_params(params, state)))
  chex.assert_trees_all_equal(results[0], results[1])
  chex.assert_trees_all_equal(results[0], results[2])


def test_init_needs_only_shapes():
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                        _params(jnp.bfloat16))
  tx = sgperm_jax.laperm(optax.adam(1e-3))
  state = tx.init(shapes)
  assert state.bank["conv"]["kernel"].shape == (3, 3, 2, 4)
  abstract = jax.eval_shape(tx.init, shapes)
  assert abstract.bank["dense"]["kernel"].dtype == jnp.bfloat16


def test_updates_keep_dtypes_and_accept_extra_args():
  params = _params(jnp.bfloat16)
  tx = sgperm_jax.laperm(optax.adam(0.1), 1)
  updates, _ = jax.jit(tx.update)(_grads(params, 0), tx.init(params),
                                  params, unknown_argument=1.0)
  chex.assert_trees_all_equal_dtypes(updates, params)


@pytest.mark.slow
def test_works_in_flax_nnx_optimizer():
  from flax import nnx  # noqa: PLC0415 (lazy import)
  model = nnx.Sequential(nnx.Linear(8, 6, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(6, 3, rngs=nnx.Rngs(1)))
  initial = jnp.array(model.layers[0].kernel[...])
  optimizer = nnx.Optimizer(model, sgperm_jax.laperm(optax.adam(0.05), 4),
                            wrt=nnx.Param)
  x = jax.random.normal(jax.random.key(0), (16, 8))
  y = jax.random.randint(jax.random.key(1), (16,), 0, 3)

  @nnx.jit
  def train_step(model, optimizer):
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(
        m(x), y).mean()
    optimizer.update(model, nnx.grad(loss)(model))

  for _ in range(8):
    train_step(model, optimizer)
  exact = jax.jit(sgperm_jax.exact_params)(nnx.state(model, nnx.Param),
                                           optimizer.opt_state)
  kernel = exact["layers"][0]["kernel"]
  helpers.assert_same_rows(kernel, initial)
  assert np.any(np.asarray(kernel) != np.asarray(initial))


def test_bad_arguments():
  with pytest.raises(ValueError, match="sync_period"):
    sgperm_jax.laperm(optax.adam(1e-3), 0)
  with pytest.raises(TypeError, match="sync_period"):
    sgperm_jax.laperm(optax.adam(1e-3), 2.5)
  with pytest.raises(TypeError, match="inner"):
    sgperm_jax.laperm(0.001)
  with pytest.raises(ValueError, match="layout"):
    sgperm_jax.laperm(optax.adam(1e-3), layout="rows")
  with pytest.raises(TypeError, match="skip_vectors"):
    sgperm_jax.laperm(optax.adam(1e-3), skip_vectors="yes")
  tx = sgperm_jax.laperm(optax.adam(1e-3))
  with pytest.raises(TypeError, match="int32"):
    tx.init({"w": jnp.zeros((3, 2), jnp.int32)})
  params = {"w": jnp.zeros((3, 2))}
  with pytest.raises(ValueError, match="params"):
    tx.update(params, tx.init(params))


# --- Accuracy on scikit-learn's 8x8 digits ---------------------------------

_HIDDEN, _EPOCHS, _BATCH, _SEEDS = 256, 200, 64, 8


def _digits():
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  return tuple(map(jnp.asarray, train_test_split(
      x, y, test_size=0.25, random_state=0, stratify=y)))


def _mlp_init(seed):
  """LeCun-normal kernels (std ``1/sqrt(fan_in)``), zero biases."""
  rng = np.random.default_rng(1000 + seed)
  return {"l1": {"kernel": rng.normal(0, 64 ** -0.5, (64, _HIDDEN)),
                 "bias": np.zeros(_HIDDEN)},
          "l2": {"kernel": rng.normal(0, _HIDDEN ** -0.5, (_HIDDEN, 10)),
                 "bias": np.zeros(10)}}


def _mlp(params, x):
  h = jax.nn.relu(x @ params["l1"]["kernel"] + params["l1"]["bias"][None])
  return h @ params["l2"]["kernel"] + params["l2"]["bias"][None]


def digits_accuracy(tx, exact, data):
  """Test accuracy (%) per seed of a 64-256-10 MLP trained with ``tx``."""
  x_train = data[0]
  per_epoch = x_train.shape[0] // _BATCH
  orders = np.stack([np.concatenate([
      rng.permutation(x_train.shape[0])[:per_epoch * _BATCH]
      for _ in range(_EPOCHS)]).reshape(-1, _BATCH)
                     for rng in map(np.random.default_rng, range(_SEEDS))])

  initial = jax.tree.map(lambda *leaves: jnp.asarray(np.stack(leaves),
                                                      jnp.float32),
                         *map(_mlp_init, range(_SEEDS)))

  def run(initial, order, data):
    x_train, x_test, y_train, y_test = data

    def step(carry, batch):
      params, state = carry
      loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
          _mlp(p, x_train[batch]), y_train[batch]).mean()
      updates, state = tx.update(jax.grad(loss)(params), state, params)
      return (optax.apply_updates(params, updates), state), None

    (params, state), _ = jax.lax.scan(step, (initial, tx.init(initial)),
                                      order)
    if exact:
      params = sgperm_jax.exact_params(params, state)
    accuracy = jnp.mean(jnp.argmax(_mlp(params, x_test), -1) == y_test)
    return 100 * accuracy, (params, initial)

  return jax.jit(jax.vmap(run, in_axes=(0, 0, None)))(
      initial, jnp.asarray(orders), data)


@pytest.mark.slow
def test_laperm_adam_within_one_point_of_adam_on_digits():
  data = _digits()
  adam, _ = digits_accuracy(optax.adam(1e-3), False, data)
  laperm, (trained, initial) = digits_accuracy(
      sgperm_jax.laperm(optax.adam(1e-3)), True, data)
  print(f"\ndigits, 64-{_HIDDEN}-10 MLP, {_EPOCHS} epochs, {_SEEDS} seeds:"
        f" adam {np.mean(adam):.2f} ± {np.std(adam):.2f},"
        f" laperm(adam) {np.mean(laperm):.2f} ± {np.std(laperm):.2f}")
  assert np.mean(adam) > 95.0
  assert np.mean(laperm) > np.mean(adam) - 1.0
  # The evaluated weights are the initial ones, reconnected.
  for layer in ("l1", "l2"):
    k, k0 = trained[layer]["kernel"], initial[layer]["kernel"]
    np.testing.assert_array_equal(jnp.sort(k, axis=1), jnp.sort(k0, axis=1))
    assert np.mean(np.asarray(k != k0)) > 0.5


@pytest.mark.parametrize("center", [True, False])
def test_centered_updates_keep_each_free_row_sum(center):
  """Between syncs, centered inner updates keep every synced row's sum (the
  sum a synchronisation restores); the paper's rule lets it drift."""
  rng = np.random.default_rng(5)
  params = {"w": jnp.asarray(rng.standard_normal((6, 4), np.float32)),
            "b": jnp.zeros(4)}
  x = jnp.asarray(rng.standard_normal((8, 6), np.float32))
  loss = lambda p: jnp.sum((jnp.tanh(x @ p["w"] + p["b"][None]) - 0.5) ** 2)
  tx = sgperm_jax.laperm(optax.adam(0.05), sync_period=100,
                         center_updates=center)
  state = tx.init(params)
  step = jax.jit(lambda p, s: (lambda u, s: (optax.apply_updates(p, u), s))(
      *tx.update(jax.grad(loss)(p), s, p)))
  p = params
  for _ in range(10):
    p, state = step(p, state)
  drift = np.abs(np.asarray(p["w"].sum(0) - params["w"].sum(0)))
  if center:
    assert drift.max() < 1e-5
  else:
    assert drift.max() > 1e-2
  assert bool(jnp.any(p["b"] != 0))  # vectors are trained freely either way
