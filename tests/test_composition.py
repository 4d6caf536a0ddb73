"""Composing the permutation stage with optax: directions, chains, masks."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import sgperm_jax
from tests import helpers


def _problem():
  """A kernel and a bias, and a loss whose optimum reorders the kernel."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = {"kernel": jax.random.uniform(k1, (12, 3), minval=-1, maxval=1),
            "bias": jax.random.normal(k2, (3,))}
  target = jax.random.permutation(k3, params["kernel"], axis=0,
                                  independent=True)
  loss = lambda p: (jnp.sum((p["kernel"] - target) ** 2)
                    + jnp.sum(p["bias"] ** 2))
  return params, loss


def _train(tx, steps, params, loss):
  step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
  state = tx.init(params)
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  return params, state


def test_adam_direction_as_the_recommendation():
  params, loss = _problem()
  tx = optax.chain(optax.scale_by_adam(),
                   sgperm_jax.permute_by_recommendation(lamda0=1.0))
  trained, state = _train(tx, 15, params, loss)
  exact = sgperm_jax.exact_params(trained, state)
  assert helpers.same_rows(exact["kernel"], params["kernel"])
  assert float(loss(exact)) < 0.5 * float(loss(params))


def test_sgperm_is_its_chained_form():
  params, loss = _problem()
  hyper = dict(alpha0=0.3, lamda0=0.5, beta1=0.98, beta2=1.02, alpha_min=0.02,
               lamda_max=0.9, partition_size_min=4,
               include_partition_remainder=False, seed=3)
  alias = sgperm_jax.sgperm(momentum_lr=0.05, momentum=0.8, **hyper)
  chained = optax.chain(
      sgperm_jax.momentum_recommendation(momentum_lr=0.05, momentum=0.8),
      sgperm_jax.permute_by_recommendation(**hyper))
  a = _train(alias, 12, params, loss)
  b = _train(chained, 12, params, loss)
  chex.assert_trees_all_equal(a, b)
  exact = sgperm_jax.exact_params(*a)["kernel"]
  assert helpers.same_rows(exact, params["kernel"])
  assert bool(jnp.any(exact != params["kernel"]))


def test_anything_after_the_permutation_breaks_exactness():
  """The permutation must come last: a scale after it halves the move."""
  params, loss = _problem()
  tx = optax.chain(sgperm_jax.sgperm(lamda0=1.0, momentum_lr=1.0),
                   optax.scale(0.5))
  step = jax.jit(lambda p, s: tx.update(jax.grad(loss)(p), s, p))
  state = tx.init(params)
  updates, state = step(params, state)
  halfway = optax.apply_updates(params, updates)
  permuted = sgperm_jax.exact_params(halfway, state)["kernel"]
  assert bool(jnp.any(permuted != params["kernel"]))
  # The params land half-way between two permutations: not a permutation.
  np.testing.assert_allclose(halfway["kernel"],
                             (params["kernel"] + permuted) / 2, atol=1e-6)
  assert not helpers.same_rows(halfway["kernel"], params["kernel"])
  # Every member of a chain sees the original params, so the permutation
  # stage cannot notice, and the gap to the exact weights does not close.
  updates, state = step(halfway, state)
  after = optax.apply_updates(halfway, updates)
  assert not helpers.same_rows(after["kernel"], params["kernel"])
  gap = float(jnp.max(jnp.abs(after["kernel"] - sgperm_jax.exact_params(
      after, state)["kernel"])))
  assert gap > 1e-3


def test_partition_with_set_to_zero_keeps_other_leaves_fixed():
  params, loss = _problem()
  labels = {"kernel": "permute", "bias": "frozen"}
  tx = optax.partition({"permute": sgperm_jax.sgperm(lamda0=1.0),
                        "frozen": optax.set_to_zero()}, labels)
  trained, state = _train(tx, 6, params, loss)
  np.testing.assert_array_equal(trained["bias"], params["bias"])
  exact = sgperm_jax.exact_params(trained, state)
  assert helpers.same_rows(exact["kernel"], params["kernel"])
  assert bool(jnp.any(exact["kernel"] != params["kernel"]))
  np.testing.assert_array_equal(exact["bias"], params["bias"])


def test_masked_passes_raw_gradients_through():
  """The pitfall: optax.masked adds the raw gradient to unmasked leaves."""
  params, loss = _problem()
  tx = optax.masked(sgperm_jax.sgperm(lamda0=1.0),
                    {"kernel": True, "bias": False})
  state = tx.init(params)
  grads = jax.grad(loss)(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  trained = optax.apply_updates(params, updates)
  # Gradient *ascent* on the bias: the loss of the bias grows.
  np.testing.assert_allclose(trained["bias"], params["bias"] + grads["bias"])
  assert float(jnp.sum(trained["bias"] ** 2)) > float(
      jnp.sum(params["bias"] ** 2))
