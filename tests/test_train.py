"""The ``sgperm-jax train`` command end to end on tiny settings; its errors."""

import contextlib
import functools
import gzip
import io
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sgperm_jax
from sgperm_jax import cli
from sgperm_jax.experiments import data
from sgperm_jax.experiments import models
from sgperm_jax.experiments import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory):
  """``sgperm-jax train --compare adam`` for 2 epochs with JSON and plot,
  run once for the tests that read it: the directory, the exit status, the
  captured stdout and stderr, and how often each optimizer's train step was
  traced."""
  tmp_path = tmp_path_factory.mktemp("compare")
  traces = []
  make = train.train_step_fn

  def counting(graphdef, tx, *args):
    step = make(graphdef, tx, *args)
    index = len(traces)
    traces.append(0)

    def traced(*args):
      traces[index] += 1
      return step(*args)

    return traced

  out, err = io.StringIO(), io.StringIO()
  with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(
      out), contextlib.redirect_stderr(err):
    mp.setattr(train, "train_step_fn", counting)
    rc = cli.main(["train", *COMPARE, "--json", str(tmp_path / "m.json"),
                   "--plot", str(tmp_path / "curves.png")])
  return tmp_path, rc, out.getvalue(), err.getvalue(), traces


# The settings of compare_run, which test_resume_continues_exactly resumes.
COMPARE = ["--epochs", "2", "--batch-size", "64", "--hidden", "64",
           "--compare", "adam"]


@pytest.mark.slow
def test_train_compare_json_plot(compare_run):
  tmp_path, rc, out, err, count_traces = compare_run
  out_json, out_png = tmp_path / "m.json", tmp_path / "curves.png"
  assert rc == 0, err
  assert count_traces == [1, 1]  # one compilation per optimizer, 2 epochs
  doc = json.loads(out_json.read_text())
  steps = 2 * (1438 // 64)
  assert doc["optimizer"] == "sgperm" and doc["epochs"] == 2
  assert doc["steps"] == steps and doc["seconds"] > 0
  assert set(doc["runs"]) == {"sgperm", "adam"}
  for name, run in doc["runs"].items():
    assert run["steps"] == steps
    assert len(run["history"]["test_accuracy"]) == 2
    assert run["test_accuracy"] == run["history"]["test_accuracy"][-1]
    assert 0.0 < run["test_loss"] < 3.0, name
  assert doc["test_accuracy"] == doc["runs"]["sgperm"]["test_accuracy"]
  assert doc["test_accuracy"] >= 0.85  # a real model: 0.919 measured
  assert doc["config"]["hidden"] == [64]
  # defaults are recorded as the values they stood for
  assert doc["config"]["alpha0"] == 0.5 and doc["config"]["beta1"] == 0.99
  assert doc["config"]["learning_rate"] == {"adam": 1e-3}
  assert doc["config"]["sync_period"] == 100
  assert out_png.read_bytes()[:8] == PNG_MAGIC
  assert f"wrote metrics (JSON) to {out_json}" in out
  assert f"wrote plot to {out_png}" in out
  assert "compiling the first step" in err
  table = [ln for ln in out.splitlines() if ln.startswith("| ")]
  assert table[0].split("|")[1:-1] == [
      " optimizer ", " test accuracy ", " test loss ", " steps ", " seconds ",
      " steps/s "]
  assert [row.split("|")[1].strip() for row in table[1:]] == ["sgperm",
                                                              "adam"]
  assert "step/s" in err  # the progress bar
  assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png",
                                                        "m.json"]


def _digits_idx_dir(tmp_path, count=320):
  """A directory of MNIST-style IDX files holding some 8x8 digits."""
  d = data.load_digits()
  images = np.rint(d.x_train[:count, ..., 0] * 255).astype(np.uint8)
  labels = d.y_train[:count].astype(np.uint8)
  for name, array in (("train-images-idx3-ubyte.gz", images),
                      ("train-labels-idx1-ubyte.gz", labels)):
    raw = (0x0800 + array.ndim).to_bytes(4, "big") + b"".join(
        int(s).to_bytes(4, "big") for s in array.shape) + array.tobytes()
    (tmp_path / name).write_bytes(gzip.compress(raw))
  return tmp_path


