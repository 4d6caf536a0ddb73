"""Choosing the cycle search: every method gives the same step, bit for bit.

``find_cycles(..., method=...)`` and ``sgperm(cycle_search=...)`` pick the
portable loop, the native CPU kernel or the Pallas kernel; ``"auto"`` picks by
the platform the step is compiled for. The kernels' own bit-identity tests
are in ``test_native.py`` and ``test_cycles_pallas.py``; here the whole
optimizer is compared, and the automatic choice is read off the compiled
program.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgperm_jax
from sgperm_jax import _native


def _params():
  keys = jax.random.split(jax.random.key(0), 3)
  return {"conv": jax.random.normal(keys[0], (3, 3, 2, 4)),
          "dense": jax.random.normal(keys[1], (24, 5)),
          "bias": jax.random.normal(keys[2], (7,))}


def _run(method, steps=4):
  params = _params()
  tx = sgperm_jax.sgperm(lamda0=0.3, momentum_lr=1.0, partition_size_min=3,
                         cycle_search=method)
  state = tx.init(params)

  @jax.jit
  def step(params, state, t):
    grads = jax.tree.map(lambda p: jnp.sin(3.0 * p + t), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  moved = 0
  for t in range(steps):
    new, state = step(params, state, float(t))
    moved += sum(int(jnp.sum(a != b)) for a, b in
                 zip(jax.tree.leaves(new), jax.tree.leaves(params)))
    params = new
  return sgperm_jax.exact_params(params, state), moved


def test_every_cycle_search_takes_the_same_steps():
  want, moved = _run("loop")
  assert moved > 20  # the comparison is not vacuous
  methods = ["auto", "pallas"] + (["native"] if _native.available() else [])
  for method in methods:
    got, _ = _run(method)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b),
                                    err_msg=method)


def test_unknown_cycle_search_is_named():
  with pytest.raises(ValueError, match="cycle_search"):
    sgperm_jax.sgperm(cycle_search="fast")
  p = sgperm_jax.partition(jax.random.key(0), jnp.ones((1, 3)),
                           jnp.ones((1, 3)), 3)
  g = sgperm_jax.permissibility_graph(p, 0.5)
  with pytest.raises(ValueError, match="method"):
    sgperm_jax.find_cycles(p, g, method="gpu")


def _update_fn(method):
  tx = sgperm_jax.sgperm(cycle_search=method)
  params = {"w": jnp.zeros((20, 6))}
  return jax.jit(tx.update), (params, tx.init(params), params)


def test_auto_uses_the_native_kernel_on_cpu():
  update, args = _update_fn("auto")
  text = update.lower(*args).as_text()
  assert ("custom_call @sgperm_permute_leaves" in text) == _native.available()
  loop_text = _update_fn("loop")[0].lower(*args).as_text()
  assert "custom_call @sgperm_permute_leaves" not in loop_text


def test_auto_uses_the_pallas_kernel_on_gpu():
  update, args = _update_fn("auto")
  exported = jax.export.export(
      update, platforms=["cuda"],
      disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(
          "__gpu$xla.gpu.triton")])(*args)
  text = exported.mlir_module()
  assert "__gpu$xla.gpu.triton" in text
  assert "sgperm_find_cycles" in text


def _bits(x):
  x = np.asarray(x)
  return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.itemsize])


@pytest.mark.parametrize("dtypes", [
    ("float32",), ("bfloat16",), ("float16",), ("float64",),
    ("bfloat16", "float32")])
def test_native_and_stages_give_the_same_updates(dtypes, request):
  """The updates themselves (not only the exact weights), bit for bit, in
  every dtype and with leaves of two dtypes in one tree: the native kernel
  computes them as XLA computes the stages' ``delta``."""
  if not _native.available():
    pytest.skip("the native kernel is unavailable")
  if "float64" in dtypes:
    request.getfixturevalue("x64")
  params = {name: jnp.asarray(x, dtype) for (name, x), dtype in zip(
      _params().items(), dtypes * 3)}
  grads = jax.tree.map(lambda p: jnp.sin(3.0 * p.astype(jnp.float32) + 1.0)
                       .astype(p.dtype), params)
  out = {}
  for method in ("loop", "native"):
    tx = sgperm_jax.sgperm(lamda0=0.3, momentum_lr=1.0, partition_size_min=3,
                           cycle_search=method)
    state = tx.init(params)
    update = jax.jit(tx.update)
    p, steps = params, []
    for _ in range(3):
      updates, state = update(grads, state, p)
      p = optax.apply_updates(p, updates)
      steps.append((updates, p))
    out[method] = (steps, sgperm_jax.exact_params(p, state))
  for a, b in zip(jax.tree.leaves(out["loop"]), jax.tree.leaves(out["native"])):
    np.testing.assert_array_equal(_bits(a), _bits(b))


def test_another_default_prng_changes_nothing():
  """With ``rbg`` as JAX's default PRNG, the optimizer still draws threefry
  bits (its key is threefry key data), so the step is the same, and the
  native kernel and the stages still agree."""
  params = _params()
  grads = jax.tree.map(jnp.cos, params)
  want = None
  for impl in ("threefry2x32", "rbg"):
    with jax.default_prng_impl(impl):
      for method in ("loop",) + (("native",) if _native.available() else ()):
        tx = sgperm_jax.sgperm(lamda0=0.3, cycle_search=method)
        state = tx.init(params)
        updates, state = jax.jit(tx.update)(grads, state, params)
        got = jax.tree.leaves(updates)
        if want is None:
          want = got
        for a, b in zip(want, got):
          np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
