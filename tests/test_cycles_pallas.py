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

# Few shapes: one compilation each (seconds: the interpreted kernels). Rows
# of one vertex (shared with test_no_rows_and_one_vertex), and rows of 24
# (drawn twice as often) where sizes 1..26 give subsets of every length.
_SHAPES = [(2, 1), (3, 24), (3, 24)]


# The search that "auto" runs here (the reference), by name: the same
# program, without tracing the other platforms' branches.
_SEARCH = sgperm_jax.auto_cycle_search(jax.default_backend())


@jax.jit
def _both_paths(w, r, size, alpha, remainder, seed):
  """The reference search (``_SEARCH``) and both kernel flavours on the same
  stages."""
  part = sgperm_jax.partition(jax.random.key(seed), w, r, size, remainder)
  graph = sgperm_jax.permissibility_graph(part, alpha)
  sources = sgperm_jax.source_order(part, graph)
  tables = (graph.direction, graph.reach_lo, graph.reach_hi, part.subset_lo,
            part.subset_hi, sources)
  gpu = find_cycles_pallas(*tables, interpret=True)
  tpu = _cycles_pallas._tpu_call(
      [t.astype(jnp.int32) for i, t in enumerate(tables) if i != 3],
      interpret=True)
  return sgperm_jax.find_cycles(part, graph, cycle_search=_SEARCH), gpu, tpu


def _assert_identical(case):
  want, gpu, tpu = _both_paths(*case)
  assert gpu.dtype == jnp.int32 and gpu.shape == want.shape
  np.testing.assert_array_equal(np.asarray(gpu), np.asarray(want))
  np.testing.assert_array_equal(np.asarray(tpu), np.asarray(want))
  return np.asarray(want)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(strategies.stage_inputs(_SHAPES, dtypes=("float32",)))
def test_kernel_is_bit_identical_to_the_portable_search(case):
  _assert_identical(case)


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.495, 5.0])
@pytest.mark.parametrize("size", [300, 12])
def test_tie_heavy_rows(size, alpha):
  """Rows of 300 with 1, 3, 12 and 40 distinct values: long runs of seen
  ties (the shape of test_bigger_rows: the same compiled program).

  Where the search of the portable loop grows quadratic; on CPU the
  reference (``"auto"``) is the native kernel, the same algorithm as the
  Pallas one and bit-identical to the loop.
  """
  rng = np.random.default_rng(size)
  w = np.stack([rng.normal(size=d)[rng.integers(0, d, size=300)]
                for d in (1, 3, 12, 40)])
  r = rng.normal(size=(4, 300))
  r[rng.random((4, 300)) < 0.1] = 0.0
  r[:, ::7] = np.round(r[:, ::7], 1)  # some tied |r|
  want = _assert_identical((jnp.asarray(w, jnp.float32),
                            jnp.asarray(r, jnp.float32), size, alpha, True,
                            0))
  assert np.sum(want != np.arange(300)) > 100  # cycles were found


@pytest.mark.slow
def test_no_rows_and_one_vertex():
  empty = [jnp.zeros((0, 5), jnp.int32)] * 6
  assert find_cycles_pallas(*empty, interpret=True).shape == (0, 5)
  w = jnp.ones((2, 1), jnp.float32)
  _, gpu, tpu = _both_paths(w, -w, 1, 1.0, True, 0)  # compiled for _SHAPES
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
