"""The Pallas cycle search against the portable one, and its GPU/TPU lowering.

On CPU the kernels run in the Pallas interpreter; the Triton (GPU) and Mosaic
(TPU) lowerings are checked by exporting for those platforms, which needs no
accelerator.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import sgperm_jax
from sgperm_jax import _cycles_pallas
from sgperm_jax._cycles_pallas import find_cycles_pallas
from tests import strategies

_SHAPES = [(1, 2), (3, 9), (2, 40)]  # few shapes: one compile each


@jax.jit
def _both_paths(w, r, size, alpha, remainder, seed):
  """The portable search and both kernel flavours on the same stages."""
  part = sgperm_jax.partition(jax.random.key(seed), w, r, size, remainder)
  graph = sgperm_jax.permissibility_graph(part, alpha)
  sources = sgperm_jax.source_order(part, graph)
  tables = (graph.direction, graph.reach_lo, graph.reach_hi, part.subset_lo,
            part.subset_hi, sources)
  gpu = find_cycles_pallas(*tables, interpret=True)
  tpu = _cycles_pallas._tpu_call(
      [t.astype(jnp.int32) for i, t in enumerate(tables) if i != 3],
      interpret=True)
  return sgperm_jax.find_cycles(part, graph), gpu, tpu


def _assert_identical(case):
  want, gpu, tpu = _both_paths(*case)
  assert gpu.dtype == jnp.int32 and gpu.shape == want.shape
  np.testing.assert_array_equal(np.asarray(gpu), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(tpu), np.asarray(want))
  return np.asarray(want)


@settings(max_examples=30, deadline=None)
@given(strategies.stage_inputs(_SHAPES, dtypes=("float32",)))
def test_kernel_is_bit_identical_to_the_portable_search(case):
  _assert_identical(case)


@pytest.mark.parametrize("size", [300, 64, 7])
def test_bigger_rows(size):
  """4 rows of 300: long searches, many subsets, cycles of every length."""
  rng = np.random.default_rng(size)
  w = jnp.asarray(rng.normal(size=(4, 300)), jnp.float32)
  r = rng.normal(size=(4, 300))
  r[rng.random((4, 300)) < 0.1] = 0.0
  want = _assert_identical((w, jnp.asarray(r, jnp.float32), size, 0.3, True,
                            size))
  assert np.sum(want != np.arange(300)) > 100  # the search did real work


@jax.jit
def _native_and_kernels(w, r, size, alpha):
  """The native CPU search and both kernel flavours on the same stages."""
  part = sgperm_jax.partition(jax.random.key(0), w, r, size, True)
  graph = sgperm_jax.permissibility_graph(part, alpha)
  tables = (graph.direction, graph.reach_lo, graph.reach_hi, part.subset_lo,
            part.subset_hi, sgperm_jax.source_order(part, graph))
  gpu = find_cycles_pallas(*tables, interpret=True)
  tpu = _cycles_pallas._tpu_call(
      [t.astype(jnp.int32) for i, t in enumerate(tables) if i != 3],
      interpret=True)
  return sgperm_jax.find_cycles(part, graph, method="native"), gpu, tpu


@pytest.mark.parametrize("alpha", [0.495, 5.0])
@pytest.mark.parametrize("size", [120, 12])
def test_tie_heavy_rows(size, alpha):
  """Rows of 120 with 3 and 12 distinct values: long runs of seen ties.

  Where the search of the portable loop grows quadratic; the native kernel
  (the same algorithm as the Pallas one, and bit-identical to the loop)
  is the oracle.
  """
  rng = np.random.default_rng(size)
  w = np.stack([rng.normal(size=3)[rng.integers(0, 3, size=120)],
                rng.normal(size=12)[rng.integers(0, 12, size=120)]])
  r = rng.normal(size=(2, 120))
  r[rng.random((2, 120)) < 0.1] = 0.0
  r[:, ::7] = np.round(r[:, ::7], 1)  # some tied |r|
  want, gpu, tpu = _native_and_kernels(
      jnp.asarray(w, jnp.float32), jnp.asarray(r, jnp.float32), size, alpha)
  np.testing.assert_array_equal(np.asarray(gpu), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(tpu), np.asarray(want))
  assert np.sum(np.asarray(want) != np.arange(120)) > 20  # cycles were found


def test_no_rows_and_one_vertex():
  empty = [jnp.zeros((0, 5), jnp.int32)] * 6
  assert find_cycles_pallas(*empty, interpret=True).shape == (0, 5)
  w = jnp.ones((2, 1), jnp.float32)
  _, gpu, tpu = _both_paths(w, -w, 1, 1.0, True, 0)
  np.testing.assert_array_equal(np.asarray(gpu), [[0], [0]])
  np.testing.assert_array_equal(np.asarray(tpu), [[0], [0]])


def _export(platform, rows=3, n=17):
  """Exports the jitted kernel for ``platform`` (lowering only, no device)."""
  args = ([jax.ShapeDtypeStruct((rows, n), jnp.int8)]
          + [jax.ShapeDtypeStruct((rows, n), jnp.int32)] * 5)
  unchecked = [jax.export.DisabledSafetyCheck.custom_call(
      "__gpu$xla.gpu.triton")]
  return jax.export.export(jax.jit(find_cycles_pallas), platforms=[platform],
                           disabled_checks=unchecked)(*args)


def test_lowers_to_a_triton_kernel_for_cuda():
  exported = _export("cuda")
  assert exported.platforms == ("cuda",)
  assert exported.out_avals == (jax.core.ShapedArray((3, 17), jnp.int32),)
  module = exported.mlir_module()
  assert "__gpu$xla.gpu.triton" in module
  assert "num_warps = 1" in module


def test_lowers_to_a_mosaic_kernel_for_tpu():
  module = _export("tpu").mlir_module()
  assert "tpu_custom_call" in module


def test_not_interpreted_on_cpu_is_an_error():
  ones = jnp.ones((1, 3), jnp.int32)
  with pytest.raises(Exception, match="interpret"):
    jax.jit(functools.partial(find_cycles_pallas, interpret=False))(
        *[ones] * 6)
