"""Checkpoint and resume: a resumed run is bit-identical to an unbroken one."""

from __future__ import annotations

import functools
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgperm_jax
from sgperm_jax import checkpoint
from tests import helpers
from tests.helpers import bits as _bits

pytest.importorskip("orbax.checkpoint")
# orbax leaves reader coroutines behind when a restore fails (the template
# mismatch below); they are reported when garbage-collected, in any test.
pytestmark = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning")

STEPS = 10
STOP = 4


def _assert_bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert jnp.shape(x) == jnp.shape(y) and x.dtype == y.dtype
    np.testing.assert_array_equal(_bits(x), _bits(y))


def _model(dtype):
  """A softmax classifier: two leaves (each permuted leaf costs compile time).

  The kernel's 10 rows of 24 and the bias row of 10 are partitioned at
  random (see ``_make_tx``).
  """
  keys = jax.random.split(jax.random.key(42), 2)
  return {"dense": {"kernel": jax.random.normal(keys[0], (24, 10), dtype),
                    "bias": 0.1 * jax.random.normal(keys[1], (10,), dtype)}}


X = jax.random.normal(jax.random.key(1), (64, 24))
Y = jax.random.randint(jax.random.key(2), (64,), 0, 10)


def _loss(params):
  p = jax.tree.map(lambda a: a.astype(jnp.float32), params["dense"])
  logits = X @ p["kernel"] + p["bias"][None]
  return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def _make_step(tx, max_traces=None):
  """A jitted train step for ``tx`` (each one compiles: seconds); with
  ``max_traces``, tracing it more often is an error."""
  traces = []

  def step(params, opt_state):
    traces.append(1)
    assert max_traces is None or len(traces) <= max_traces, (
        f"the train step was traced {len(traces)} times")
    grads = jax.grad(_loss)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  return jax.jit(step)


def _run(step, params, opt_state, steps, hook=None):
  """Runs ``steps`` steps; returns the final pair and, per step, the params,
  the exact params and the whole optimizer state."""
  history = []
  for _ in range(steps):
    if hook is not None:
      opt_state = hook(opt_state)
    params, opt_state = step(params, opt_state)
    history.append((params, sgperm_jax.exact_params(params, opt_state),
                    opt_state))
  return params, opt_state, history


def _assert_same_runs(resumed, reference):
  assert len(resumed) == len(reference)
  for got, want in zip(resumed, reference):
    for a, b in zip(got, want):  # params, exact params, optimizer state
      _assert_bitwise_equal(a, b)


def _make_tx():
  # lamda0 * n < n for every row: partitions are random shuffles.
  return sgperm_jax.sgperm(alpha0=0.5, lamda0=0.25, partition_size_min=3,
                           seed=7)


@functools.cache
def _unbroken():
  """The reference: one run of STEPS steps, never interrupted (float32).

  Returns the initial params, the transformation, the per-step history and
  the state after STOP steps.
  """
  init = _model(jnp.float32)
  tx = _make_tx()
  step = _make_step(tx)
  _, _, history = _run(step, init, tx.init(init), STEPS)
  params, opt_state, _ = _run(step, init, tx.init(init), STOP)
  return init, tx, history, (params, opt_state)


@functools.cache
def _resumer():
  """A second transformation and jitted step, standing in for a new process.

  Shared by the tests that continue from restored (committed) arrays, so
  that it compiles once.
  """
  return _make_step(_make_tx())


def _permutation_state(opt_state):
  return [s for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, sgperm_jax.PermutationState))
          if isinstance(s, sgperm_jax.PermutationState)]


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path):
  init, _, unbroken, (params, opt_state) = _unbroken()
  checkpoint.save_checkpoint(tmp_path, STOP, params, opt_state,
                             metadata={"epoch": 2, "history": [1.5, 0.5]})

  # Fresh objects, as in a new process: new transformation, new jit,
  # templates that are only shapes and dtypes.
  tx2 = _make_tx()
  restored = checkpoint.restore_checkpoint(
      tmp_path, jax.eval_shape(lambda: init), jax.eval_shape(tx2.init, init))
  assert restored.step == STOP
  assert restored.extra is None
  assert restored.metadata == {"epoch": 2, "history": [1.5, 0.5]}
  _assert_bitwise_equal(restored.params, unbroken[STOP - 1][0])
  _assert_bitwise_equal(
      sgperm_jax.exact_params(restored.params, restored.opt_state),
      unbroken[STOP - 1][1])
  assert (jax.tree.structure(restored.opt_state)
          == jax.tree.structure(tx2.init(init)))

  _, _, resumed = _run(_resumer(), restored.params, restored.opt_state,
                       STEPS - STOP)
  _assert_same_runs(resumed, unbroken[STOP:])
  # The run really permuted after the restart: exact weights kept moving.
  assert any(bool(jnp.any(a != b)) for a, b in zip(
      jax.tree.leaves(unbroken[-1][1]), jax.tree.leaves(unbroken[STOP][1])))


