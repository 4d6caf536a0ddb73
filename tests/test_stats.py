"""Permutation statistics (``track_stats``) against counts made by hand.

The hand counts follow the definitions of docs/algorithm.md §13, written
here in NumPy on the exact weights before and after a step (values distinct
within a row, so the permutation can be read off the values), and against
the cycles the public stages find.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgperm_jax
from sgperm_jax import _stats
from sgperm_jax import plotting
from tests import helpers


def _hand_counts(before, after, layout="neurons"):
  """moved, displacements and cycle lengths of one leaf, by hand."""
  moved, displacement, cycles = 0, [], []
  for b, a in zip(helpers.rows(before, layout), helpers.rows(after, layout)):
    ordered = np.sort(b)
    rank_a = np.searchsorted(ordered, a, side="left")
    rank_b = np.searchsorted(ordered, b, side="left")
    displacement += np.abs(rank_a - rank_b).tolist()
    moved += int(np.sum(a != b))
    came_from = {float(v): i for i, v in enumerate(b)}  # distinct values
    source = [came_from[float(v)] for v in a]
    seen = set()
    for start in range(len(a)):
      if start in seen or source[start] == start:
        continue
      length, j = 0, start
      while j not in seen:
        seen.add(j)
        length += 1
        j = source[j]
      cycles.append(length)
  return moved, np.asarray(displacement), cycles


def _assert_moves(stats, before, after, layout="neurons"):
  moved, displacement, cycles = _hand_counts(before, after, layout)
  size = np.size(before)
  assert float(stats.moved_fraction) == pytest.approx(moved / size)
  assert float(stats.mean_displacement) == pytest.approx(displacement.mean())
  assert int(stats.max_displacement) == displacement.max()
  assert int(stats.cycles) == len(cycles)
  assert float(stats.mean_cycle_length) == pytest.approx(
      np.mean(cycles) if cycles else 0.0)


def _distinct_params(seed=0):
  rng = np.random.default_rng(seed)
  values = rng.permutation(240).astype(np.float32) / 100 - 1.2
  return {"kernel": jnp.asarray(values[:180].reshape(15, 12)),
          "conv": jnp.asarray(values[180:228].reshape(2, 2, 3, 4)),
          "bias": jnp.asarray(values[228:]), "scale": jnp.float32(0.5)}


def _grads(p):
  return jax.tree.map(lambda x: jnp.sin(7 * x) - 0.1, p)


def test_sgperm_stats_match_hand_counts():
  hp = dict(alpha0=0.6, lamda0=0.4, beta1=0.9, beta2=1.1, alpha_min=0.0,
            lamda_max=1.0, partition_size_min=3)
  tx = sgperm_jax.sgperm(**hp, layout={"kernel": "neurons", "conv": "whole",
                                       "bias": "neurons", "scale": None},
                         track_stats=True)
  params = _distinct_params()
  state = tx.init(params)
  assert sgperm_jax.permutation_stats(state) == dict.fromkeys(params)
  update = jax.jit(tx.update)
  alpha = sgperm_jax.aggressiveness(0.6, 0.9, 0.0)
  lamda = sgperm_jax.partition_ratio(0.4, 1.1, 1.0)
  before = params
  layouts = {"kernel": "neurons", "conv": "whole", "bias": "neurons"}
  lengths = {"kernel": 15, "conv": 48, "bias": 12}
  for step in range(3):
    updates, state = update(_grads(before), state, params)
    params = optax.apply_updates(params, updates)
    after = sgperm_jax.exact_params(params, state)
    stats = sgperm_jax.permutation_stats(state)
    assert stats["scale"] is None
    for name, layout in layouts.items():
      s = stats[name]
      _assert_moves(s, before[name], after[name], layout)
      assert int(s.step) == step + 1
      assert float(s.alpha) == pytest.approx(float(alpha(step)))
      assert float(s.lamda) == pytest.approx(float(lamda(step)))
      assert int(s.partition_size) == int(sgperm_jax.partition_size(
          lamda(step), lengths[name], 3))
    assert any(float(stats[k].moved_fraction) > 0 for k in layouts)
    before = after


@jax.jit(static_argnames=("at", "leaves"))
def _step_stats(before, after, at=0, leaves=1):
  """The stats of one leaf's step, as leaf ``at`` of ``leaves``."""
  return _stats.step_stats(4, [before], [after], ["neurons"], [at], leaves,
                           jnp.array([7]), 0.1, 0.2)


def test_cycles_are_those_the_stages_found():
  rng = np.random.default_rng(5)
  w = rng.permutation(40).astype(np.float32)
  step = plotting.one_step(w, rng.normal(size=40).astype(np.float32),
                           alpha=0.5, lamda=0.5, partition_size_min=4)
  stats = _step_stats(jnp.asarray(step.before), jnp.asarray(step.after))
  lengths = [len(c) for c in step.cycles()]
  assert len(lengths) >= 2
  assert int(stats.cycles[0]) == len(lengths)
  assert float(stats.mean_cycle_length[0]) == pytest.approx(np.mean(lengths))
  assert float(stats.moved_fraction[0]) == pytest.approx(sum(lengths) / 40)


