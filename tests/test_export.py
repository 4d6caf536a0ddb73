"""Compact export: save_permutation then load_permutation gives back every
leaf bit for bit (after real SGPerm steps, with ties, -0.0, NaN payloads and
subnormals, in float32 and bfloat16), with the banks stored or regenerated
from init_fn; what is stored how; the sizes; and the errors."""

import functools
import json
import typing
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sgperm_jax
from sgperm_jax import export
from sgperm_jax.initializers import agnostic
from tests import helpers

LAYOUT = {"dense0": {"kernel": "neurons", "bias": "neurons"},
          "dense1": {"kernel": "neurons", "bias": "neurons"},
          "frozen": None, "scale": "neurons"}


def init_fn(seed):
  """A tiny MLP-shaped tree: ties (agnostic, rounded values), bfloat16, a
  leaf with the layout None and a scalar."""
  k0, k1, k2 = jax.random.split(jax.random.key(seed), 3)
  return {
      "dense0": {"kernel": agnostic(0.5, 0.5)(k0, (6, 4)),
                 "bias": jnp.zeros(4)},
      "dense1": {"kernel": jnp.round(jax.random.normal(k1, (4, 3)), 1
                                     ).astype(jnp.bfloat16),
                 "bias": jnp.zeros(3, jnp.bfloat16)},
      "frozen": jax.random.normal(k2, (3, 2)),
      "scale": jnp.float32(2.0),
  }


def _labels(params):
  return jax.tree_util.tree_map_with_path(
      lambda path, x: "adam" if jax.tree_util.keystr(path).endswith(
          "['bias']") else "perm", params)


def _perm_layout(params):
  # under optax.partition, the leaves of the other group are MaskedNodes
  return {k: (None if k == "frozen" else jax.tree.map(lambda _: "neurons", v))
          for k, v in params.items()}


@functools.cache
def _trained():
  """``(initial, params, opt_state)`` after 3 steps of SGPerm on the kernels
  and Adam on the biases (``optax.partition``)."""
  initial = init_fn(0)
  tx = optax.partition(
      {"perm": sgperm_jax.sgperm(lamda0=0.5, partition_size_min=2,
                                 alpha0=1.0, layout=_perm_layout),
       "adam": optax.adam(0.1)}, _labels(initial))

  @jax.jit
  def step(params, state, i):
    grads = jax.tree.map(
        lambda p: jnp.sin(jnp.arange(p.size, dtype=jnp.float32) + i).reshape(
            p.shape).astype(p.dtype), params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  params, state = initial, tx.init(initial)
  for i in range(3):
    params, state = step(params, state, i)
  return initial, params, state


def _assert_same_bits(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(helpers.bits(x), helpers.bits(y))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["bank", "init_fn"])
def test_round_trip_after_sgperm_steps_is_bit_exact(tmp_path, mode):
  initial, params, state = _trained()
  exact = sgperm_jax.exact_params(params, state)
  for name in ("dense0", "dense1"):  # the test trains something
    assert not np.array_equal(exact[name]["kernel"], initial[name]["kernel"])
  helpers.assert_same_rows(
      {k: exact[k]["kernel"] for k in ("dense0", "dense1")},
      {k: initial[k]["kernel"] for k in ("dense0", "dense1")}, by_bits=True)
  kwargs = dict(init_fn=init_fn, seed=0) if mode == "init_fn" else {}
  path = tmp_path / "net.npz"
  info = export.save_permutation(path, params, state, layout=LAYOUT,
                                 **kwargs)
  loaded = export.load_permutation(path, init_fn=kwargs.get("init_fn"))
  _assert_same_bits(loaded, exact)
  # the biases, trained by Adam, are no permutation of their initial values
  bias = "raw" if mode == "init_fn" else "permutation"
  assert info["leaves"] == {
      "['dense0']['bias']": bias, "['dense0']['kernel']": "permutation",
      "['dense1']['bias']": bias, "['dense1']['kernel']": "permutation",
      "['frozen']": "raw", "['scale']": "raw"}
  assert info["mode"] == mode
  assert info["file_bytes"] == path.stat().st_size
  assert info["raw_float32_bytes"] == 4 * (24 + 4 + 12 + 3 + 6 + 1)
  with np.load(path, allow_pickle=False) as npz:
    names = set(npz.files)
    assert npz["index_uint8"].dtype == np.uint8
    assert npz["index_uint8"].size == 24 + 12 + (7 if mode == "bank" else 0)
  assert any(n.startswith("bank_") for n in names) == (mode == "bank")


@pytest.mark.slow  # shares the trained net of the round trips above
def test_the_template_gives_the_structure(tmp_path):
  _, params, state = _trained()
  path = tmp_path / "net.npz"
  export.save_permutation(path, params, state, layout=LAYOUT)
  like = jax.eval_shape(lambda: params)
  _assert_same_bits(export.load_permutation(path, like=like),
                    sgperm_jax.exact_params(params, state))


def _permuted(x, layout, rng):
  """``x`` with each row's values shuffled (a different order per row)."""
  rows = np.array(helpers.rows(x, layout))
  for r in rows:
    rng.shuffle(r)
  if layout == "whole" or x.ndim == 1:
    return rows.reshape(x.shape)
  return rows.T.reshape(x.shape)


SPECIAL = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-40, np.inf, -np.inf, 1.0,
                    1.0, -2.5], np.float32)