@pytest.mark.slow
def test_partitions_depend_on_the_restored_key(tmp_path):
  """Control: resuming with a restarted PRNG key diverges from the run."""
  init, tx, unbroken, (params, opt_state) = _unbroken()
  checkpoint.save_checkpoint(tmp_path, STOP, params, opt_state)
  restored = checkpoint.restore_checkpoint(tmp_path, init, tx.init(init))

  (perm_state,) = _permutation_state(restored.opt_state)
  (saved_state,) = _permutation_state(opt_state)
  np.testing.assert_array_equal(perm_state.rng_key, saved_state.rng_key)
  fresh_key = _permutation_state(tx.init(init))[0].rng_key
  assert bool(jnp.any(perm_state.rng_key != fresh_key))

  def restart_key(state):
    return jax.tree.map(
        lambda s: s._replace(rng_key=fresh_key)
        if isinstance(s, sgperm_jax.PermutationState) else s, state,
        is_leaf=lambda x: isinstance(x, sgperm_jax.PermutationState))

  _, _, wrong = _run(_resumer(), restored.params,
                     restart_key(restored.opt_state), STEPS - STOP)
  assert any(bool(jnp.any(a != b)) for a, b in zip(
      jax.tree.leaves(wrong[-1][1]), jax.tree.leaves(unbroken[-1][1])))


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32,
                                   jnp.float64])
def test_every_float_dtype_round_trips_bit_for_bit(tmp_path, dtype):
  """Signed zeros, subnormals, extremes and NaN payloads survive."""
  with jax.enable_x64(dtype == jnp.float64):
    fi = jnp.finfo(dtype)
    values = np.array([0.0, -0.0, float(fi.smallest_subnormal),
                       -float(fi.tiny), float(fi.max), -float(fi.max),
                       np.inf, -np.inf, 1.0 / 3.0], np.float64).astype(dtype)
    nan = np.full(2, np.nan, dtype)
    nan.view(f"u{nan.itemsize}")[1] |= 1  # a NaN with another payload
    params = {"w": jnp.asarray(np.concatenate([values, nan]))}
    tx = sgperm_jax.sgperm()
    opt_state = jax.tree.map(lambda x: x + 1, tx.init(params))
    checkpoint.save_checkpoint(tmp_path, 1, params, opt_state)
    restored = checkpoint.restore_checkpoint(tmp_path, params,
                                             tx.init(params))
    _assert_bitwise_equal(restored.params, params)
    _assert_bitwise_equal(restored.opt_state, opt_state)


@pytest.mark.slow
def test_resume_inside_inject_hyperparams(tmp_path):
  """Injected hyperparameters, changed mid-run, are saved and restored."""
  init = _model(jnp.float32)

  def make_tx():
    return optax.inject_hyperparams(sgperm_jax.sgperm)(
        alpha0=0.5, lamda0=0.25, partition_size_min=3, seed=3)

  def lower_alpha(state):
    state.hyperparams["alpha0"] = jnp.asarray(0.2, jnp.float32)
    return state

  tx = make_tx()
  # One compiled step for the whole test: the restored state must not
  # retrace it.
  step = _make_step(tx, max_traces=1)
  _, _, unbroken = _run(step, init, lower_alpha(tx.init(init)), STEPS)
  params, opt_state, _ = _run(step, init, lower_alpha(tx.init(init)), STOP)
  checkpoint.save_checkpoint(tmp_path, STOP, params, opt_state)

  tx2 = make_tx()
  template = tx2.init(init)
  restored = checkpoint.restore_checkpoint(tmp_path, init, template)
  assert float(restored.opt_state.hyperparams["alpha0"]) == pytest.approx(0.2)
  # Weak types of injected Python numbers survive, so nothing retraces.
  for got, want in zip(jax.tree.leaves(restored.opt_state),
                       jax.tree.leaves(template)):
    assert got.weak_type == want.weak_type and got.dtype == want.dtype
  _, _, resumed = _run(step, restored.params, restored.opt_state,
                       STEPS - STOP)
  _assert_same_runs(resumed, unbroken[STOP:])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["laperm", "switch_after"])
