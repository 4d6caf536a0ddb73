"""Plotting: training curves, one SGPerm step drawn, matplotlib as an extra."""

import io
import sys

import numpy as np
import pytest
from matplotlib import patches

from sgperm_jax import plotting
from sgperm_jax.experiments import train

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _history(offset):
  return {"train_loss": [1.0 + offset, 0.5], "test_loss": [0.9, 0.6 + offset],
          "train_accuracy": [0.5, 0.8], "test_accuracy": [0.6, 0.85]}


def test_plot_history_one_colour_per_optimizer():
  fig = plotting.plot_history({"sgperm": _history(0), "adam": _history(0.1)},
                              title="digits")
  loss_ax, acc_ax = fig.axes
  for ax in (loss_ax, acc_ax):
    lines = ax.get_lines()
    assert len(lines) == 4  # 2 optimizers x (train, test)
    colours = {ln.get_label(): ln.get_color() for ln in lines}
    assert colours["sgperm (test)"] == colours["sgperm (train)"]
    assert colours["sgperm (test)"] != colours["adam (test)"]
  np.testing.assert_array_equal(loss_ax.get_lines()[0].get_xdata(), [1, 2])
  labels = [t.get_text() for t in acc_ax.get_legend().get_texts()]
  assert labels == ["sgperm", "adam", "test", "train"]
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  assert buf.getvalue()[:8] == PNG_MAGIC


def _random_step(n=14, seed=0, **kwargs):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=n).astype(np.float32)
  r = rng.normal(size=n).astype(np.float32)
  r[rng.random(n) < 0.2] = 0.0  # some inactive slots
  return plotting.one_step(w, r, **kwargs), w, r


@pytest.mark.parametrize("lamda", [1.0, 0.5])
def test_one_step_is_consistent(lamda):
  step, w, _ = _random_step(alpha=0.3, lamda=lamda, partition_size_min=4)
  np.testing.assert_array_equal(np.sort(step.after), np.sort(w))
  edges = set(step.edges())
  active = np.asarray(step.graph.direction[0]) != 0
  assert not active.all()  # some slots without a recommendation
  assert all(active[i] and active[k] for i, k in edges)
  cycles = step.cycles()
  assert cycles, "this input has cycles"
  members = [j for c in cycles for j in c]
  assert len(members) == len(set(members))  # disjoint
  values, moved = step.values, step.moved_values
  lo = np.asarray(step.partition.subset_lo[0])
  r_sorted = np.asarray(step.partition.recommendations[0])
  for cycle in cycles:
    for j in cycle:
      k = int(step.successor[j])
      assert (j, k) in edges  # every move follows an edge
      assert lo[j] == lo[k]  # within one subset
      assert moved[j] == values[k]
      assert (moved[j] >= values[j]) if r_sorted[j] < 0 else (
          moved[j] < values[j])
  still = [j for j in range(len(w)) if j not in members]
  np.testing.assert_array_equal(moved[still], values[still])
  # after, in original positions, is moved, in sorted positions
  order = np.asarray(step.partition.order[0])
  np.testing.assert_array_equal(step.after[order], moved)


def test_edges_closest_first_and_only_between_vertices():
  # sorted values 0, 1, 2, 3 (alpha = 1 reaches everything)
  w = np.array([0., 1., 2., 3.])
  step = plotting.one_step(w, np.array([-1., 1., -1., 1.]), alpha=1.0)
  assert step.edges() == [(0, 1), (0, 2), (0, 3), (1, 0), (2, 3), (3, 2),
                          (3, 1), (3, 0)]
  # positions without a recommendation are not vertices
  step = plotting.one_step(w, np.array([-1., 0., 0., 1.]), alpha=1.0)
  assert step.edges() == [(0, 3), (3, 0)]
  assert step.cycles() == [[0, 3]]


def test_plot_one_step_draws_every_edge_and_cycle():
  step, _, _ = _random_step(alpha=0.3, lamda=0.5, partition_size_min=4)
  fig = plotting.plot_one_step(step, title="one step")
  assert len(fig.axes) == 4

  def arrows(ax):
    return sum(isinstance(p, patches.FancyArrowPatch) for p in ax.patches)

  assert arrows(fig.axes[0]) == 0
  assert arrows(fig.axes[1]) == len(step.edges())
  assert arrows(fig.axes[2]) == sum(len(c) for c in step.cycles())
  heights = [p.get_height() for p in fig.axes[3].patches
             if isinstance(p, patches.Rectangle) and p.get_fill()]
  np.testing.assert_allclose(heights, step.moved_values)
  subset_lines = [ln for ln in fig.axes[0].get_lines() if ln.get_linestyle()
                  == ":"]
  assert len(subset_lines) == len(np.unique(step.partition.subset_lo)) - 1
  buf = io.BytesIO()
  fig.savefig(buf, format="png")
  assert buf.getvalue()[:8] == PNG_MAGIC


def test_one_step_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="vectors of one shape"):
    plotting.one_step(np.zeros(3), np.zeros(4), alpha=0.1)


@pytest.fixture
def no_matplotlib(monkeypatch):
  for name in list(sys.modules):
    if name == "matplotlib" or name.startswith("matplotlib."):
      monkeypatch.setitem(sys.modules, name, None)


def test_missing_matplotlib_says_how_to_install(no_matplotlib):
  with pytest.raises(ImportError, match=r"sgperm-jax\[plot\]"):
    plotting.plot_history({"sgperm": _history(0)})
  step, _, _ = _random_step(alpha=0.3)  # computing needs no matplotlib
  assert step.cycles()
  with pytest.raises(ImportError, match=r"sgperm-jax\[plot\]"):
    plotting.plot_one_step(step)


def test_train_plot_without_matplotlib_fails_first(no_matplotlib, tmp_path,
                                                   capsys):
  rc = train.main(["--plot", str(tmp_path / "c.png"), "--json",
                   str(tmp_path / "m.json")])
  err = capsys.readouterr().err
  assert rc == 2 and "sgperm-jax[plot]" in err and err.count("\n") == 1
  assert not list(tmp_path.iterdir())
