"""The optax battery, for each of the five public transformations.

The properties every optax optimizer is held to (as ``optax/contrib``'s common
tests do): extra arguments to ``update``, ``optax.inject_hyperparams``, the
params' dtype, ``optax.MultiSteps``, a state that keeps its structure (also
through ``lax.cond``), jit against no jit, and a shape-only ``init``.

Every case runs on the same small params and gradients, and the jitted
programs are kept per case (:func:`_compiled`), so that a case compiles its
update only a few times over the whole file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import sgperm_jax
from tests import helpers

_SGPERM_KW = dict(alpha0=1.0, lamda0=1.0, momentum_lr=1.0, momentum=0.9)


class Case(NamedTuple):
  factory: Callable[..., Any]  # the public factory
  kwargs: dict[str, Any]  # its arguments in this battery
  injected: tuple[str, ...]  # hyperparameters inject_hyperparams must inject
  permuted: tuple[str, ...]  # leaves whose rows a first step permutes
  exact: bool  # whether the updates are exact (a permutation of the params)


def _cases() -> dict[str, Case]:
  # A row has 4 (kernel) or 6 (bias) slots: with alpha0 = lamda0 = 1 the
  # whole row is one subset and every slot may take any value in the asked
  # direction, so a step always moves (the recommendations are centered).
  return {
      "sgperm": Case(sgperm_jax.sgperm, _SGPERM_KW, tuple(_SGPERM_KW),
                     ("kernel", "bias"), True),
      "permute_by_recommendation": Case(
          sgperm_jax.permute_by_recommendation,
          dict(alpha0=1.0, lamda0=1.0), ("alpha0", "lamda0"),
          ("kernel", "bias"), True),
      "momentum_recommendation": Case(
          sgperm_jax.momentum_recommendation,
          dict(momentum_lr=0.5, momentum=0.9), ("momentum_lr", "momentum"),
          (), False),
      # Syncs after every second step; biases (vectors) are trained freely.
      "laperm": Case(sgperm_jax.laperm,
                     dict(inner=optax.adam(1e-3), sync_period=2),
                     ("sync_period",), ("kernel",), False),
      # SGPerm for the first step, then Adam.
      "switch_after": Case(
          sgperm_jax.switch_after,
          dict(first=sgperm_jax.sgperm(**_SGPERM_KW), second=optax.adam(1e-3),
               switch_step=1), ("switch_step",), ("kernel", "bias"), False),
  }


CASES = _cases()
NAMES = tuple(CASES)
DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16, jnp.float64)


def _params(dtype=jnp.float32):
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"kernel": jax.random.normal(k1, (4, 6)).astype(dtype),
          "bias": jax.random.normal(k2, (6,)).astype(dtype)}


def _grads(params, t=0):
  k1, k2 = jax.random.split(jax.random.key(100 + t))
  return {"kernel": jax.random.normal(k1, (4, 6)).astype(
              params["kernel"].dtype),
          "bias": jax.random.normal(k2, (6,)).astype(params["bias"].dtype)}


class _Compiled(NamedTuple):
  opt: optax.GradientTransformationExtraArgs
  update: Callable[..., Any]  # jax.jit(opt.update)
  cond_update: Callable[..., Any]  # update or not, through lax.cond


@functools.cache
def _compiled(name: str) -> _Compiled:
  """The case's transformation and its jitted programs, shared by the tests."""
  case = CASES[name]
  opt = case.factory(**case.kwargs)

  @jax.jit
  def cond_update(grads, state, params, take):
    # As optax's battery: a step that may or may not update (the predicate
    # is an argument, so it cannot be folded) must see the same types.
    return jax.lax.cond(take, lambda: opt.update(grads, state, params),
                        lambda: (params, state))

  return _Compiled(opt, jax.jit(opt.update), cond_update)


def _assert_same_avals(tree, reference, what):
  assert jax.tree.structure(tree) == jax.tree.structure(reference), what
  chex.assert_trees_all_equal_shapes_and_dtypes(tree, reference,
                                                custom_message=what)