def test_resume_composed_optimizers(tmp_path, name):
  """LaPerm (sync every 3 steps) and a switch from SGPerm to Adam resume
  exactly across their sync points and the switch.

  The restored state continues in the same compiled step (a fresh
  transformation and jit: ``test_resume_is_bit_identical``)."""
  init = _model(jnp.float32)

  def make_tx():
    if name == "laperm":
      return sgperm_jax.laperm(optax.adam(0.05), sync_period=3)
    return sgperm_jax.switch_after(_make_tx(), optax.adam(0.05), STOP + 2)

  tx = make_tx()
  step = _make_step(tx, max_traces=1)
  _, _, unbroken = _run(step, init, tx.init(init), STEPS)
  params, opt_state, _ = _run(step, init, tx.init(init), STOP)
  checkpoint.save_checkpoint(tmp_path, STOP, params, opt_state)
  restored = checkpoint.restore_checkpoint(
      tmp_path, init, jax.eval_shape(make_tx().init, init))
  _, _, resumed = _run(step, restored.params, restored.opt_state,
                       STEPS - STOP)
  _assert_same_runs(resumed, unbroken[STOP:])


@pytest.mark.slow
def test_resume_from_step_zero_and_extra_tree(tmp_path):
  """A state saved before any update (zeros as weights) resumes correctly."""
  init, tx, unbroken, _ = _unbroken()
  data_key = jax.random.key_data(jax.random.key(5))
  checkpoint.save_checkpoint(tmp_path, 0, init, tx.init(init),
                             extra={"data_key": data_key})
  restored = checkpoint.restore_checkpoint(
      tmp_path, init, tx.init(init),
      extra={"data_key": jnp.zeros_like(data_key)})
  assert restored.step == 0
  assert restored.metadata == {}
  np.testing.assert_array_equal(restored.extra["data_key"], data_key)
  _, _, resumed = _run(_resumer(), restored.params, restored.opt_state, 3)
  _assert_same_runs(resumed, unbroken[:3])


def test_steps_latest_and_max_to_keep(tmp_path):
  params = {"w": jnp.arange(4.0)}
  tx = _make_tx()
  assert checkpoint.latest_step(tmp_path / "missing") is None
  for k in range(1, 5):
    checkpoint.save_checkpoint(tmp_path, k, {"w": params["w"] + k},
                               tx.init(params), max_to_keep=2)
  assert checkpoint.latest_step(tmp_path) == 4
  assert sorted(int(p.name) for p in tmp_path.iterdir()
                if p.name.isdigit()) == [3, 4]
  latest = checkpoint.restore_checkpoint(tmp_path, params, tx.init(params))
  assert latest.step == 4
  np.testing.assert_array_equal(latest.params["w"], params["w"] + 4)
  third = checkpoint.restore_checkpoint(tmp_path, params, tx.init(params),
                                        step=3)
  np.testing.assert_array_equal(third.params["w"], params["w"] + 3)
  with pytest.raises(FileNotFoundError, match="step 1"):
    checkpoint.restore_checkpoint(tmp_path, params, tx.init(params), step=1)
  with pytest.raises(ValueError, match="already saved"):
    checkpoint.save_checkpoint(tmp_path, 4, params, tx.init(params))


def test_bad_arguments(tmp_path):
  params = {"w": jnp.arange(4.0)}
  state = _make_tx().init(params)
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    checkpoint.restore_checkpoint(tmp_path / "nothing", params, state)
  with pytest.raises(ValueError, match="step"):
    checkpoint.save_checkpoint(tmp_path, -1, params, state)
  with pytest.raises(TypeError, match="step"):
    checkpoint.save_checkpoint(tmp_path, "3", params, state)
  with pytest.raises(TypeError, match="step"):
    checkpoint.save_checkpoint(tmp_path, True, params, state)
  with pytest.raises(TypeError, match="directory"):
    checkpoint.save_checkpoint(None, 1, params, state)
  with pytest.raises(ValueError, match="max_to_keep"):
    checkpoint.save_checkpoint(tmp_path, 1, params, state, max_to_keep=0)
  checkpoint.save_checkpoint(tmp_path, 1, params, state)
  with pytest.raises(TypeError, match="metadata"):
    checkpoint.save_checkpoint(tmp_path, 2, params, state,
                               metadata={"x": object()})
  with pytest.raises(ValueError, match=r"does not match.*\['params'\]\['w'\]"):
    checkpoint.restore_checkpoint(tmp_path, {"w": jnp.arange(5.0)}, state)
  sharded_template = jax.device_put(  # committed: restored through orbax's
      jnp.arange(5.0), jax.devices()[0])  # sharded path
  with pytest.raises(ValueError, match="does not match"):
    checkpoint.restore_checkpoint(tmp_path, {"w": sharded_template}, state)
  with pytest.raises(ValueError, match="does not match"):
    checkpoint.restore_checkpoint(tmp_path, {"v": jnp.arange(4.0)}, state)