def _with_specials(rng, shape, dtype):
  """Values from a small palette (ties) with -0.0, subnormals, infinities
  and NaNs of several payloads and signs."""
  x = rng.choice(SPECIAL, size=shape).astype(dtype)
  flat = x.reshape(-1).view(f"u{x.dtype.itemsize}")
  nans = (np.array([0x7fc00001, 0xffc00123, 0x7f800042], np.uint32)
          if x.dtype.itemsize == 4 else
          np.array([0x7fc1, 0xffc3, 0x7f81], np.uint16))
  picks = rng.random(flat.size) < 0.15
  flat[picks] = rng.choice(nans, size=picks.sum())
  return x


@settings(max_examples=8, deadline=None, database=None)
@given(st.sampled_from([(5,), (4, 3), (2, 3, 4), (3, 1)]),
       st.sampled_from(["float32", "bfloat16"]),
       st.sampled_from(["neurons", "whole"]), st.integers(0, 2**31 - 1))
def test_round_trip_of_special_values_and_ties(tmp_path_factory, shape,
                                               dtype, layout, seed):
  rng = np.random.default_rng(seed)
  dtype = jnp.dtype(dtype)
  start = _with_specials(rng, shape, dtype)
  tree = {"w": _permuted(start, layout, rng),
          "v": [_permuted(start, layout, rng), start.copy()]}
  path = tmp_path_factory.mktemp("x") / "w.npz"
  init = lambda seed: {"w": start, "v": [start, start]}
  for kwargs in ({}, dict(init_fn=init, seed=seed)):
    info = export.save_permutation(path, tree, layout=layout, **kwargs)
    assert set(info["leaves"].values()) == {"permutation"}
    _assert_same_bits(export.load_permutation(
        path, init_fn=kwargs.get("init_fn")), tree)


def test_a_leaf_that_is_no_permutation_of_its_bits_is_stored_raw(tmp_path):
  """-0.0 for +0.0 changes no value, but the bits: stored raw."""
  start = np.array([[0.0, 1.0], [2.0, 0.0]], np.float32)
  tree = {"same": start[::-1].copy(), "signed": -start}
  init = lambda seed: {"same": start, "signed": start}
  path = tmp_path / "w.npz"
  info = export.save_permutation(path, tree, layout="whole", init_fn=init,
                                 seed=1)
  assert info["leaves"] == {"['same']": "permutation", "['signed']": "raw"}
  _assert_same_bits(export.load_permutation(path, init_fn=init), tree)