def _assert_same_trees(a, b, exact):
  if exact:
    chex.assert_trees_all_equal(a, b)
  else:
    chex.assert_trees_all_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", NAMES)
def test_extra_args_under_jit_and_no_recompilation(name):
  opt = _compiled(name).opt
  # Every factory returns one already: no with_extra_args_support needed.
  assert isinstance(opt, optax.GradientTransformationExtraArgs), type(opt)
  traces = []

  @jax.jit
  def step(grads, state, params):
    traces.append(None)
    return opt.update(grads, state, params, some_unexpected_extra_arg=1)

  params = _params()
  state = opt.init(params)
  grads = _grads(params)
  updates, state1 = step(grads, state, params)
  # The extra argument is ignored: the same step as without it.
  _assert_same_trees((updates, state1),
                     _compiled(name).update(grads, state, params), exact=True)
  # Neither the new state's types nor new values cause a second trace.
  params = optax.apply_updates(params, updates)
  step(_grads(params, 1), state1, params)
  step(_grads(params, 2), opt.init(params), params)
  assert len(traces) == 1, f"traced {len(traces)} times"


@pytest.mark.parametrize("name", NAMES)
def test_inject_hyperparams_gives_the_same_updates(name):
  case = CASES[name]
  plain = _compiled(name)
  injected = optax.inject_hyperparams(case.factory)(**case.kwargs)
  inj_update = jax.jit(injected.update)
  params = _params()
  state, inj_state = plain.opt.init(params), injected.init(params)
  assert set(case.injected) <= set(inj_state.hyperparams)
  for t in range(2):
    grads = _grads(params, t)
    updates, state = plain.update(grads, state, params)
    inj_updates, inj_state = inj_update(grads, inj_state, params)
    # Permutation steps are exact: the same permutation, bit for bit.
    _assert_same_trees(inj_updates, updates, case.exact)
    _assert_same_trees(inj_state.inner_state, state, case.exact)
    params = optax.apply_updates(params, updates)


def _mixed_params():
  """One tree holding every float dtype (the leaves of :func:`_params`)."""
  return {jnp.dtype(d).name: _params(d) for d in DTYPES}


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.slow) if n in (
        "permute_by_recommendation", "switch_after") else n
    for n in NAMES])  # those two run sgperm's step: slow only for -m "not slow"
def test_dtypes_are_kept_and_rows_stay_permutations(name):
  # One tree of all four dtypes, so that one program checks them all.
  with jax.enable_x64(True):
    compiled = _compiled(name)
    opt = compiled.opt
    params = _mixed_params()
    grads = {k: _grads(v) for k, v in params.items()}
    state = opt.init(params)
    # Checked on the abstract values first, for a clear message ...
    updates, new_state = jax.eval_shape(opt.update, grads, state, params)
    chex.assert_trees_all_equal_dtypes(updates, params)
    _assert_same_avals(new_state, state, "state after update")
    # ... then through lax.cond, which needs them equal to compile.
    updates, state = compiled.cond_update(grads, state, params, True)
    chex.assert_trees_all_equal_dtypes(updates, params)
    new_params = optax.apply_updates(params, updates)
    chex.assert_trees_all_equal_dtypes(new_params, params)
    case = CASES[name]
    if not case.permuted:
      return
    exact = sgperm_jax.exact_params(new_params, state)
    chex.assert_trees_all_equal_dtypes(exact, params)
    for dtype, leaves in params.items():
      for leaf in case.permuted:
        helpers.assert_same_rows(exact[dtype][leaf], leaves[leaf],
                                 err_msg=f"{dtype} {leaf}")
      if case.exact:  # and the step did move something, in every dtype
        assert not all(np.array_equal(exact[dtype][k], leaves[k])
                       for k in leaves), dtype


