"""The four stages against the NumPy oracle, and their composition."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sgperm_jax
from tests import reference
from tests import strategies

# (shape, dtype) pairs: one compilation each, every dtype on some shape.
_CASES = [((1, 2), "bfloat16"), ((3, 5), "float16"), ((2, 16), "bfloat16"),
          ((3, 33), "float32")]
_INPUTS = st.one_of(*[strategies.stage_inputs([shape], dtypes=(dtype,))
                      for shape, dtype in _CASES])
# The search that "auto" runs here, by name: the same program, without
# tracing the other platforms' branches (Pallas kernels: slow to trace).
_SEARCH = sgperm_jax.auto_cycle_search(jax.default_backend())


@jax.jit
def _stages(w, r, size, alpha, remainder, seed):
  """The four stages; ``seed`` is an int or a raw PRNG key."""
  key = seed if jnp.ndim(seed) else jax.random.key(seed)
  part = sgperm_jax.partition(key, w, r, size, remainder)
  graph = sgperm_jax.permissibility_graph(part, alpha)
  succ = sgperm_jax.find_cycles(part, graph, cycle_search=_SEARCH)
  return part, graph, succ, sgperm_jax.permute(part, succ)


def _subsets(part, row):
  """The partition's subsets of one row as position lists, in subset order."""
  order = np.asarray(part.order[row])
  bounds = sorted(set(zip(np.asarray(part.subset_lo[row]).tolist(),
                          np.asarray(part.subset_hi[row]).tolist())))
  return [order[lo:hi].tolist() for lo, hi in bounds]


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(_INPUTS)
def test_stages_match_oracle_on_the_same_partition(case):
  w, r, size, alpha, remainder, seed = case
  part, _, _, out = _stages(w, r, size, alpha, remainder, seed)
  w_np = np.asarray(w)
  r_np = np.asarray(r)
  n = w.shape[1]
  p = min(size, n)
  for row in range(w.shape[0]):
    subsets = _subsets(part, row)
    if not remainder:
      subsets = [s for s in subsets if len(s) == p]
    value_range = (np.max(w_np[row].astype(np.float32))
                   - np.min(w_np[row].astype(np.float32)))
    expected = reference.row_step(w_np[row], r_np[row], value_range, alpha,
                                  subsets)
    np.testing.assert_array_equal(np.asarray(out[row]), expected)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(_INPUTS)
