"""CIFAR-10: the python-batch loader, augmentation, models, sync schedules and
``sgperm-jax train --data cifar10:DIR`` on a tiny directory."""

import json
import os
import pathlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sgperm_jax.experiments import cifar
from sgperm_jax.experiments import data
from sgperm_jax.experiments import models
from sgperm_jax.experiments import train
from tests import helpers

NAMES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def write_cifar(directory: pathlib.Path, count: int = 2, seed: int = 0,
                protocol: int = pickle.DEFAULT_PROTOCOL
                ) -> dict[str, tuple[np.ndarray, list[int]]]:
  """Writes the six CIFAR-10 python batches of ``count`` images each, as
  CIFAR does (pickled dicts with bytes keys); returns what each holds."""
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  written = {}
  for name in NAMES:
    rows = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, count)]
    batch = {b"batch_label": name.encode(), b"labels": labels,
             b"data": rows, b"filenames": [b"x.png"] * count}
    with open(directory / name, "wb") as f:
      pickle.dump(batch, f, protocol=protocol)
    written[name] = (rows, labels)
  return written


# ------------------------------------------------------------------ loading


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_load_values_channel_order_and_labels(tmp_path, protocol):
  written = write_cifar(tmp_path, count=3, protocol=protocol)
  d = data.load_dataset(f"cifar10:{tmp_path}")
  assert d.x_train.shape == (15, 32, 32, 3)
  assert d.x_test.shape == (3, 32, 32, 3)
  assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
  assert d.image_shape == (32, 32, 3) and d.num_classes <= 10
  # training: the five data batches in order; test: test_batch
  rows = np.concatenate([written[n][0] for n in NAMES[:5]])
  labels = np.concatenate([written[n][1] for n in NAMES[:5]])
  np.testing.assert_array_equal(d.y_train, labels)
  np.testing.assert_array_equal(d.y_test, written["test_batch"][1])
  # pixel (row y, column x) of image i is (R, G, B) from the three planes
  for i, y, x in [(0, 0, 0), (4, 5, 17), (14, 31, 30)]:
    rgb = [rows[i, plane * 1024 + y * 32 + x] for plane in range(3)]
    np.testing.assert_array_equal(d.x_train[i, y, x], np.float32(rgb) / 255)
  np.testing.assert_array_equal(
      d.x_test[2, ..., 1].ravel(),
      written["test_batch"][0][2, 1024:2048].astype(np.float32) / 255)


def test_directory_containing_the_batches_directory(tmp_path):
  write_cifar(tmp_path / "cifar-10-batches-py")
  d = data.load_dataset(f"cifar10:{tmp_path}")
  assert len(d.y_train) == 10 and len(d.y_test) == 2
  assert d.name == f"cifar10:{tmp_path}"


def test_missing_files_are_named(tmp_path):
  write_cifar(tmp_path)
  (tmp_path / "data_batch_3").unlink()
  (tmp_path / "test_batch").unlink()
  message = helpers.data_error(f"cifar10:{tmp_path}")
  assert str(tmp_path) in message
  assert "data_batch_3, test_batch" in message
  assert "nothing is downloaded" in message
  missing = f"cifar10:{tmp_path / 'nope'}"
  assert "no such directory" in helpers.data_error(missing)
  assert "cifar10:PATH" in helpers.data_error("cifar10")


class _Exploit:
  """Unpickling this would create ``path`` (were it allowed to)."""

  def __init__(self, path):
    self.path = str(path)

  def __reduce__(self):
    return (os.makedirs, (self.path,))


def test_unsafe_pickle_is_refused_not_run(tmp_path):
  write_cifar(tmp_path)
  marker = tmp_path / "was-run"
  with open(tmp_path / "data_batch_2", "wb") as f:
    pickle.dump({b"data": _Exploit(marker), b"labels": [0]}, f)
  message = helpers.data_error(f"cifar10:{tmp_path}")
  assert str(tmp_path / "data_batch_2") in message
  assert "refusing to unpickle" in message and "makedirs" in message
  assert not marker.exists()


@pytest.mark.parametrize("batch, expected", [
    ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]},
     "shape (count, 3072), found a uint8 array of shape (2, 3000)"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},
     "1 labels for 2 images"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]},
     "labels must lie in 0..9"),
    ({b"labels": [0]}, "no b'data' entry"),
    ([1, 2], "expected a pickled dict"),
], ids=["width", "count", "range", "no-data", "not-dict"])
def test_malformed_batch_says_what_is_wrong(tmp_path, batch, expected):
  write_cifar(tmp_path)
  with open(tmp_path / "test_batch", "wb") as f:
    pickle.dump(batch, f)
  message = helpers.data_error(f"cifar10:{tmp_path}")
  assert str(tmp_path / "test_batch") in message and expected in message