@pytest.mark.slow
def test_conv_on_idx_files_with_other_optimizers(tmp_path, capsys):
  directory = _digits_idx_dir(tmp_path)
  out_json = tmp_path / "m.json"
  has_laperm = hasattr(sgperm_jax, "laperm")
  compare = "laperm" if has_laperm else "sgd"
  rc = train.main(["--dataset", str(directory), "--model", "conv",
                   "--channels", "4", "--optimizer", "sgperm-adam",
                   "--compare", compare, "--epochs", "2", "--batch-size",
                   "64", "--alpha0", "0.3", "--sync-period", "6",
                   "--track-stats", "--json", str(out_json),
                   "--plot", str(tmp_path / "c.png"), "--no-progress"])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  doc = json.loads(out_json.read_text())
  assert list(doc["runs"]) == ["sgperm-adam", *compare.split(",")]
  assert doc["steps"] == 2 * 256 // 64
  assert doc["config"]["alpha0"] == 0.3
  assert doc["config"]["learning_rate"] == {"laperm": 1e-3}
  assert "256 training and 64 test images of 8x8x1" in captured.out
  # --track-stats: every epoch logs its last step's (laperm: sync's) record
  sg = doc["runs"]["sgperm-adam"]["history"]
  assert set(train.STATS_FIELDS[:-1]) <= set(sg)
  assert "free_distance" not in sg
  assert all(0 < m <= 1 for m in sg["moved_fraction"])
  assert all(c >= 1 and length >= 2 for c, length in
             zip(sg["cycles"], sg["mean_cycle_length"]))
  la = doc["runs"]["laperm"]["history"]
  assert la["free_distance"][0] is None  # no sync in the 4 steps of epoch 1
  assert la["free_distance"][1] > 0 and la["moved_fraction"][1] > 0
  assert (tmp_path / "c-stats.png").read_bytes()[:8] == PNG_MAGIC
  assert f"wrote statistics plot to {tmp_path / 'c-stats.png'}" in (
      captured.out)


def test_stats_summary_weights_the_leaves_by_size():
  params = {"a": jnp.arange(8.0).reshape(4, 2), "b": jnp.arange(3.0),
            "c": jnp.zeros(())}
  tx = sgperm_jax.sgperm(lamda0=1.0, partition_size_min=2, track_stats=True)
  state = tx.init(params)
  assert train.stats_summary(sgperm_jax.sgperm().init(params), params) is None
  assert train.stats_summary(state, params) == dict.fromkeys(
      train.STATS_FIELDS[:-1])
  grads = {"a": jnp.array([[1., -1.], [-1., 1.], [1., -1.], [-1., 1.]]),
           "b": jnp.array([1., 0., -1.]), "c": jnp.ones(())}
  _, state = jax.jit(tx.update)(grads, state, params)
  stats = sgperm_jax.permutation_stats(state)
  got = train.stats_summary(state, params)
  a, b = stats["a"], stats["b"]
  moved = 8 * float(a.moved_fraction) + 3 * float(b.moved_fraction)
  cycles = int(a.cycles) + int(b.cycles)
  assert cycles >= 1
  assert got == pytest.approx({
      "moved_fraction": moved / 11,
      "mean_displacement": (8 * float(a.mean_displacement)
                            + 3 * float(b.mean_displacement)) / 11,
      "cycles": cycles, "mean_cycle_length": moved / cycles})