def test_partition_is_a_sorted_cover(case):
  w, r, size, alpha, remainder, seed = case
  part = _stages(w, r, size, alpha, remainder, seed)[0]
  n = w.shape[1]
  p = min(size, n)
  for row in range(w.shape[0]):
    order = np.asarray(part.order[row])
    assert sorted(order.tolist()) == list(range(n))
    np.testing.assert_array_equal(np.asarray(part.values[row]),
                                  np.asarray(w[row])[order])
    lo = np.asarray(part.subset_lo[row])
    hi = np.asarray(part.subset_hi[row])
    assert np.all(lo == (np.arange(n) // p) * p)
    assert np.all(hi == np.minimum(lo + p, n))
    v = np.asarray(part.values[row]).astype(np.float32)
    same = lo[1:] == lo[:-1]
    assert np.all(v[1:][same] >= v[:-1][same])
    active = np.asarray(part.active[row])
    r_sorted = np.asarray(r[row])[order]
    want = np.isfinite(r_sorted) & (r_sorted != 0)
    if not remainder:
      want &= (hi - lo) == p
    np.testing.assert_array_equal(active, want)


@pytest.mark.slow
@settings(max_examples=30, deadline=None)
@given(_INPUTS)
def test_invariants(case):
  """docs/algorithm.md §13: exact multiset; each moved slot took a
  permissible value."""
  w, r, size, alpha, remainder, seed = case
  part, graph, succ, out = _stages(w, r, size, alpha, remainder, seed)
  w_np, out_np = np.asarray(w), np.asarray(out)
  for row in range(w.shape[0]):
    np.testing.assert_array_equal(np.sort(out_np[row]), np.sort(w_np[row]))
    s = np.asarray(succ[row])
    lo = np.asarray(graph.reach_lo[row])
    hi = np.asarray(graph.reach_hi[row])
    d = np.asarray(graph.direction[row])
    moved = s != np.arange(len(s))
    # a permutation made of cycles
    assert sorted(s.tolist()) == list(range(len(s)))
    # every moved vertex follows one of its own out-edges, in its subset
    assert np.all(d[moved] != 0)
    assert np.all((s[moved] >= lo[moved]) & (s[moved] < hi[moved]))
    v = np.asarray(part.values[row]).astype(np.float32)
    up = moved & (d > 0)
    down = moved & (d < 0)
    assert np.all(v[s[up]] >= v[up])
    assert np.all(v[s[down]] < v[down])


@pytest.mark.slow
def test_stages_compose_to_the_transformation():
  rng = np.random.default_rng(3)
  params = {"dense": {"kernel": rng.normal(size=(20, 6)),
                      "bias": np.linspace(-1., 1., 6)},
            "conv": {"kernel": rng.normal(size=(3, 3, 2, 4))}}
  grads = jax.tree.map(lambda p: jnp.asarray(np.cos(3 * p) - 0.1,
                                             jnp.float32), params)
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
  hp = dict(alpha0=0.4, lamda0=0.3, beta1=0.9, beta2=1.0, alpha_min=0.0,
            lamda_max=1.0, momentum_lr=1.0, momentum=0.5,
            partition_size_min=4, seed=11, center_recommendations=False)
  tx = sgperm_jax.sgperm(**hp)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  got = sgperm_jax.exact_params(optax.apply_updates(params, updates), state)

  # The same step from the public stages, one leaf at a time (one program).
  @jax.jit
  def by_stages(params, grads):
    _, step_key = jax.random.split(jax.random.PRNGKey(hp["seed"]))
    alpha = sgperm_jax.aggressiveness(0.4, 0.9, 0.0)(0)
    lamda = sgperm_jax.partition_ratio(0.3, 1.0, 1.0)(0)
    leaves, treedef = jax.tree.flatten(params)
    out = []
    for i, (w, g) in enumerate(zip(leaves, treedef.flatten_up_to(grads))):
      r, _ = sgperm_jax.recommend(g, jnp.zeros_like(g), 1.0, 0.5)
      rows_w = (w.reshape(1, -1) if w.ndim == 1
                else w.reshape(-1, w.shape[-1]).T)
      rows_r = (r.reshape(1, -1) if r.ndim == 1
                else r.reshape(-1, r.shape[-1]).T)
      size = sgperm_jax.partition_size(lamda, rows_w.shape[1], 4)
      rows = _stages(rows_w, rows_r, size, alpha, True,
                     jax.random.fold_in(step_key, i))[3]
      out.append(rows.reshape(w.shape) if w.ndim == 1
                 else rows.T.reshape(w.shape))
    return jax.tree.unflatten(treedef, out)

  want = by_stages(params, grads)
  leaves = jax.tree.leaves(params)
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert any(bool(jnp.any(a != b)) for a, b in
             zip(jax.tree.leaves(want), leaves))


@jax.jit
def _together_and_alone(ws, rs, key):
  """Each batch's stages, then the searches of all batches at once and of
  each batch alone (one program)."""
  parts = [sgperm_jax.partition(key, w, r, w.shape[1]) for w, r in zip(ws, rs)]
  graphs = [sgperm_jax.permissibility_graph(p, 0.5) for p in parts]
  return (sgperm_jax.find_cycles(parts, graphs, cycle_search=_SEARCH),
          [sgperm_jax.find_cycles(p, g, cycle_search=_SEARCH)
           for p, g in zip(parts, graphs)])


@pytest.mark.slow
def test_find_cycles_batches_of_different_lengths(n=7):
  """Several batches searched in one loop equal each searched alone."""
  rng = np.random.default_rng(n)
  ws, rs = [], []
  for rows, length in [(3, n), (2, n + 5), (1, 2 * n)]:
    ws.append(jnp.asarray(rng.normal(size=(rows, length)), jnp.float32))
    rs.append(jnp.asarray(rng.normal(size=(rows, length)), jnp.float32))
  together, alone = _together_and_alone(ws, rs, jax.random.key(n))
  assert len(together) == 3
  for succ, want in zip(together, alone):
    np.testing.assert_array_equal(succ, want)
    assert np.any(np.asarray(succ) != np.arange(succ.shape[1]))
