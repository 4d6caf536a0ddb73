"""The learning-quality suite and its diagnostics, on tiny budgets."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import sgperm_jax
from sgperm_jax.experiments import diagnostics, quality
from sgperm_jax.initializers import row_nonzeros
from tests import helpers


@pytest.mark.slow
def test_suite_writes_the_table_json_and_plot(tmp_path, capsys):
  """End to end on one epoch and one seed (the statistics over seeds: the
  next test): LaPerm (exact and free weights) on a BatchNorm convnet
  (accuracy) and on the regression (MSE, frozen hidden layer)."""
  out = tmp_path / "q"
  assert quality.main([
      "--tasks", "cnn-bn-digits,regression-w16", "--seeds", "1",
      "--epochs-scale", "0.01", "--optimizers", "laperm",
      "--json", f"{out}.json", "--md", f"{out}.md", "--plot",
      f"{out}.png"]) == 0
  table = capsys.readouterr().out
  assert "| cnn-bn-digits | % accuracy |" in table
  assert "| regression-w16 | test MSE |" in table
  data = json.loads((tmp_path / "q.json").read_text())
  assert [(r["task"], r["optimizer"], r["seed"]) for r in data["runs"]] == [
      ("cnn-bn-digits", "laperm", 0), ("regression-w16", "laperm", 0)]
  cnn, regression = data["rows"]
  for row in data["rows"]:
    assert row["seeds"] == 1 and row["score_std"] == 0
  assert 0.0 <= cnn["score"] <= 1.0 and cnn["metric"] == "accuracy"
  assert regression["score"] > 0 and regression["metric"] == "test MSE"
  # LaPerm's exact (synced) weights are not its free weights
  assert cnn["free_score"] != cnn["score"]
  assert (tmp_path / "q.md").read_text().strip() in table
  assert (tmp_path / "q.png").stat().st_size > 1000
  # Adam's free and exact weights are the same.
  task = quality.tasks()["regression-w16"]
  run = quality.train_one(task, task.load(), "adam", 0, 1)
  assert run.free_score == run.score > 0


def test_summary_and_table_over_seeds():
  """Mean ± std over seeds per task and optimizer, LaPerm's free weights in
  their own column, '-' where an optimizer did not run."""
  known = quality.tasks()
  chosen = [known["cnn-bn-digits"], known["regression-w16"]]
  runs = [quality.Run("cnn-bn-digits", "laperm", 0, 0.5, 0.4, 2.0),
          quality.Run("cnn-bn-digits", "laperm", 1, 0.7, 0.6, 4.0),
          quality.Run("regression-w16", "adam", 0, 0.25, 0.25, 1.0),
          quality.Run("regression-w16", "adam", 1, 0.75, 0.75, 1.0)]
  rows = quality.summarize(runs, chosen)
  assert [(r["task"], r["optimizer"], r["metric"], r["seeds"])
          for r in rows] == [("cnn-bn-digits", "laperm", "accuracy", 2),
                             ("regression-w16", "adam", "test MSE", 2)]
  lap, adam = rows
  assert lap["score"] == pytest.approx(0.6)
  assert lap["score_std"] == pytest.approx(0.1)
  assert lap["free_score"] == pytest.approx(0.5)
  assert lap["seconds"] == pytest.approx(3.0)
  assert adam["score"] == adam["free_score"] == pytest.approx(0.5)
  assert adam["score_std"] == pytest.approx(0.25)
  assert quality.markdown(rows, chosen).splitlines() == [
      "| task | metric | adam | laperm | laperm free | seconds/run |",
      "|---|---|---:|---:|---:|---:|",
      "| cnn-bn-digits | % accuracy | - | 60.0 ± 10.0 | 50.0 ± 10.0 | 3.0 |",
      "| regression-w16 | test MSE | 0.5000 ± 0.2500 | - | - | 1.0 |"]


@pytest.mark.parametrize("name", quality.OPTIMIZERS + quality.PAPER_OPTIMIZERS)
def test_every_optimizer_of_the_suite_takes_a_step(name):
  params = {"w": jnp.linspace(-1., 1., 12).reshape(4, 3)}
  tx = quality.make_optimizer(name, seed=0)
  updates, _ = tx.update({"w": jnp.ones((4, 3))}, tx.init(params), params)
  assert updates["w"].shape == (4, 3)
  paper = name.endswith("-paper")
  if name.startswith("laperm"):  # centred free updates keep the row sums
    assert bool(jnp.allclose(updates["w"].sum(0), 0)) != paper
  new = params["w"] + updates["w"]
  if name == "adam-fixed-norms":  # rows keep their norms, values change
    np.testing.assert_allclose(jnp.linalg.norm(new, axis=0),
                               jnp.linalg.norm(params["w"], axis=0),
                               rtol=1e-6)
    assert not np.allclose(np.sort(new, 0), np.sort(params["w"], 0))


def test_overrides_reach_the_optimizers():
  params = {"w": jnp.linspace(-1., 1., 12).reshape(4, 3)}
  grads = {"w": jnp.cos(jnp.arange(12.)).reshape(4, 3)}
  over = quality.Overrides(laperm={"sync_period": 1}, inner_lr=0.5)
  tx = quality.make_optimizer("laperm", 0, over)
  updates, _ = tx.update(grads, tx.init(params), params)
  new = params["w"] + updates["w"]  # synced at once: a permutation per row
  np.testing.assert_allclose(np.sort(new, 0), np.sort(params["w"], 0),
                             atol=1e-6)
  assert np.any(np.abs(new - params["w"]) > 0.1)  # the large rate moved it
  tx = quality.make_optimizer(
      "sgperm-adam-paper", 0, quality.Overrides(
          sgperm={"momentum": 0.5, "layout": "whole-below:5"}))
  tx.update(grads, tx.init(params), params)  # momentum dropped, layout used


def test_bad_task_or_optimizer_is_a_usage_error(capsys):
  for argv in (["--tasks", "mnist"], ["--optimizers", "rmsprop"],
               ["--diagnose", "cnn-digits:sgd"],
               ["--sgperm-options", "{beta1: 1}"],
               ["--laperm-options", "[20]"],
               ["--tasks", "mlp-digits", "--laperm-options",
                '{"period": 20}']):
    with pytest.raises(SystemExit) as e:
      quality.main(argv)
    assert e.value.code == 2
  assert "rmsprop" in capsys.readouterr().err


def test_signals_are_balanced_and_labelled():
  x, y = quality.signals(600, length=64, seed=3)
  assert x.shape == (600, 64, 1) and x.dtype == np.float32
  assert set(np.unique(y)) == set(range(6))
  assert np.bincount(y).min() > 60


def test_regression_trains_only_the_output_weights():
  task = quality.tasks()["regression-w16"]
  model = task.model(0)
  _, params, _ = nnx.split(model, nnx.Param, ...)
  tx = quality.with_frozen(
      sgperm_jax.sgperm(lamda0=1.0), params, task.frozen)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  grads["out"]["kernel"] = nnx.Param(jnp.linspace(-1, 1, 32)[:, None])
  updates, state = jax.jit(tx.update)(grads, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["hidden"]["kernel"][...],
                                params["hidden"]["kernel"][...])
  out = np.asarray(new["out"]["kernel"][...])
  assert np.any(out != params["out"]["kernel"][...])
  helpers.assert_same_rows(out, params["out"]["kernel"][...])


@pytest.mark.slow
def test_diagnostics_measure_each_sync():
  task = quality.tasks()["mlp-digits"]
  found = diagnostics.events(
      task, task.load(),
      lambda: sgperm_jax.laperm(optax.adam(1e-2), sync_period=5), steps=12)
  assert [e["step"] for e in found] == [5, 10]
  kernel = found[0]["leaves"]["layers/0/kernel/.value"]
  assert 0 < kernel["moved"] <= 1 and kernel["displacement"] > 0
  bias = found[0]["leaves"]["layers/0/bias/.value"]
  assert bias["norm_ratio"] > 0  # free, not synced
  (layer,) = found[0]["layers"]
  assert layer["rms_before"] > 0 and 0 <= layer["dead_after"] <= 1
  assert "| 5 |" in diagnostics.table(found)


def test_top_level_help_lists_the_commands_and_version(capsys):
  from sgperm_jax import cli  # noqa: PLC0415 (lazy import)
  assert cli.main(["-h"]) == 0
  out = capsys.readouterr().out
  for name in ("train", "bench", "quality"):
    assert f"  {name} " in out
  assert cli.main(["--version"]) == 0
  version = capsys.readouterr().out.strip()
  assert version == f"sgperm-jax {sgperm_jax.__version__}"
  assert cli.main(["fit"]) == 2
  assert "unknown command 'fit'" in capsys.readouterr().err


@pytest.mark.slow
def test_sparse_sweep_writes_accuracy_against_density(tmp_path, capsys):
  """``--sparse``: the digits MLP with sparse kernels, one epoch, one seed,
  SGPerm and LaPerm (its default optimizers)."""
  out = tmp_path / "s"
  assert quality.main([
      "--sparse", "1,0.2", "--seeds", "1", "--epochs-scale", "0.01",
      "--json", f"{out}.json", "--md", f"{out}.md", "--plot",
      f"{out}.png"]) == 0
  table = capsys.readouterr().out
  assert ("| density | nonzero per unit | sgperm % accuracy | laperm %"
          " accuracy | laperm free | seconds/run |") in table
  assert "| 0.2 | 13/64, 26/128 |" in table and "| 1 | 64/64, 128/128 |" in (
      table)
  data = json.loads((tmp_path / "s.json").read_text())
  assert data["sparse"] == [1.0, 0.2]
  assert [(r["density"], r["optimizer"]) for r in data["rows"]] == [
      (1.0, "sgperm"), (1.0, "laperm"), (0.2, "sgperm"), (0.2, "laperm")]
  for row in data["rows"]:
    assert 0.0 <= row["score"] <= 1.0 and row["metric"] == "accuracy"
  assert (tmp_path / "s.md").read_text().strip() in table
  assert (tmp_path / "s.png").stat().st_size > 1000


@pytest.mark.slow
def test_sparse_mlp_kernels_have_the_density_per_row():
  model = quality.sparse_mlp(0.2, seed=0)
  for layer, fan_in in zip(model.layers, (64, 128)):
    kernel = np.asarray(layer.kernel[...])
    counts = (helpers.rows(kernel) != 0).sum(axis=-1)
    np.testing.assert_array_equal(counts, row_nonzeros(fan_in, 0.2))
    # He scaled by 1 / density: each unit's input keeps its variance
    assert 0.5 < np.sum(kernel ** 2, axis=0).mean() < 4.0
    np.testing.assert_array_equal(layer.bias[...], 0)
  other = quality.sparse_mlp(0.2, seed=1).layers[0].kernel[...]
  assert not np.array_equal(other, model.layers[0].kernel[...])


def test_density_table_from_runs():
  chosen = list(quality.sparse_tasks((1.0, 0.1)).values())
  assert [t.name for t in chosen] == ["sparse-mlp-d1", "sparse-mlp-d0.1"]
  runs = [quality.Run("sparse-mlp-d1", "sgperm", 0, 0.9, 0.9, 2.0),
          quality.Run("sparse-mlp-d1", "sgperm", 1, 0.7, 0.7, 2.0),
          quality.Run("sparse-mlp-d0.1", "sgperm", 0, 0.5, 0.5, 1.0),
          quality.Run("sparse-mlp-d0.1", "laperm", 0, 0.25, 0.75, 3.0)]
  rows = quality.summarize(runs, chosen)
  assert [r["density"] for r in rows] == [1.0, 0.1, 0.1]
  assert quality.density_markdown(rows).splitlines() == [
      "| density | nonzero per unit | sgperm % accuracy | laperm % accuracy"
      " | laperm free | seconds/run |",
      "|---:|---|---:|---:|---:|---:|",
      "| 1 | 64/64, 128/128 | 80.0 ± 10.0 | - | - | 2.0 |",
      "| 0.1 | 6/64, 13/128 | 50.0 ± 0.0 | 25.0 ± 0.0 | 75.0 ± 0.0 |"
      " 1.0 / 3.0 |"]


def test_bad_sparse_options_are_usage_errors(capsys):
  for argv in (["--sparse", "0"], ["--sparse", "1.5"], ["--sparse", "x"],
               ["--sparse", "--tasks", "mlp-digits"],
               ["--sparse", "0.5", "--diagnose", "mlp-digits:sgperm"]):
    with pytest.raises(SystemExit) as e:
      quality.main(argv)
    assert e.value.code == 2
  assert "--sparse" in capsys.readouterr().err