def test_dicts_lists_tuples_and_none_round_trip_without_a_template(tmp_path):
  tree = {"a": [np.arange(3.0, dtype=np.float32),
                (np.ones((2, 2), np.float16), None)],
          "b": {}, "i": {3: np.array(True), 0: np.int32(7)}}
  path = tmp_path / "w.npz"
  info = export.save_permutation(path, tree)
  assert info["leaves"] == {"['a'][0]": "permutation",
                            "['a'][1][0]": "permutation", "['i'][0]": "raw",
                            "['i'][3]": "raw"}
  loaded = export.load_permutation(path)
  assert isinstance(loaded["a"], list) and isinstance(loaded["a"][1], tuple)
  assert loaded["a"][1][1] is None and loaded["b"] == {}
  _assert_same_bits(loaded, tree)
  assert loaded["i"][0].dtype == np.int32 and loaded["i"][3].dtype == bool


class Pair(typing.NamedTuple):
  w: typing.Any
  b: typing.Any


def test_other_nodes_need_a_template(tmp_path):
  tree = Pair(np.arange(6.0, dtype=np.float32).reshape(3, 2),
              np.zeros(2, np.float32))
  path = tmp_path / "w.npz"
  export.save_permutation(path, tree)
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*pass a template"):
    export.load_permutation(path)
  _assert_same_bits(export.load_permutation(path, like=tree), tree)
  with pytest.raises(ValueError, match=r"like does not have.*\.b"):
    export.load_permutation(path, like={"w": tree.w})
  with pytest.raises(ValueError, match=r"\.w is saved as float32\[3, 2\]"):
    export.load_permutation(path, like=Pair(np.zeros((2, 3)), tree.b))


def test_flax_nnx_state_round_trips_into_a_model(tmp_path):
  from flax import nnx  # noqa: PLC0415 (an optional dependency)
  from sgperm_jax.experiments import models  # noqa: PLC0415

  def make(seed):
    return models.make_model("mlp", (2, 2, 1), 3, seed=seed, hidden=(4,))

  state = nnx.state(make(0), nnx.Param)
  path = tmp_path / "m.npz"
  info = export.save_permutation(
      path, state, init_fn=lambda s: nnx.state(make(s), nnx.Param), seed=0)
  assert info["leaves"]["['layers'][0]['kernel']"] == "permutation"
  model = make(1)
  nnx.update(model, export.load_permutation(
      path, like=nnx.state(model, nnx.Param),
      init_fn=lambda s: nnx.state(make(s), nnx.Param)))
  x = jnp.linspace(-1, 1, 8).reshape(2, 2, 2, 1)
  np.testing.assert_array_equal(model(x), make(0)(x))
  plain = export.load_permutation(
      path, init_fn=lambda s: nnx.state(make(s), nnx.Param))
  assert isinstance(plain["layers"][0], dict)  # nested dicts without like


def test_index_types_are_the_smallest_that_fit(tmp_path):
  assert [export.index_dtype(n) for n in (2, 256, 257, 65536, 65537)] == [
      np.uint8, np.uint8, np.uint16, np.uint16, np.uint32]
  tree = {"small": np.ones((256, 1), np.float32),
          "large": np.arange(300, dtype=np.float32)}
  path = tmp_path / "w.npz"
  export.save_permutation(path, tree)
  with np.load(path) as npz:
    assert npz["index_uint8"].size == 256 and npz["index_uint16"].size == 300


def test_init_fn_mode_takes_about_a_quarter_of_float32(tmp_path):
  init = lambda seed: {"kernel": jax.random.normal(jax.random.key(seed),
                                                   (128, 64))}
  params = init(0)
  path = tmp_path / "w.npz"
  info = export.save_permutation(path, params, init_fn=init, seed=0)
  assert info["raw_float32_bytes"] == 4 * 128 * 64
  assert 0.25 < info["ratio"] < 0.3  # uint8 indices, plus the metadata
  bank = export.save_permutation(path, params)
  assert 1.25 < bank["ratio"] < 1.3  # the values, plus the indices
  compressed = export.save_permutation(path, params, init_fn=init, seed=0,
                                       compress=True)
  assert compressed["file_bytes"] < info["file_bytes"]
  _assert_same_bits(export.load_permutation(path, init_fn=init), params)