def _bad_idx(tmp_path):
  path = tmp_path / "train-images-idx3-ubyte"
  path.write_bytes(b"\x00\x00\x08\x01" + bytes(8))  # labels' magic
  (tmp_path / "train-labels-idx1-ubyte").write_bytes(
      b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
  return path, "bad IDX magic number"


def _bad_csv(tmp_path):
  path = tmp_path / "pixels.csv"
  path.write_text("0,0,0,0,1\n0,0,0,0,2\n0,0,0,3\n")
  return path, "line 3 has 4 columns, expected 5"


def _missing(tmp_path):
  return tmp_path / "absent.csv.gz", "no such file"


@pytest.mark.parametrize("make_bad", [_missing, _bad_idx, _bad_csv],
                         ids=["missing", "idx-magic", "csv-columns"])
def test_bad_data_file_exits_2_and_writes_nothing(tmp_path, capsys,
                                                  make_bad):
  path, reason = make_bad(tmp_path)
  before = sorted(tmp_path.iterdir())
  rc = cli.main(["train", "--dataset", str(path), "--json",
                 str(tmp_path / "m.json"), "--plot", str(tmp_path / "m.png")])
  captured = capsys.readouterr()
  assert rc == 2
  assert captured.err.count("\n") == 1, captured.err
  assert str(path) in captured.err and reason in captured.err
  assert captured.out == ""
  assert sorted(tmp_path.iterdir()) == before


@pytest.mark.parametrize("argv, reason", [
    (["--compare", "adam,nesterov"], "unknown optimizer"),
    (["--epochs", "0"], "must be at least 1"),
    (["--batch-size", "5000"], "larger than the training set"),
    (["--lamda0", "2"], "lamda0"),
    (["--json", "/nonexistent-dir/m.json"], "does not exist"),
])
def test_bad_options_exit_2(tmp_path, capsys, argv, reason):
  rc = train.main(argv)
  assert rc == 2
  assert reason in capsys.readouterr().err


@pytest.mark.slow
def test_python_dash_m_help():
  proc = subprocess.run([sys.executable, "-m",
                         "sgperm_jax.experiments.train", "--help"],
                        capture_output=True, text=True, check=False,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "--compare" in proc.stdout and "--lamda0" in proc.stdout


@functools.cache
def _small_mlp():
  """A 64-16-10 MLP split into its graph and params (built once: creating
  the weights compiles)."""
  return nnx.split(models.make_model("mlp", (8, 8, 1), 10, hidden=(16,)),
                   nnx.Param)


def _images(count, seed=0):
  """Random 8x8 images in [0, 1] and labels of 10 classes."""
  rng = np.random.default_rng(seed)
  return (rng.random((count, 8, 8, 1), np.float32),
          rng.integers(0, 10, count).astype(np.int32))


def test_permutation_optimizers_are_evaluated_on_exact_weights():
  graphdef, params = _small_mlp()
  x, y = map(jnp.asarray, _images(64))
  # the state of one permutation step that reversed every kernel column
  exact = jax.tree.map(lambda p: p[::-1], params)
  state = (sgperm_jax.RecommendationState(
      jnp.ones([], jnp.int32), jax.tree.map(jnp.zeros_like, params)),
           sgperm_jax.PermutationState(jnp.ones([], jnp.int32),
                                       jax.random.PRNGKey(0), exact))
  noisy = jax.tree.map(lambda p: p + 0.5, params)
  mask = jnp.ones(64, bool)
  plain_eval = jax.jit(train.eval_fn(graphdef, permutes=False))
  exact_eval = jax.jit(train.eval_fn(graphdef, permutes=True))
  on_exact = plain_eval(exact, state, x, y, mask)
  np.testing.assert_array_equal(exact_eval(noisy, state, x, y, mask),
                                on_exact)
  plain = plain_eval(noisy, state, x, y, mask)
  assert not np.array_equal(plain, on_exact)


def test_evaluation_masks_the_padding():
  graphdef, params = _small_mlp()
  x, y = _images(50)
  evaluate = jax.jit(train.eval_fn(graphdef, permutes=False))
  chunks = train.eval_chunks(x, y, 32)
  assert len(chunks) == 2 and int(chunks[1][2].sum()) == 18
  total = sum(np.asarray(evaluate(params, (), *c)) for c in chunks)
  whole = evaluate(params, (), jnp.asarray(x), jnp.asarray(y),
                   jnp.ones(50, bool))
  np.testing.assert_allclose(total, whole, rtol=1e-5)


def test_batches_are_shared_by_optimizers_and_drop_the_remainder():
  a = train.batch_order(3, 1, 100, 32)
  np.testing.assert_array_equal(a, train.batch_order(3, 1, 100, 32))
  assert a.shape == (3, 32) and len(set(a.ravel())) == 96
  assert not np.array_equal(a, train.batch_order(3, 2, 100, 32))


def test_make_optimizer_names():
  args = train.build_parser().parse_args(["--lamda0", "1.0", "--momentum",
                                          "0.5"])
  assert train.sgperm_kwargs(args) == {"lamda0": 1.0, "momentum": 0.5}
  for name in ("sgperm", "adam", "sgd", "sgperm-adam"):
    assert isinstance(train.make_optimizer(name, args),
                      optax.GradientTransformation)
  with pytest.raises(train.UsageError, match="unknown optimizer"):
    train.make_optimizer("rmsprop", args)


@pytest.mark.slow
def test_resume_continues_exactly(tmp_path, compare_run):
  """Epoch 1 with checkpoints, then --resume to epoch 2: SGPerm's history is
  that of compare_run's unbroken 2 epochs (Adam's state is saved and restored
  the same way, tests/test_checkpoint.py)."""
  common = [*COMPARE[:-2], "--no-progress"]  # SGPerm only
  ck = str(tmp_path / "ck")
  first = ["--epochs", "1"] + common[2:]
  assert train.main(first + ["--checkpoint-dir", ck]) == 0
  # one subdirectory per optimizer
  assert [p.name for p in (tmp_path / "ck").iterdir()] == ["sgperm"]
  assert train.main(first + ["--checkpoint-dir", ck]) == 2  # needs --resume
  assert train.main(common + ["--resume"]) == 2  # needs --checkpoint-dir
  assert train.main(common + ["--checkpoint-dir", ck, "--resume", "--json",
                              str(tmp_path / "resumed.json")]) == 0
  full = json.loads((compare_run[0] / "m.json").read_text())
  resumed = json.loads((tmp_path / "resumed.json").read_text())
  assert list(resumed["runs"]) == ["sgperm"]
  assert (resumed["runs"]["sgperm"]["history"]
          == full["runs"]["sgperm"]["history"])
