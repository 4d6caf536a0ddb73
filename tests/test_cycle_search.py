"""Choosing the cycle search: every method gives the same step, bit for bit.

``find_cycles(..., method=...)`` and ``sgperm(cycle_search=...)`` pick the
portable loop, the native CPU kernel or the Pallas kernel; ``"auto"`` picks by
the platform the step is compiled for. The kernels' own bit-identity tests
are in ``test_native.py`` and ``test_cycles_pallas.py``; here the whole
optimizer is compared, and the automatic choice is read off the compiled
program.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgperm_jax
from sgperm_jax import _native
from tests.helpers import bits as _bits


def _params():
  keys = jax.random.split(jax.random.key(0), 3)
  return {"conv": jax.random.normal(keys[0], (3, 3, 2, 4)),
          "dense": jax.random.normal(keys[1], (24, 5)),
          "bias": jax.random.normal(keys[2], (7,))}


_HP = dict(lamda0=0.3, momentum_lr=1.0, partition_size_min=3)


def _tx(method):
  return sgperm_jax.sgperm(**_HP, cycle_search=method)


@functools.cache
def _update(method):
  """The jitted update of one search, shared by the tests below (one
  compilation per search and tree of dtypes)."""
  return jax.jit(_tx(method).update)


def _run(method, steps=4):
  params = _params()
  state = _tx(method).init(params)
  moved = 0
  for t in range(steps):
    grads = jax.tree.map(lambda p, t=t: jnp.sin(3.0 * p + t), params)
    updates, state = _update(method)(grads, state, params)
    new = optax.apply_updates(params, updates)
    moved += sum(int(jnp.sum(a != b)) for a, b in
                 zip(jax.tree.leaves(new), jax.tree.leaves(params)))
    params = new
  return sgperm_jax.exact_params(params, state), moved


@pytest.mark.slow
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

  def stages(w):  # shapes only: the name is checked before any work
    p = sgperm_jax.partition(jax.random.key(0), w, w, 3)
    return p, sgperm_jax.permissibility_graph(p, 0.5)

  p, g = jax.eval_shape(stages, jnp.ones((1, 3)))
  with pytest.raises(ValueError, match="cycle_search"):
    sgperm_jax.find_cycles(p, g, cycle_search="gpu")


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


@pytest.mark.slow
@pytest.mark.parametrize("dtypes", [
    ("float32",), ("bfloat16", "float16"), ("float64",)])
def test_native_and_stages_give_the_same_updates(dtypes, request):
  """The updates themselves (not only the exact weights), bit for bit, in
  every dtype and with leaves of two dtypes in one tree (bfloat16 and
  float16; each ``_params`` leaf takes the next dtype in turn): the native
  kernel computes them as XLA computes the stages' ``delta``."""
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
    state = _tx(method).init(params)
    update = _update(method)  # float32: compiled by the test above
    p, steps = params, []
    for _ in range(3):
      updates, state = update(grads, state, p)
      p = optax.apply_updates(p, updates)
      steps.append((updates, p))
    out[method] = (steps, sgperm_jax.exact_params(p, state))
  for a, b in zip(jax.tree.leaves(out["loop"]), jax.tree.leaves(out["native"])):
    np.testing.assert_array_equal(_bits(a), _bits(b))


@pytest.mark.slow
def test_another_default_prng_changes_nothing():
  """With ``rbg`` as JAX's default PRNG, the optimizer still draws threefry
  bits (its key is threefry key data), so the step is the same, and the
  native kernel and the stages still agree."""
  params = _params()
  grads = jax.tree.map(jnp.cos, params)
  want = jax.tree.leaves(_update("loop")(grads, _tx("loop").init(params),
                                         params)[0])
  with jax.default_prng_impl("rbg"):
    for method in ("loop",) + (("native",) if _native.available() else ()):
      tx = _tx(method)
      state = tx.init(params)
      # a fresh jit: the default PRNG is not part of jit's cache key
      updates, state = jax.jit(tx.update)(grads, state, params)
      for a, b in zip(want, jax.tree.leaves(updates)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
