"""Soak: thousands of jitted SGPerm steps on a small MLP stay exact and lean.

A 64-32-10 MLP trains on scikit-learn's bundled 8x8 digits for 2,000 steps of
one jitted train step called from Python, as a user's loop would. Along the
way and at the end:

* ``exact_params`` is a bit-exact per-row permutation of the initial weights;
* the params (``optax.apply_updates`` output) stay within two ulps of the
  exact weights (of the row's largest magnitude), so rounding never builds up;
* the step is traced once (no recompilation);
* the number of live device buffers does not grow after warm-up.
"""

from __future__ import annotations

import gc
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgperm_jax
from tests import helpers

STEPS = 2000
CHECK_AT = (1, 500, 1000, 1500, STEPS)
BATCH = 128


def _ulp(x: np.ndarray) -> np.ndarray:
  return np.spacing(np.abs(x).astype(np.float32))


def _init_params(key: jax.Array) -> dict[str, dict[str, jax.Array]]:
  def glorot(k, shape):
    limit = np.sqrt(6.0 / sum(shape))
    return jax.random.uniform(k, shape, jnp.float32, -limit, limit)
  k = jax.random.split(key, 4)
  return {
      "hidden": {"kernel": glorot(k[0], (64, 32)),
                 "bias": jax.random.uniform(k[1], (32,), jnp.float32, -.1, .1)},
      "out": {"kernel": glorot(k[2], (32, 10)),
              "bias": jax.random.uniform(k[3], (10,), jnp.float32, -.1, .1)},
  }


def _check_exact(initial: dict, params: dict, opt_state, when: int) -> int:
  """Checks both invariants; returns how many slots left their start."""
  exact = jax.tree.map(np.asarray, sgperm_jax.exact_params(params, opt_state))
  current = jax.tree.map(np.asarray, params)
  moved = 0
  for path, start in jax.tree_util.tree_flatten_with_path(initial)[0]:
    where = f"step {when}, {jax.tree_util.keystr(path)}"
    got = exact
    cur = current
    for key in path:
      got, cur = got[key.key], cur[key.key]
    assert got.dtype == start.dtype and got.shape == start.shape, where
    helpers.assert_same_rows(
        got, start, by_bits=True,
        err_msg=f"{where}: rows are no longer permutations of their start")
    row_max = np.max(np.abs(helpers.rows(start)), axis=1, keepdims=True)
    off = np.abs(helpers.rows(cur).astype(np.float64) - helpers.rows(got))
    assert np.all(off <= 2 * _ulp(row_max)), (
        f"{where}: params drifted {np.max(off / _ulp(row_max)):.1f} ulps from"
        " the exact weights")
    moved += int(np.sum(helpers.bits(got) != helpers.bits(start)))
  return moved


@pytest.mark.slow
def test_soak_two_thousand_steps():
  sklearn_datasets = pytest.importorskip("sklearn.datasets")
  images, labels = sklearn_datasets.load_digits(return_X_y=True)
  x = jnp.asarray(images / 16.0, jnp.float32)
  y = jnp.asarray(labels, jnp.int32)
  n = x.shape[0]

  def loss_fn(params, xb, yb):
    h = jax.nn.relu(xb @ params["hidden"]["kernel"]
                    + params["hidden"]["bias"][None])
    logits = h @ params["out"]["kernel"] + params["out"]["bias"][None]
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  tx = sgperm_jax.sgperm()  # the paper's defaults: random partitions

  @jax.jit
  @chex.assert_max_traces(n=1)
  def train_step(params, opt_state, step):
    idx = (step * BATCH + jnp.arange(BATCH)) % n
    loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = _init_params(jax.random.key(0))
  initial = jax.tree.map(np.asarray, params)
  opt_state = tx.init(params)
  losses = []
  moved = []
  baseline = None
  start = time.perf_counter()
  for step in range(1, STEPS + 1):
    params, opt_state, loss = train_step(params, opt_state, jnp.int32(step))
    losses.append(float(loss))
    if step == 20:  # warmed up: compiled, caches filled
      gc.collect()
      baseline = len(jax.live_arrays())
    if step in CHECK_AT:
      moved.append(_check_exact(initial, params, opt_state, step))
  elapsed = time.perf_counter() - start
  gc.collect()
  live = len(jax.live_arrays())
  assert live <= baseline, f"live buffers grew from {baseline} to {live}"
  assert all(m > 0 for m in moved[1:]), moved  # the weights did permute
  first, last = losses[0], np.mean(losses[-100:])
  assert last < 0.6 * first, (first, last)  # and it trained
  print(f"\n{STEPS} steps in {elapsed:.1f} s; loss {first:.3f} -> {last:.3f};"
        f" slots moved at checks {moved}; live buffers {baseline} -> {live}")