def test_not_a_pickle(tmp_path):
  write_cifar(tmp_path)
  (tmp_path / "data_batch_1").write_bytes(b"\x80\x04garbage")
  message = helpers.data_error(f"cifar10:{tmp_path}")
  assert "data_batch_1: not a valid pickle" in message


# ------------------------------------------------------------ augmentation


def _images(count=16, side=8, seed=0):
  """Images with no zero pixel, so that zeros show the padding."""
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(0.1, 1.0, (count, side, side, 3)),
                     jnp.float32)


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """``image`` moved by (dy, dx), zeros where nothing moved in."""
  out = np.zeros_like(image)
  h, w = image.shape[:2]
  out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = image[
      max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
  return out


def test_crop_is_a_zero_filled_shift_of_at_most_the_padding():
  x = _images()
  y = np.asarray(cifar.augment(jax.random.PRNGKey(1), x, padding=4,
                               flip=False))
  assert y.shape == x.shape and y.dtype == x.dtype
  shifts = []
  for image, out in zip(np.asarray(x), y):
    found = [(dy, dx) for dy in range(-4, 5) for dx in range(-4, 5)
             if np.array_equal(out, _shift(image, dy, dx))]
    assert found, "a crop that is no shift of the image"
    shifts.append(found[0])
  assert len(set(shifts)) > 1  # the offsets are drawn per image


def test_flip_is_an_exact_mirror():
  x = _images()
  y = np.asarray(cifar.augment(jax.random.PRNGKey(2), x, padding=0))
  mirrored = [np.array_equal(out, image[:, ::-1])
              for image, out in zip(np.asarray(x), y)]
  kept = [np.array_equal(out, image) for image, out in zip(np.asarray(x), y)]
  assert all(m != k for m, k in zip(mirrored, kept))  # one or the other
  assert any(mirrored) and any(kept)


def test_augment_is_keyed_pure_and_jittable():
  x = _images()
  key = jax.random.PRNGKey(3)
  a = cifar.augment(key, x)
  np.testing.assert_array_equal(a, cifar.augment(key, x))
  assert not np.array_equal(a, cifar.augment(jax.random.PRNGKey(4), x))
  np.testing.assert_array_equal(a, jax.jit(cifar.augment)(key, x))
  np.testing.assert_array_equal(cifar.augment(key, x, padding=0, flip=False),
                                x)
  with pytest.raises(ValueError, match="padding"):
    cifar.augment(key, x, padding=-1)


def test_augment_keys_depend_on_seed_and_step_only():
  keys = train.augment_keys(5, 0, 6)
  assert keys.shape == (6, 2) and keys.dtype == np.uint32
  np.testing.assert_array_equal(train.augment_keys(5, 3, 3), keys[3:])
  assert len({k.tobytes() for k in keys}) == 6
  assert not np.array_equal(train.augment_keys(6, 0, 6), keys)


def test_augment_defaults_on_for_cifar10_only():
  parse = train.build_parser().parse_args
  assert train.augments(parse(["--data", "cifar10:/x"]))
  assert not train.augments(parse(["--data", "cifar10:/x", "--no-augment"]))
  assert not train.augments(parse([]))
  assert train.augments(parse(["--augment"]))


# ----------------------------------------------------------------- models


def test_model_output_shapes_on_tiny_images():
  """Traced only (building the weights of all four would take seconds)."""

  def outputs(name, x):
    model = models.make_model(name, x.shape[1:], 10, seed=1)
    model.train()
    logits = model(x)
    model.eval()
    return logits, model(x), nnx.state(model, nnx.BatchStat)

  for name, shape in (("conv2", (8, 8, 3)), ("conv4", (8, 12, 3)),
                      ("conv13", (8, 8, 3)), ("resnet20", (9, 8, 1))):
    train_out, eval_out, stats = jax.eval_shape(
        lambda x, n=name: outputs(n, x), jnp.ones((2, *shape)))
    assert train_out.shape == eval_out.shape == (2, 10), name
    assert jax.tree.leaves(stats), name  # BatchNorm's running statistics


def test_parameter_counts_on_cifar_images():
  counts = {}
  for name in ("conv2", "conv4", "conv13", "resnet20"):
    model = nnx.eval_shape(lambda n=name: models.make_model(n, (32, 32, 3),
                                                            10))
    params = nnx.state(model, nnx.Param)
    counts[name] = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  # Conv2 4.3M, Conv4 2.4M, Conv13 15M as in Train-by-Reconnect (with their
  # BatchNorm scales and offsets); ResNet-20 0.27M as in He et al.
  assert counts == {"conv2": 4_302_922, "conv4": 2_427_722,
                    "conv13": 14_991_946, "resnet20": 269_722}


# ------------------------------------------------------- sync-period schedule


def test_sync_period_parsing():
  parse = train.parse_sync_period
  assert parse("100") == 100
  assert parse(" 20, 10:50 ,30:100") == ((0, 20), (10, 50), (30, 100))
  assert parse("0:7") == 7
  assert parse("0:7,2:9") == ((0, 7), (2, 9))


@pytest.mark.parametrize("text, reason", [
    ("abc", "expected a period"),
    ("20,x:5", "expected a period"),
    ("0", "at least 1"),
    ("20,5:0", "at least 1"),
    ("5:20", "must start at epoch 0"),
    ("20,50", "give the epoch it starts at"),
    ("20,10:50,10:60", "epochs must increase"),
    ("", "expected a period"),
])
def test_bad_sync_period_names_the_option(capsys, text, reason):
  assert train.main(["--sync-period", text]) == 2
  err = capsys.readouterr().err
  assert "argument --sync-period" in err and reason in err


def test_sync_period_schedule_over_steps():
  fn = train.sync_period_schedule(((0, 20), (10, 50), (30, 100)), 4)
  steps = jnp.arange(0, 200, 13)
  expected = [20 if s < 40 else 50 if s < 120 else 100 for s in steps]
  got = jax.jit(jax.vmap(fn))(steps)
  assert got.dtype == jnp.int32
  np.testing.assert_array_equal(got, expected)
  args = train.build_parser().parse_args(["--sync-period", "2,1:3"])
  tx = train.make_optimizer("laperm", args, steps_per_epoch=5)
  state = tx.init({"w": jnp.ones((3, 2))})
  assert int(state.count) == 0


def test_metrics_record_best_only_with_keep_best():
  result = train.RunResult("adam", 0.5, 1.0, 2, 10, 1.0, 0.5, 0.5,
                           {"test_accuracy": [0.4, 0.5]}, params={"w": 1})
  assert "best_epoch" not in result.metrics()
  assert "params" not in result.metrics()
  best = train.RunResult("adam", 0.5, 1.0, 2, 10, 1.0, 0.5, 0.5,
                         {"test_accuracy": [0.5, 0.4]}, best_epoch=1,
                         best_test_accuracy=0.5)
  assert best.metrics()["best_epoch"] == 1


# ------------------------------------------------------------------- the CLI


@pytest.mark.slow
def test_train_conv2_laperm_keep_best_on_tiny_cifar(tmp_path, capsys):
  directory = tmp_path / "cifar"
  write_cifar(directory / "cifar-10-batches-py", count=4)
  out_json = tmp_path / "m.json"
  rc = train.main(["--data", f"cifar10:{directory}", "--model", "conv2",
                   "--optimizer", "laperm", "--epochs", "2", "--batch-size",
                   "4", "--sync-period", "2,1:3", "--keep-best", "--json",
                   str(out_json), "--no-progress"])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  assert "20 training and 4 test images of 32x32x3" in captured.out
  assert "augmented" in captured.out
  doc = json.loads(out_json.read_text())
  history = doc["runs"]["laperm"]["history"]["test_accuracy"]
  assert len(history) == 2 and doc["steps"] == 2 * 5
  assert doc["best_epoch"] in (1, 2)
  assert doc["best_test_accuracy"] == max(history)
  assert doc["test_accuracy"] == history[doc["best_epoch"] - 1]
  assert (f"laperm: kept the weights of epoch {doc['best_epoch']} of 2"
          in captured.out)
  config = doc["config"]
  assert config["dataset"] == f"cifar10:{directory}"
  assert config["model"] == "conv2" and config["optimizer"] == "laperm"
  assert config["keep_best"] is True and config["augment"] is True
  assert config["sync_period"] == [[0, 2], [1, 3]]
  assert config["learning_rate"] == {"laperm": 1e-3}
