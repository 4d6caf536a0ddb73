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


# --------------------------------------------- what permutation training did


def _permuted_tree():
  """A kernel (rows: columns) and a vector, and a row permutation of each."""
  kernel = np.arange(12.0).reshape(4, 3)  # rows [0,3,6,9], [1,4,7,10], ...
  vector = np.array([5., 1., 3., 2., 4.])
  now = {"kernel": kernel[[1, 0, 2, 3]], "vector": vector[[1, 0, 2, 4, 3]]}
  return {"kernel": kernel, "vector": vector}, now


def test_rank_map_counts_each_slot_once_on_its_ranks():
  start, now = _permuted_tree()
  m = plotting.rank_map(start["kernel"], now["kernel"], bins=3)
  # Each column of the kernel swaps its two smallest values (ranks 0 and 1
  # of 0..3, i.e. 0 and 1/3); the other slots stay.
  np.testing.assert_allclose(m.before, np.tile([0, 1, 2, 3], 3) / 3)
  np.testing.assert_allclose(m.after, np.tile([1, 0, 2, 3], 3) / 3)
  assert m.counts.sum() == 12
  assert m.counts.tolist() == [[0, 3, 0], [3, 0, 0], [0, 0, 6]]
  fig = plotting.plot_rank_maps(start, now, bins=3)
  drawn = [ax for ax in fig.axes if ax.get_images()]
  assert [ax.get_title().split("\n")[0] for ax in drawn] == [
      "['kernel']", "['vector']"]
  np.testing.assert_array_equal(drawn[0].get_images()[0].get_array(),
                                m.counts.T)
  assert "50% of slots changed rank" in drawn[0].get_title()
  with pytest.raises(ValueError, match="sgperm_jax: rank_map"):
    plotting.rank_map(start["kernel"], now["vector"])


def test_displacement_histograms_pool_every_row_and_sort_the_steps():
  start, now = _permuted_tree()
  h = plotting.displacement_histograms(start, [(7, now), (0, start)], bins=4)
  assert h.steps.tolist() == [0, 7]
  assert h.shares[0].tolist() == [1.0, 0.0, 0.0, 0.0]  # nothing moved
  # Kernel: 6 of 12 slots move one rank in 3 (1/3: bin 1). Vector
  # [5, 1, 3, 2, 4] -> [1, 5, 3, 4, 2]: 5 and 1 cross the whole row (4/4:
  # bin 3), 2 and 4 move two ranks (2/4: bin 2), 3 stays.
  np.testing.assert_allclose(h.shares[1], np.array([7, 6, 2, 2]) / 17)
  fig = plotting.plot_displacement_histograms(h)
  lines = fig.axes[0].get_lines()
  assert [ln.get_label() for ln in lines] == ["step 0", "step 7"]
  np.testing.assert_allclose(np.nan_to_num(lines[1].get_ydata()), h.shares[1])


def test_weight_profiles_sort_each_row():
  start = {"k": np.array([[3., 0., 1.], [1., 2., -1.]])}
  trained = {"k": start["k"] * 1.5}
  p = plotting.weight_profile(start["k"], trained["k"])
  assert p.initial.tolist() == [[1., 3.], [0., 2.], [-1., 1.]]
  np.testing.assert_allclose(p.trained, 1.5 * p.initial)
  fig = plotting.plot_weight_profiles(start, trained, rows=2)
  lines = fig.axes[0].get_lines()
  assert len(lines) == 4  # two rows, init and trained each
  np.testing.assert_array_equal(lines[0].get_ydata(), p.initial[0])
  np.testing.assert_array_equal(lines[1].get_ydata(), p.trained[0])


def test_permutation_stats_plot_draws_the_logged_records():
  fig = plotting.plot_permutation_stats({
      "sgperm": [{"moved_fraction": 0.3, "mean_displacement": 2.0},
                 {"moved_fraction": 0.2, "mean_displacement": 1.5}],
      "laperm": [{"moved_fraction": 0.1, "free_distance": 0.4}]})
  titles = [ax.get_title() for ax in fig.axes]
  assert titles == ["slots moved (share)", "mean rank displacement",
                    "free weights' distance to the sync"]
  moved = {ln.get_label(): ln.get_ydata().tolist()
           for ln in fig.axes[0].get_lines()}
  assert moved == {"sgperm": [0.3, 0.2], "laperm": [0.1]}


@pytest.mark.slow
def test_pictures_command_writes_every_figure(tmp_path, capsys):
  from sgperm_jax.experiments import pictures  # noqa: PLC0415 (needs flax)
  assert pictures.main(["--out", str(tmp_path / "figs"), "--epochs", "2",
                        "--no-progress"]) == 0
  out = capsys.readouterr().out
  for name in pictures.FILES:
    path = tmp_path / "figs" / name
    if name.endswith(".png"):
      assert path.read_bytes()[:8] == PNG_MAGIC, name
    assert f"wrote {name} to {path}" in out
  table = (tmp_path / "figs" / "export_sizes.md").read_text().splitlines()
  assert [row.split("|")[1].strip() for row in table[2:]] == ["mlp", "conv"]
  assert pictures.main(["--epochs", "0"]) == 2