def test_equal_values_pair_in_order_and_zeros_of_either_sign_stay():
  nan = np.float32(np.nan)
  before = jnp.array([[2., 2., 1., 0., -0., nan, 3.]], jnp.float32).T
  after = jnp.array([[1., 2., 2., -0., 0., nan, 3.]], jnp.float32).T
  s = _step_stats(before, after, at=1, leaves=3)
  # Slot 1 keeps its 2; the 2 of slot 0 and the 1 of slot 2 swap: one cycle.
  # Ranks: 1 -> 2 (two values below), 2 -> 3, so each moves by one rank.
  assert s.step.tolist() == [-1, 4, -1]
  assert float(s.moved_fraction[1]) == pytest.approx(2 / 7)
  assert float(s.mean_displacement[1]) == pytest.approx(2 / 7)
  assert int(s.max_displacement[1]) == 1
  assert int(s.cycles[1]) == 1
  assert float(s.mean_cycle_length[1]) == 2.0
  assert np.isnan(float(s.moved_fraction[0]))  # not a permuted leaf


@pytest.mark.slow
def test_laperm_sync_stats_match_hand_counts():
  inner = optax.adam(0.05)
  tx = sgperm_jax.laperm(inner, sync_period=2, center_updates=False,
                         track_stats=True)
  params = _distinct_params(1)
  state = tx.init(params)
  inner_state = inner.init(params)
  update = jax.jit(tx.update)
  synced_before = params
  for step in range(4):
    grads = _grads(params)
    moves, inner_state = inner.update(grads, inner_state, params)
    free = optax.apply_updates(params, moves)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    stats = sgperm_jax.permutation_stats(state)
    assert stats["bias"] is None and stats["scale"] is None  # not synced
    if step % 2 == 0:
      assert all(s is None or int(s.step) == step for s in stats.values())
      continue
    synced = sgperm_jax.exact_params(params, state)
    for name in ("kernel", "conv"):
      s = stats[name]
      assert int(s.step) == step + 1 and int(s.sync_period) == 2
      _assert_moves(s, synced_before[name], synced[name])
      gap = np.asarray(free[name], np.float64) - np.asarray(synced[name])
      want = np.linalg.norm(gap) / np.linalg.norm(np.asarray(synced[name]))
      assert float(s.free_distance) == pytest.approx(want, rel=1e-4)
    synced_before = synced


@pytest.mark.slow
def test_stats_are_found_inside_partition_and_switch_after():
  params = _distinct_params()
  labels = {"kernel": "perm", "conv": "perm", "bias": "adam",
            "scale": "adam"}
  tx = optax.partition({"perm": sgperm_jax.sgperm(lamda0=0.5,
                                                  track_stats=True),
                        "adam": optax.adam(1e-2)}, labels)
  tx = sgperm_jax.switch_after(tx, optax.adam(1e-2), 1)
  state = tx.init(params)
  update = jax.jit(tx.update)
  updates, state = update(_grads(params), state, params)
  stats = sgperm_jax.permutation_stats(state)
  assert stats["bias"] is None and stats["scale"] is None
  assert int(stats["kernel"].step) == 1
  params = optax.apply_updates(params, updates)
  _, state = update(_grads(params), state, params)  # now Adam's
  with pytest.raises(ValueError, match="track_stats=True"):
    sgperm_jax.permutation_stats(state)


def test_off_by_default_and_named_errors():
  params = _distinct_params()
  state = sgperm_jax.sgperm().init(params)
  assert state[1].stats is None
  with pytest.raises(ValueError, match="sgperm_jax: permutation_stats"):
    sgperm_jax.permutation_stats(state)
  for make in (sgperm_jax.sgperm, lambda **kw: sgperm_jax.laperm(
      optax.sgd(1.0), **kw)):
    with pytest.raises(TypeError, match="sgperm_jax: track_stats"):
      make(track_stats="yes")


@pytest.mark.slow
def test_read_from_an_nnx_optimizer():
  from flax import nnx  # noqa: PLC0415 (the [train] extra)
  model = nnx.Sequential(nnx.Linear(8, 6, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(6, 3, rngs=nnx.Rngs(1)))
  opt = nnx.Optimizer(model, sgperm_jax.sgperm(lamda0=0.5, track_stats=True),
                      wrt=nnx.Param)
  x, y = jnp.linspace(-1, 1, 32).reshape(4, 8), jnp.array([0, 1, 2, 0])

  @nnx.jit
  def step(model, opt):
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(
        m(x), y).mean()
    opt.update(model, nnx.grad(loss)(model))

  step(model, opt)
  stats = sgperm_jax.permutation_stats(opt.opt_state)
  kernel = stats["layers"][2]["kernel"]
  assert int(kernel.step) == 1 and 0 < float(kernel.moved_fraction) <= 1
  assert int(stats["layers"][0]["bias"].cycles) == 0  # zeros: nothing moves