def test_errors_name_the_file_or_the_leaf(tmp_path):
  path = tmp_path / "w.npz"
  with pytest.raises(FileNotFoundError, match=r"^sgperm_jax: .*no file"):
    export.load_permutation(path)
  path.write_text("not an archive")
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*not a file written by"):
    export.load_permutation(path)
  np.savez(path, x=np.zeros(3))
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*not a file written by"):
    export.load_permutation(path)
  np.save(tmp_path / "a.npy", np.zeros(3))
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*not a file written by"):
    export.load_permutation(tmp_path / "a.npy")

  init = lambda seed: {"b": jnp.zeros(3),
                       "w": jax.random.normal(jax.random.key(seed), (4, 2))}
  export.save_permutation(path, init(0), init_fn=init, seed=0)
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*leaf \['w'\]: the"
                     r" initial values do not match .* seed other than 0"):
    export.load_permutation(path, init_fn=lambda s: init(s + 1))
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*pass that init_fn"):
    export.load_permutation(path)
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*leaf \['w'\] of"
                     r" init_fn\(0\) is float32\[2, 4\]"):
    export.load_permutation(path, init_fn=lambda s: {
        "b": jnp.zeros(3), "w": jnp.zeros((2, 4))})
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*"
                     r"init_fn\(0\) has no leaf \['w'\]"):
    export.load_permutation(path, init_fn=lambda s: {"b": jnp.zeros(3)})
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*"
                     r"init_fn and seed go together"):
    export.save_permutation(path, init(0), seed=0)
  with pytest.raises(TypeError, match=r"^sgperm_jax: .*"
                     r"seed must be an integer"):
    export.save_permutation(path, init(0), init_fn=init, seed=0.5)
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*layout"):
    export.save_permutation(path, init(0), layout="rows")
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*"
                     r"opt_state holds no sgperm_jax"):
    export.save_permutation(path, init(0), optax.adam(1.0).init(init(0)))
  export.save_permutation(path, init(0))
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*init_fn is not needed"):
    export.load_permutation(path, init_fn=init)
  with pytest.raises(TypeError, match=r"^sgperm_jax: .*cannot be exported"):
    export.save_permutation(path, {"s": np.array(["text"])})


def test_a_damaged_file_is_reported(tmp_path):
  path = tmp_path / "w.npz"
  export.save_permutation(path, {"w": np.arange(4.0, dtype=np.float32)})
  with np.load(path) as npz:
    arrays = dict(npz)
  arrays["bank_uint32"] = arrays["bank_uint32"][::-1].copy()
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=r"leaf \['w'\].*corrupt"):
    export.load_permutation(path)
  meta = json.loads(bytes(arrays["sgperm_jax_export"]).decode())
  meta["version"] = 99
  arrays["sgperm_jax_export"] = np.frombuffer(json.dumps(meta).encode(),
                                              np.uint8)
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match="format version 99"):
    export.load_permutation(path)
  assert zipfile.is_zipfile(path)


def test_repeated_indices_are_reported(tmp_path):
  path = tmp_path / "w.npz"
  export.save_permutation(path, {"w": np.arange(4.0, dtype=np.float32)})
  with np.load(path) as npz:
    arrays = dict(npz)
  arrays["index_uint8"] = np.zeros_like(arrays["index_uint8"])
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=r"^sgperm_jax: .*\['w'\].* not a"
                     " permutation"):
    export.load_permutation(path)


def test_float8_leaves_are_stored_raw(tmp_path):
  f8 = jnp.dtype(jnp.float8_e4m3fn)
  tree = {"w": np.arange(8.0).reshape(4, 2).astype(f8),
          "v": np.arange(6.0, dtype=np.float32)}
  info = export.save_permutation(tmp_path / "w.npz", tree)
  assert info["leaves"] == {"['v']": "permutation", "['w']": "raw"}
  _assert_same_bits(export.load_permutation(tmp_path / "w.npz"), tree)


def test_an_empty_tree_round_trips(tmp_path):
  for tree in (None, {}, []):
    export.save_permutation(tmp_path / "e.npz", tree)
    assert export.load_permutation(tmp_path / "e.npz") == tree
