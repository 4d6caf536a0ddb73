"""One compiled program for any model: the step does not grow with the leaves.

A tree of 4 leaves and one of 60 leaves, holding the same rows, are
compared op by op in the lowered update: the sorts (the JAX stages) and the
custom calls (the native kernel) are the same few, whatever the leaf count.
"""

import re

import jax
import jax.numpy as jnp
import optax
import pytest

import sgperm_jax
from sgperm_jax import _native


def _tree(leaves):
  """``leaves`` dense kernels sharing 240 rows of 24 values, and a bias
  (shapes only: lowering needs no values)."""
  per = 240 // leaves
  tree = {f"k{i:02d}": jax.ShapeDtypeStruct((24, per), jnp.float32)
          for i in range(leaves)}
  tree["bias"] = jax.ShapeDtypeStruct((24,), jnp.float32)
  return tree


def _ops(tx, params, platform="cpu"):
  grads = params  # the same shapes and dtypes
  state = jax.eval_shape(tx.init, params)
  if platform == "cpu":
    text = jax.jit(tx.update).lower(grads, state, params).as_text()
  else:  # the program another platform would compile (no device needed)
    text = jax.export.export(
        jax.jit(tx.update), platforms=[platform],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(
            "__gpu$xla.gpu.triton")])(grads, state, params).mlir_module()
  return {"sort": len(re.findall(r"stablehlo\.sort", text)),
          "custom_call": len(re.findall(r"custom_call", text)),
          "while": len(re.findall(r"stablehlo\.while", text))}


@pytest.mark.parametrize("search, platform", [
    ("auto", "cpu"), ("loop", "cpu"),
    pytest.param("auto", "cuda", marks=pytest.mark.slow)])
def test_sgperm_step_does_not_grow_with_leaves(search, platform):
  tx = sgperm_jax.sgperm(lamda0=0.5, cycle_search=search)
  few, many = _ops(tx, _tree(4), platform), _ops(tx, _tree(60), platform)
  assert few == many, (few, many)
  if platform == "cpu" and search == "auto" and _native.available():
    assert few["custom_call"] == 1 and few["sort"] == 0  # the native kernel
  else:
    assert 1 <= few["sort"] <= 4  # the partition's shuffle and subset sorts


def test_laperm_update_does_not_grow_with_leaves():
  tx = sgperm_jax.laperm(optax.adam(1e-3), sync_period=3)
  assert _ops(tx, _tree(4)) == _ops(tx, _tree(60))


def test_a_new_shape_does_not_add_sorts():
  """Rows of many lengths still share one buffer of tiles."""
  tx = sgperm_jax.sgperm(cycle_search="loop")
  lengths = {f"w{n}": jax.ShapeDtypeStruct((n, 3), jnp.float32)
             for n in range(2, 40)}
  assert _ops(tx, lengths)["sort"] == _ops(tx, _tree(4))["sort"]


@pytest.mark.parametrize("name", ["sgperm", "laperm"])
def test_tracked_stats_do_not_grow_with_leaves(name):
  tx = (sgperm_jax.sgperm(lamda0=0.5, track_stats=True) if name == "sgperm"
        else sgperm_jax.laperm(optax.adam(1e-3), sync_period=3,
                               track_stats=True))
  few, many = _ops(tx, _tree(4)), _ops(tx, _tree(60))
  assert few == many, (few, many)
