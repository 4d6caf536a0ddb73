"""Switching optimizers: updates, warm state, exact handover, exact_params."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgperm_jax
from tests import helpers


def _params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"kernel": jax.random.normal(k1, (6, 4)),
          "bias": jax.random.normal(k2, (4,))}


def _grads(t):
  k1, k2 = jax.random.split(jax.random.key(100 + t))
  return {"kernel": jax.random.normal(k1, (6, 4)),
          "bias": jax.random.normal(k2, (4,))}


@pytest.mark.parametrize("warm_second", [True, False])
def test_first_then_second_with_warm_or_cold_state(warm_second):
  first, second = optax.sgd(0.1, momentum=0.9), optax.adam(0.05)
  n = 4
  tx = sgperm_jax.switch_after(first, second, n, warm_second=warm_second)
  params, state = _params(), tx.init(_params())
  s1, s2 = first.init(params), second.init(params)
  step, step1, step2 = (jax.jit(t.update) for t in (tx, first, second))
  # Compiled in different contexts, results may differ in the last bit.
  close = lambda a, b: chex.assert_trees_all_close(a, b, rtol=1e-6, atol=0)
  for t in range(10):
    grads = _grads(t)
    updates, state = step(grads, state, params)
    u1, s1_next = step1(grads, s1, params)
    u2, s2_next = step2(grads, s2, params)
    if t < n:
      close(updates, u1)
      s1 = s1_next
      if warm_second:
        s2 = s2_next
    else:
      close(updates, u2)
      s2 = s2_next
    close(state.first_state, s1)
    close(state.second_state, s2)
    assert bool(state.switched) == (t >= n)
    params = optax.apply_updates(params, updates)
  # Adam's step count tells warm from cold: it saw all 10 or only 6 steps.
  assert int(state.second_state[0].count) == (10 if warm_second else 6)


def test_sgperm_hands_its_exact_weights_over():
  """After SGPerm, the second optimizer starts from the exact weights."""
  params = jnp.array([1e8, 1.0, 2.0, -3.0])
  grads = [jnp.array([1.0, -1.0, 0.0, 0.0]), jnp.array([0.5, 0.0, 1.0, 0.0]),
           jnp.array([0.0, 0.0, 1.0, 2.0])]
  n = 1
  tx = sgperm_jax.switch_after(sgperm_jax.sgperm(alpha0=1.0, lamda0=1.0),
                               optax.sgd(0.1), n)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def train_step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  params, state = train_step(params, state, grads[0])
  # SGPerm swapped 1e8 and 1; the params lost the 1.0 to rounding.
  assert params.tolist() == [0.0, 1e8, 2.0, -3.0]
  assert sgperm_jax.exact_params(params, state).tolist() == [
      1.0, 1e8, 2.0, -3.0]
  params, state = train_step(params, state, grads[n])
  # SGD's first step starts from the exact weights [1, 1e8, 2, -3].
  np.testing.assert_allclose(params, [1.0 - 0.05, 1e8, 2.0 - 0.1, -3.0],
                             rtol=1e-7)
  # From now on the exact weights are the params (SGD has no exact state).
  chex.assert_trees_all_equal(sgperm_jax.exact_params(params, state), params)
  params, state = train_step(params, state, grads[n + 1])
  np.testing.assert_allclose(params, [0.95, 1e8, 1.8, -3.2], rtol=1e-6)
  chex.assert_trees_all_equal(sgperm_jax.exact_params(params, state), params)


def test_optax_conditional_transforms_are_not_exact():
  """optax's conditional transforms switch, but not from the exact weights."""
  sgperm = sgperm_jax.sgperm(alpha0=1.0, lamda0=1.0)
  composed = optax.chain(
      optax.conditionally_transform(sgperm, lambda step: step < 1),
      optax.conditionally_transform(optax.sgd(0.1), lambda step: step >= 1))
  params = jnp.array([1e8, 1.0])
  state = composed.init(params)
  step = jax.jit(composed.update)
  for g in (jnp.array([1.0, -1.0]), jnp.array([0.5, 0.0])):
    updates, state = step(g, state, params)
    params = optax.apply_updates(params, updates)
  # SGD started from the rounded [0, 1e8], not from [1, 1e8] ...
  np.testing.assert_allclose(params, [-0.05, 1e8], rtol=1e-7)
  # ... and exact_params hands back the frozen SGPerm weights.
  assert sgperm_jax.exact_params(params, state).tolist() == [1.0, 1e8]


