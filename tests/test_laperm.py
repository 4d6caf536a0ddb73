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


def _rows(x, spec="neurons"):
  """Independent NumPy view of a leaf as rows (SPEC §1), in float64."""
  x = np.asarray(x, np.float64)
  if spec == "whole" or x.ndim == 1:
    return x.reshape(1, -1)
  return x.reshape(-1, x.shape[-1]).T


def _synced(initial, current, spec="neurons"):
  """``sorted(initial_row)[rank(current_row)]``, ties stable, as rows."""
  bank = np.sort(_rows(initial, spec), axis=1)
  cur = _rows(current, spec)
  out = np.empty_like(bank)
  for j in range(cur.shape[0]):
    out[j, np.argsort(cur[j], kind="stable")] = bank[j]
  return out


def _params(dtype, key=0):
  k1, k2, k3 = jax.random.split(jax.random.key(key), 3)
  return {"dense": {"kernel": jax.random.normal(k1, (7, 5), dtype),
                    "bias": jax.random.normal(k2, (5,), dtype)},
          "conv": {"kernel": jax.random.normal(k3, (3, 3, 2, 4), dtype)}}


def _grads(params, key):
  keys = jax.random.split(jax.random.key(key), 3)
  leaves, treedef = jax.tree.flatten(params)
  return jax.tree.unflatten(treedef, [
      jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves)])


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_every_sync_is_an_exact_permutation_through_apply_updates(dtype):
  """At every sync each row holds exactly its initial values (bit for bit)."""
  initial = _params(dtype)
  period = 4
  inner = optax.adam(0.3)
  tx = sgperm_jax.laperm(inner, period, skip_vectors=False,
                         center_updates=False)  # updates pass through

  @jax.jit
  def step(params, state, inner_state, t):
    grads = _grads(params, t)
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
    params, state, inner_state, free, exact, updates, inner_updates = step(
        params, state, inner_state, t)
    chex.assert_trees_all_equal_dtypes(exact, params)
    if (t + 1) % period:
      chex.assert_trees_all_equal(updates, inner_updates)
      continue
    syncs += 1
    for name in ("dense", "conv"):
      for leaf in initial[name]:
        e, p = exact[name][leaf], params[name][leaf]
        np.testing.assert_array_equal(
            np.sort(_rows(e), 1), np.sort(_rows(initial[name][leaf]), 1))
        # The synced view is the definition, computed independently.
        np.testing.assert_array_equal(
            _rows(e), _synced(initial[name][leaf], p))
        # Params are the synced weights up to apply_updates' rounding.
        scale = np.max(np.abs(_rows(initial[name][leaf])))
        np.testing.assert_allclose(
            _rows(p), _rows(e), rtol=0,
            atol=scale * float(jnp.finfo(dtype).eps) * 4)
        if dtype == jnp.float32:
          # The sync followed the ranks of the freely trained weights.
          np.testing.assert_array_equal(
              _rows(e), _synced(initial[name][leaf], free[name][leaf]))
  assert syncs == 6
  moved = np.mean(np.asarray(exact["conv"]["kernel"], np.float32)
                  != np.asarray(initial["conv"]["kernel"], np.float32))
  assert moved > 0.5


def test_sync_is_computed_from_values_not_deltas():
  """Rounding in apply_updates is repaired, never accumulated."""
  params = jnp.array([1e8, 1.0, 2.0, 3.0])
  tx = sgperm_jax.laperm(optax.sgd(1.0), sync_period=1, skip_vectors=False)
  state = tx.init(params)
  updates, state = tx.update(jnp.array([2e8, -2e8, 0., 0.]), state, params)
  params = optax.apply_updates(params, updates)
  # Slot 0 should hold 1.0, but 1e8 + (1 - 1e8) is 0 in float32.
  assert params.tolist() == [0.0, 1e8, 2.0, 3.0]
  assert sgperm_jax.exact_params(params, state).tolist() == [1.0, 1e8, 2., 3.]
  # The next sync gathers the values again from the bank: exact once more.
  updates, state = tx.update(jnp.zeros(4), state, params)
  params = optax.apply_updates(params, updates)
  assert params.tolist() == [1.0, 1e8, 2.0, 3.0]


def test_exact_params_is_the_synced_view_at_any_time():
  initial = _params(jnp.float32)
  tx = optax.chain(optax.clip_by_global_norm(10.0),
                   sgperm_jax.laperm(optax.adam(0.1), sync_period=50))
  params, state = initial, tx.init(initial)
  chex.assert_trees_all_equal(sgperm_jax.exact_params(params, state), params)
  step = jax.jit(tx.update)
  for t in range(7):  # no sync yet: free weights
    updates, state = step(_grads(params, t), state, params)
    params = optax.apply_updates(params, updates)
  exact = sgperm_jax.exact_params(params, state)
  kernel = params["dense"]["kernel"]
  assert np.any(np.asarray(kernel) != np.asarray(initial["dense"]["kernel"]))
  np.testing.assert_array_equal(
      _rows(exact["dense"]["kernel"]),
      _synced(initial["dense"]["kernel"], kernel))
  np.testing.assert_array_equal(
      _rows(exact["conv"]["kernel"]),
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
  for t in range(9):
    grads = _grads(params, t)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    ref_updates, ref_state = inner.update(grads, ref_state, ref)
    ref = optax.apply_updates(ref, ref_updates)
  # The kernel (layout None) and the bias (a vector, skip_vectors) are free.
  np.testing.assert_array_equal(params["dense"]["kernel"],
                                ref["dense"]["kernel"])
  np.testing.assert_array_equal(params["dense"]["bias"], ref["dense"]["bias"])
  assert isinstance(state.bank["dense"]["bias"], optax.MaskedNode)
  # The conv kernel is one row ("whole"): a permutation of all its values.
  exact = sgperm_jax.exact_params(params, state)["conv"]["kernel"]
  np.testing.assert_array_equal(
      np.sort(np.ravel(exact)), np.sort(np.ravel(initial["conv"]["kernel"])))
  np.testing.assert_array_equal(
      _rows(exact, "whole"),
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
      _rows(exact["dense"]["kernel"]),
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
  updates, _ = tx.update(_grads(params, 0), tx.init(params), params,
                         unknown_argument=1.0)
  chex.assert_trees_all_equal_dtypes(updates, params)


def test_works_in_flax_nnx_optimizer():
  from flax import nnx  # pylint: disable=import-outside-toplevel
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
  exact = sgperm_jax.exact_params(nnx.state(model, nnx.Param),
                                  optimizer.opt_state)
  kernel = exact["layers"][0]["kernel"]
  np.testing.assert_array_equal(np.sort(kernel, 0), np.sort(initial, 0))
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
  k1, k2 = jax.random.split(jax.random.key(5))
  params = {"w": jax.random.normal(k1, (6, 4)), "b": jnp.zeros(4)}
  x = jax.random.normal(k2, (8, 6))
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