@pytest.mark.parametrize("name", NAMES)
def test_multi_steps(name):
  k = 3
  case = CASES[name]
  compiled = _compiled(name)
  multi = optax.MultiSteps(compiled.opt, every_k_schedule=k)
  update = jax.jit(multi.update)
  params = _params()
  grads = _grads(params)
  state = multi.init(params)
  for _ in range(k - 1):
    updates, state = update(grads, state, params)
    chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))
  updates, state = update(grads, state, params)  # the mean of k equal grads
  want, want_state = compiled.update(grads, compiled.opt.init(params), params)
  _assert_same_trees(updates, want, case.exact)
  _assert_same_trees(state.inner_opt_state, want_state, case.exact)
  assert any(np.any(u != 0) for u in jax.tree.leaves(updates))


@pytest.mark.parametrize("name", NAMES)
def test_state_keeps_structure_shapes_and_dtypes(name):
  compiled = _compiled(name)
  params = _params()
  init = compiled.opt.init(params)
  state = init
  for t, take in enumerate((True, False, True)):
    grads = _grads(params, t)
    _, after = compiled.update(grads, state, params)
    _assert_same_avals(after, init, f"state after update {t}")
    updates, state = compiled.cond_update(grads, state, params, take)
    _assert_same_avals(state, init, f"state after lax.cond {t}")
    if take:
      chex.assert_trees_all_equal(state, after)
    params = optax.apply_updates(params, updates)


def _assert_jit_matches_eager(eager, jitted, exact):
  """Leaf by leaf: bit for bit where the values are chosen, not computed.

  Integer leaves (counts, keys), the permuted weights (``weights``, ``bank``)
  and, when ``exact``, every leaf are compared bit for bit. Other float
  leaves (momenta, Adam's moments, a learning-rate step) are arithmetic, and
  there jit and eager differ in the last bit by design of XLA, not of this
  library: a jitted program fuses ``a * b + c`` into one fused multiply-add
  (one rounding) where eager dispatch rounds the product and then the sum
  (``0.9 * a + 0.5 * b`` differs in about a third of the elements on CPU;
  optax's own ``adam`` does the same). They must agree to a few ulps of the
  leaf's largest magnitude (a centered update may cancel to near zero).
  """
  eager_leaves, tree = jax.tree_util.tree_flatten_with_path(eager)
  jit_leaves, jit_tree = jax.tree_util.tree_flatten_with_path(jitted)
  assert tree == jit_tree
  for (path, a), (_, b) in zip(eager_leaves, jit_leaves):
    where = jax.tree_util.keystr(path)
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, where
    names = {getattr(k, "name", None) for k in path}
    if (exact or not jnp.issubdtype(a.dtype, jnp.floating)
        or names & {"weights", "bank"}):
      np.testing.assert_array_equal(helpers.bits(a), helpers.bits(b),
                                    err_msg=where)
    else:
      scale = float(np.max(np.abs(b.astype(np.float64)), initial=0.0))
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * scale,
                                 err_msg=where)


@pytest.mark.parametrize("name", NAMES)
def test_jit_and_no_jit_agree(name):
  compiled = _compiled(name)
  params = _params()
  state = jit_state = compiled.opt.init(params)
  for t in range(2):
    grads = _grads(params, t)
    updates, state = compiled.opt.update(grads, state, params)
    jit_updates, jit_state = compiled.update(grads, jit_state, params)
    # The permutation steps' updates are exact: bit for bit.
    _assert_jit_matches_eager(updates, jit_updates, CASES[name].exact)
    _assert_jit_matches_eager(state, jit_state, exact=False)
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("name", NAMES)
def test_init_needs_only_shapes(name):
  opt = _compiled(name).opt
  params = _params()
  real = opt.init(params)
  _assert_same_avals(jax.eval_shape(opt.init, params), real,
                     "eval_shape on arrays")
  shapes = jax.tree.map(lambda p: jax.ShapeDtypeStruct(p.shape, p.dtype),
                        params)
  _assert_same_avals(jax.eval_shape(opt.init, shapes), real,
                     "eval_shape on ShapeDtypeStructs")