def test_flax_nnx_state_round_trip(tmp_path):
  """NNX params (nnx.split) and an NNX optimizer's state restore exactly."""
  nnx = pytest.importorskip("flax.nnx")
  model = nnx.Sequential(nnx.Linear(6, 4, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(4, 3, rngs=nnx.Rngs(1)))
  _, params = nnx.split(model, nnx.Param)
  tx = _make_tx()
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  opt_state = jax.tree.map(lambda x: x + 1, nnx.state(optimizer))
  checkpoint.save_checkpoint(tmp_path, 7, params, opt_state)

  fresh = nnx.Sequential(nnx.Linear(6, 4, rngs=nnx.Rngs(5)), nnx.relu,
                         nnx.Linear(4, 3, rngs=nnx.Rngs(6)))
  fresh_optimizer = nnx.Optimizer(fresh, _make_tx(), wrt=nnx.Param)
  restored = checkpoint.restore_checkpoint(
      tmp_path, nnx.state(fresh, nnx.Param), nnx.state(fresh_optimizer))
  assert type(restored.params) is type(params)
  _assert_bitwise_equal(restored.params, params)
  _assert_bitwise_equal(restored.opt_state, opt_state)
  nnx.update(fresh, restored.params)
  nnx.update(fresh_optimizer, restored.opt_state)
  _assert_bitwise_equal(nnx.state(fresh, nnx.Param), params)


def test_missing_orbax_raises_install_hint(monkeypatch, tmp_path):
  monkeypatch.setitem(sys.modules, "orbax.checkpoint", None)
  with pytest.raises(ImportError, match=r"sgperm-jax\[checkpoint\]"):
    checkpoint.save_checkpoint(tmp_path, 1, {"w": jnp.zeros(2)}, ())
  with pytest.raises(ImportError, match=r"sgperm-jax\[checkpoint\]"):
    checkpoint.latest_step(tmp_path)


_SHARDED_SCRIPT = textwrap.dedent("""
    import os
    # LLVM's optimisations off (before JAX starts): compiling takes about half
    # the time, and what is checked here does not depend on them.
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
    import sys, tempfile
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import sgperm_jax
    from sgperm_jax import checkpoint

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()).reshape(4, 2), ("data", "model"))
    specs = {"kernel": P(None, ("data", "model")), "bias": P()}
    shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}

    def init():
      k1, k2 = jax.random.split(jax.random.key(0))
      return jax.device_put({"kernel": jax.random.normal(k1, (24, 16)),
                             "bias": jax.random.normal(k2, (16,))}, shardings)

    loss = lambda p: sum(jnp.sum(jnp.sin(3 * x) * x) for x in
                         jax.tree.leaves(p))

    def make():
      tx = sgperm_jax.sgperm(alpha0=0.8, lamda0=0.3, partition_size_min=3,
                             seed=4, mesh=mesh)
      step = jax.jit(lambda p, s: (lambda u, s: (
          optax.apply_updates(p, u), s))(*tx.update(jax.grad(loss)(p), s, p)))
      return tx, step

    tx, step = make()
    params, state = init(), tx.init(init())
    for _ in range(3):
      params, state = step(params, state)
    directory = tempfile.mkdtemp()
    checkpoint.save_checkpoint(directory, 3, params, state)
    for _ in range(3):
      params, state = step(params, state)

    # A fresh transformation for the templates, which carry the shardings;
    # the resumed run goes on in the compiled step (one compilation).
    tx2, step2 = make()[0], step
    template_params = init()
    restored = checkpoint.restore_checkpoint(directory, template_params,
                                             tx2.init(template_params))
    got = jax.tree.leaves((restored.params, restored.opt_state))
    want = jax.tree.leaves((template_params, tx2.init(template_params)))
    assert len(got) == len(want)
    for g, w in zip(got, want):
      assert g.sharding.is_equivalent_to(w.sharding, g.ndim), (g.sharding,
                                                               w.sharding)
    p2, s2 = restored.params, restored.opt_state
    for _ in range(3):
      p2, s2 = step2(p2, s2)
    jax.tree.map(np.testing.assert_array_equal, p2, params)
    jax.tree.map(np.testing.assert_array_equal,
                 sgperm_jax.exact_params(p2, s2),
                 sgperm_jax.exact_params(params, state))
    for name, leaf in p2.items():
      assert leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim), (
          name, leaf.sharding)
    print("OK")
""")


@pytest.mark.slow
def test_sharded_resume_keeps_shardings_and_bits():
  """On 8 simulated devices: restored arrays take the templates' shardings
  and the resumed run matches the unbroken one bit for bit."""
  helpers.run_with_8_devices(_SHARDED_SCRIPT)