def test_laperm_hands_its_synced_weights_over():
  initial = _params()
  n = 5
  tx = sgperm_jax.switch_after(
      sgperm_jax.laperm(optax.adam(0.2), sync_period=2), optax.adam(0.05), n)
  params, state = initial, tx.init(initial)
  step = jax.jit(tx.update)
  for t in range(n):
    updates, state = step(_grads(t), state, params)
    params = optax.apply_updates(params, updates)
  synced = sgperm_jax.exact_params(params, state)
  helpers.assert_same_rows(synced["kernel"], initial["kernel"])
  # Step n - 1 = 4 was not a sync: the free weights are not the synced ones.
  assert np.any(np.abs(params["kernel"] - synced["kernel"]) > 1e-3)
  adam = optax.adam(0.05)
  adam_state = state.second_state  # warm: it saw the first n gradients
  expected, _ = jax.jit(adam.update)(_grads(n), adam_state, synced)
  updates, state = step(_grads(n), state, params)
  chex.assert_trees_all_close(optax.apply_updates(params, updates),
                              optax.apply_updates(synced, expected),
                              rtol=1e-6)


def test_switch_to_a_permutation_with_a_cold_state():
  """Adam then SGPerm: SGPerm permutes the weights Adam left (cold state)."""
  initial = _params()
  n = 3
  tx = sgperm_jax.switch_after(optax.adam(0.1), sgperm_jax.sgperm(lamda0=1.0),
                               n, warm_second=False)
  params, state = initial, tx.init(initial)
  step = jax.jit(tx.update)
  for t in range(n + 5):
    updates, state = step(_grads(t), state, params)
    params = optax.apply_updates(params, updates)
    if t == n - 1:
      handed_over = params
  exact = sgperm_jax.exact_params(params, state)
  helpers.assert_same_rows(exact["kernel"], handed_over["kernel"])
  assert np.any(exact["kernel"] != handed_over["kernel"])


def test_inject_hyperparams_and_mixed_update_dtypes():
  params = {"w": jnp.ones((3, 2), jnp.bfloat16)}
  first = optax.sgd(0.5)  # bfloat16 updates
  second = optax.adam(0.1, mu_dtype=jnp.float32)  # float32 updates
  tx = optax.inject_hyperparams(sgperm_jax.switch_after)(
      first=first, second=second, switch_step=2)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(4):
    updates, state = step({"w": jnp.full((3, 2), 0.25, jnp.bfloat16)}, state,
                          params)
    params = optax.apply_updates(params, updates)
  assert updates["w"].dtype == jnp.float32  # both branches promoted
  assert params["w"].dtype == jnp.bfloat16
  assert int(state.inner_state.count) == 4
  assert bool(state.inner_state.switched)


def test_bad_arguments():
  with pytest.raises(ValueError, match="switch_step"):
    sgperm_jax.switch_after(optax.sgd(1.0), optax.adam(1.0), -1)
  with pytest.raises(TypeError, match="switch_step"):
    sgperm_jax.switch_after(optax.sgd(1.0), optax.adam(1.0), 2.5)
  with pytest.raises(TypeError, match="second"):
    sgperm_jax.switch_after(optax.sgd(1.0), "adam", 2)
  with pytest.raises(TypeError, match="warm_second"):
    sgperm_jax.switch_after(optax.sgd(1.0), optax.adam(1.0), 2,
                            warm_second=1)
  tx = sgperm_jax.switch_after(optax.sgd(1.0), optax.adam(1.0), 2)
  with pytest.raises(ValueError, match="params"):
    tx.update(jnp.ones(2), tx.init(jnp.ones(2)))
