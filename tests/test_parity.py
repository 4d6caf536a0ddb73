"""Parity with the reference implementation's recorded runs.

See docs/algorithm.md §13.
"""

import json
import pathlib

import jax
import numpy as np
import optax
import pytest

import sgperm_jax

FIXTURE = pathlib.Path(__file__).parent / "data" / "sgperm_parity.npz"


def _cases():
  data = np.load(FIXTURE)
  return data, json.loads(bytes(data["meta"]).decode())


def _tree(data, prefix):
  out = {}
  for key in data.files:
    if key.startswith(prefix + "/"):
      layer, name = key[len(prefix) + 1:].split("/")
      out.setdefault(layer, {})[name] = data[key]
  return out


DATA, META = _cases()


@pytest.mark.parametrize("case", META, ids=lambda c: f"case{c['case']}")
def test_matches_reference_exactly(case, x64):
  hp = dict(case["hyperparams"])
  c = case["case"]
  tx = sgperm_jax.sgperm(**hp, center_recommendations=False)  # the paper's
  params = jax.tree.map(jax.numpy.asarray, _tree(DATA, f"c{c}/params0"))
  state = tx.init(params)
  update = jax.jit(tx.update)
  for t in range(case["steps"]):
    grads = _tree(DATA, f"c{c}/grads{t}")
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    expected = _tree(DATA, f"c{c}/params{t + 1}")
    exact = sgperm_jax.exact_params(params, state)
    jax.tree.map(np.testing.assert_array_equal, exact, expected)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-15,
                                                         atol=0),
                 params, expected)


def test_fixture_cases_move_weights():
  """The fixtures are not trivial: weights change in every case."""
  for case in META:
    c = case["case"]
    before = _tree(DATA, f"c{c}/params0")
    after = _tree(DATA, f"c{c}/params{case['steps']}")
    changed = sum(int(np.sum(before[k][n] != after[k][n]))
                  for k in before for n in before[k])
    assert changed > 0, c
