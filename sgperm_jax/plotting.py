"""Plots: training curves, one SGPerm step, and what permutation training did.

:func:`plot_history` draws loss and accuracy per epoch, one colour per
optimizer. :func:`one_step` runs the four public stages (:func:`~sgperm_jax.
partition`, :func:`~sgperm_jax.permissibility_graph`, :func:`~sgperm_jax.
find_cycles`, :func:`~sgperm_jax.permute`) on one weight vector and keeps every
intermediate result; :func:`plot_one_step` draws them as four panels: the
sorted weights with their recommendations, the permissibility graph's edges,
the cycles found, and the values after the permutation.

For research: :func:`rank_map` / :func:`plot_rank_maps` show where each slot's
value stands in its row at the start and now; :func:`displacement_histograms`
how far values moved in rank over training; :func:`weight_profile` /
:func:`plot_weight_profiles` the sorted values of rows at init and after free
training (Train-by-Reconnect's argument for permuting);
:func:`plot_permutation_stats` the statistics the trainer logs. Each drawing
function has a data function beside it, which the tests check.

matplotlib is an optional dependency (``pip install "sgperm-jax[plot]"``); it
is imported only when a figure is drawn. Figures are built with
``matplotlib.figure.Figure``, without pyplot's global state: save them with
``fig.savefig`` or show them in a notebook by ending a cell with ``fig``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import sgperm_jax
from sgperm_jax import _layout

_INSTALL = ("sgperm_jax: sgperm_jax.plotting needs the [plot] extra"
            " (matplotlib); install it with pip install 'sgperm-jax[plot]'")


def require_matplotlib() -> Any:
  """Imports matplotlib, or raises ImportError saying how to install it."""
  try:
    import matplotlib  # noqa: PLC0415 (lazy import)
    import matplotlib.figure  # noqa: PLC0415 (loads the submodule)
  except ImportError as e:
    raise ImportError(_INSTALL) from e
  return matplotlib


def figure(figsize: tuple[float, float]) -> Any:
  """A matplotlib ``Figure`` (no pyplot state), laid out by constraints."""
  return require_matplotlib().figure.Figure(figsize=figsize,
                                            layout="constrained")


# ----------------------------------------------------------- training curves


def plot_history(histories: Mapping[str, Mapping[str, Sequence[float]]], *,
                 title: str | None = None) -> Any:
  """Loss and accuracy per epoch, one colour per optimizer.

  Args:
    histories: for each optimizer, lists per epoch under ``"test_loss"``,
      ``"train_loss"``, ``"test_accuracy"``, ``"train_accuracy"`` (any may be
      missing), as the trainer records them.
    title: a title for the figure.

  Returns:
    A ``matplotlib.figure.Figure`` with two axes: loss and accuracy (test
    solid, train dashed).

  Example:
    >>> from sgperm_jax import plotting
    >>> fig = plotting.plot_history({
    ...     "sgperm": {"test_loss": [0.9, 0.5], "test_accuracy": [0.7, 0.9]},
    ...     "adam": {"test_loss": [0.6, 0.3], "test_accuracy": [0.8, 0.95]}})
    >>> [len(ax.get_lines()) for ax in fig.axes]
    [2, 2]
  """
  require_matplotlib()
  from matplotlib import lines, ticker  # noqa: PLC0415 (lazy import)
  fig = figure((10, 4))
  loss_ax, acc_ax = fig.subplots(1, 2)
  handles = []
  for i, (name, history) in enumerate(histories.items()):
    color = f"C{i % 10}"
    handles.append(lines.Line2D([], [], color=color, label=name))
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "accuracy")):
      for split, style in (("test", "-"), ("train", "--")):
        values = history.get(f"{split}_{metric}")
        if values:
          epochs = np.arange(1, len(values) + 1)
          ax.plot(epochs, values, style, color=color, marker=".",
                  label=f"{name} ({split})")
  handles += [lines.Line2D([], [], color="black", ls="-", label="test"),
              lines.Line2D([], [], color="black", ls="--", label="train")]
  for ax, label in ((loss_ax, "cross-entropy loss"), (acc_ax, "accuracy")):
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  acc_ax.legend(handles=handles, fontsize="small")
  if title:
    fig.suptitle(title)
  return fig


# ---------------------------------------------------------- one SGPerm step


class OneStep(NamedTuple):
  """One SGPerm step on one weight vector, every stage's output kept.

  Positions ``0..n-1`` are vertices in the *sorted layout* of
  :func:`sgperm_jax.partition` (subsets consecutive, each sorted by value)
  unless said otherwise.
  """
  partition: sgperm_jax.Partition  # rows of shape (1, n)
  graph: sgperm_jax.PermissibilityGraph
  successor: np.ndarray  # (n,): vertex j takes the value of successor[j]
  before: np.ndarray  # (n,) the weights, original positions
  after: np.ndarray  # (n,) the permuted weights, original positions

  @property
  def values(self) -> np.ndarray:
    """The value of each vertex before the step."""
    return np.asarray(self.partition.values[0])

  @property
  def moved_values(self) -> np.ndarray:
    """The value of each vertex after the step."""
    return self.values[self.successor]

  def edges(self) -> list[tuple[int, int]]:
    """The graph's edges ``(i, k)``: slot ``i`` may take the value at ``k``.

    The graph stores each vertex's targets as a range of sorted positions;
    positions without a recommendation in that range are not vertices and
    are skipped, as the cycle search does. Each vertex's edges are listed
    closest target first, the order in which the search walks them.
    """
    direction = np.asarray(self.graph.direction[0])
    lo = np.asarray(self.graph.reach_lo[0])
    hi = np.asarray(self.graph.reach_hi[0])
    out: list[tuple[int, int]] = []
    for i, d in enumerate(direction):
      if d == 0:
        continue
      targets = range(lo[i], hi[i]) if d > 0 else range(hi[i] - 1, lo[i] - 1,
                                                        -1)
      out.extend((i, int(k)) for k in targets if direction[k] != 0)
    return out

  def cycles(self) -> list[list[int]]:
    """The cycles found, each as vertices ``[c0, c1, ...]`` (``c0`` smallest);
    vertex ``c_i`` takes the value of ``c_{i+1}``."""
    seen, out = set(), []
    for start in range(len(self.successor)):
      if start in seen or self.successor[start] == start:
        continue
      cycle, j = [], start
      while j not in seen:
        seen.add(j)
        cycle.append(j)
        j = int(self.successor[j])
      out.append(cycle)
    return out


def one_step(weights: Any, recommendations: Any, *, alpha: float,
             lamda: float = 1.0, partition_size_min: int = 10,
             key: jax.Array | None = None,
             value_range: float | None = None) -> OneStep:
  """Runs the four SGPerm stages on one weight vector.

  Args:
    weights: ``(n,)`` values of one weight vector.
    recommendations: ``(n,)`` recommendations (``r > 0``: the slot wants a
      smaller value, ``r < 0`` a larger one, ``0``: leave it), e.g. a
      gradient.
    alpha: aggressiveness ``alpha_t``: the reach is
      ``eps = A * (alpha + 1/m)``.
    lamda: partition ratio ``lamda_t``; ``1.0`` makes the whole vector one
      subset.
    partition_size_min: smallest partition size.
    key: PRNG key of the random partition (default ``jax.random.key(0)``).
    value_range: ``A``; by default ``max(weights) - min(weights)``.

  Returns:
    A :class:`OneStep`; ``after`` holds exactly the values of ``weights``.

  Example:
    >>> import numpy as np
    >>> from sgperm_jax import plotting
    >>> step = plotting.one_step(np.array([2., 0., 1.]),
    ...                          np.array([1., -1., 1.]), alpha=1.0)
    >>> step.edges(), step.cycles(), step.after.tolist()
    ([(0, 1), (0, 2), (1, 0), (2, 1), (2, 0)], [[0, 2, 1]], [1.0, 2.0, 0.0])
  """
  w = jnp.asarray(weights)
  r = jnp.asarray(recommendations)
  if w.ndim != 1 or r.shape != w.shape:
    raise ValueError("sgperm_jax: one_step: weights and recommendations must be"
                     " vectors"
                     f" of one shape, got {w.shape} and {r.shape}")
  key = jax.random.key(0) if key is None else key
  extent = jnp.max(w) - jnp.min(w) if value_range is None else value_range
  part, graph, successor, after = _stages(
      key, w, r, jnp.asarray(alpha), jnp.asarray(lamda),
      jnp.asarray(partition_size_min), jnp.asarray(extent, w.dtype))
  return OneStep(part, graph, np.asarray(successor[0]), np.asarray(w),
                 np.asarray(after[0]))


@jax.jit
def _stages(key, w, r, alpha, lamda, partition_size_min, value_range):
  """The four stages on one row; compiled once per length and dtype."""
  size = sgperm_jax.partition_size(lamda, w.shape[0], partition_size_min)
  part = sgperm_jax.partition(key, w[None], r[None], size)
  graph = sgperm_jax.permissibility_graph(part, alpha, value_range[None])
  successor = sgperm_jax.find_cycles(part, graph)
  return part, graph, successor, sgperm_jax.permute(part, successor)


def _subset_bounds(step: OneStep) -> list[float]:
  lo = np.asarray(step.partition.subset_lo[0])
  return [b - 0.5 for b in np.unique(lo) if b > 0]


def _arc(ax: Any, i: int, k: int, values: np.ndarray, color: str,
         width: float, alpha: float) -> None:
  from matplotlib import patches  # noqa: PLC0415 (lazy import)
  rad = -0.35 if k > i else 0.35  # up-edges bend above, down-edges below
  ax.add_patch(patches.FancyArrowPatch(
      (i, values[i]), (k, values[k]), connectionstyle=f"arc3,rad={rad}",
      arrowstyle="-|>", mutation_scale=10, color=color, lw=width,
      alpha=alpha, shrinkA=4, shrinkB=4))


def _bars(ax: Any, step: OneStep, heights: np.ndarray, colors: Sequence[Any],
          title: str) -> None:
  n = len(heights)
  ax.bar(np.arange(n), heights, color=colors, edgecolor="black", lw=0.5,
         width=0.7)
  ax.axhline(0, color="black", lw=0.5)
  for b in _subset_bounds(step):
    ax.axvline(b, color="grey", ls=":", lw=1)
  order = np.asarray(step.partition.order[0])
  ax.set_xticks(np.arange(n), [f"w{o}" for o in order], fontsize="x-small")
  ax.set_xlim(-0.7, n - 0.3)
  ax.set_title(title, fontsize="medium", loc="left")


def plot_one_step(step: OneStep, *, title: str | None = None) -> Any:
  """Draws one SGPerm step as the paper's puzzle figures do, in four panels.

  1. the weights sorted by value (within each subset, split by dotted lines);
     green bars want a larger value (``r < 0``), red a smaller one, grey are
     inactive; ticks name each vertex's original slot ``w<j>``;
  2. the permissibility graph: an arrow ``i -> k`` means slot ``i`` may take
     the value at ``k`` (up-edges bend above, down-edges below);
  3. the cycles found, one colour each;
  4. the values after the permutation: every slot of a cycle took the value
     its arrow pointed at; outlines show the values before.

  Args:
    step: from :func:`one_step`.
    title: a title for the figure.

  Returns:
    A ``matplotlib.figure.Figure``.

  Example:
    >>> import numpy as np
    >>> from sgperm_jax import plotting
    >>> step = plotting.one_step(np.array([2., 0., 1.]),
    ...                          np.array([1., -1., 1.]), alpha=1.0)
    >>> len(plotting.plot_one_step(step).axes)
    4
  """
  fig = figure((max(8.0, 0.45 * len(step.values) + 2), 11))
  axes = fig.subplots(4, 1, sharex=True, sharey=True)
  values = step.values
  r = np.asarray(step.partition.recommendations[0])
  direction = np.asarray(step.graph.direction[0])
  base = ["#2ca02c" if d > 0 else "#d62728" if d < 0 else "#bbbbbb"
          for d in direction]
  pale = ["#c7e9c0" if d > 0 else "#fcbba1" if d < 0 else "#eeeeee"
          for d in direction]
  _bars(axes[0], step, values, base,
        "1. sorted weights; green wants larger (r < 0), red smaller (r > 0)")
  for i in range(len(values)):
    if direction[i] != 0:
      axes[0].annotate(f"{r[i]:+.2g}", (i, values[i]), ha="center",
                       va="bottom" if values[i] >= 0 else "top",
                       fontsize="xx-small")
  edges = step.edges()
  _bars(axes[1], step, values, pale,
        f"2. permissibility graph: {len(edges)} edges i -> k"
        " (slot i may take k's value)")
  for i, k in edges:
    _arc(axes[1], i, k, values, "#555555", 0.8, 0.6)
  cycles = step.cycles()
  _bars(axes[2], step, values, pale,
        f"3. cycles found: {len(cycles)}")
  moved_color = list(pale)
  for c, cycle in enumerate(cycles):
    color = f"C{c % 10}"
    for j in cycle:
      _arc(axes[2], j, int(step.successor[j]), values, color, 1.8, 0.95)
      moved_color[j] = color
  _bars(axes[3], step, step.moved_values, moved_color,
        "4. after the permutation (outlines: before)")
  axes[3].bar(np.arange(len(values)), values, fill=False, ls="--",
              edgecolor="black", lw=0.6, width=0.7)
  for ax in axes:
    ax.set_ylabel("value")
  axes[3].set_xlabel("vertices in sorted order (tick: original slot)")
  if title:
    fig.suptitle(title)
  return fig


# --------------------------------------------- what permutation training did


def _row_layouts(params: Any, layout: Any) -> list[tuple[str, Any, Any]]:
  """``(path, leaf, layout)`` of every leaf of ``params`` that has rows."""
  specs = _layout.resolve_layout(layout, params)
  leaves, treedef = jax.tree.flatten(params)
  out = []
  for path, leaf, spec in zip(_layout.leaf_paths(params), leaves,
                              treedef.flatten_up_to(specs)):
    if _layout.row_shape(tuple(np.shape(leaf)), spec) is not None:
      out.append((path, leaf, spec))
  return out


def _rows(leaf: Any, spec: Any) -> np.ndarray:
  """The rows of a leaf (docs/algorithm.md §2) as float64, ``(rows, n)``."""
  return np.asarray(_layout.to_rows(jnp.asarray(leaf), spec),
                    np.float64)


def _value_ranks(rows: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """For each entry, the count of values of the same ``reference`` row
  strictly below it (equal values share a rank)."""
  ordered = np.sort(reference, axis=-1)
  return np.stack([np.searchsorted(o, r, side="left")
                   for o, r in zip(ordered, rows)])


def _paired_rows(what: str, initial: Any, later: Any, layout: Any
                 ) -> tuple[np.ndarray, np.ndarray]:
  """The rows of one leaf at the start and later; ValueError naming
  ``what`` if the shapes differ or the leaf has no rows."""
  if np.shape(initial) != np.shape(later):
    raise ValueError(f"sgperm_jax: {what}: the leaf has shape"
                     f" {np.shape(initial)} at the start and"
                     f" {np.shape(later)} later")
  if _layout.row_shape(tuple(np.shape(initial)), layout) is None:
    raise ValueError(f"sgperm_jax: {what}: a leaf of shape"
                     f" {np.shape(initial)} has no rows with layout"
                     f" {layout!r}")
  return _rows(initial, layout), _rows(later, layout)


def _check_like(initial: Any, current: Any, what: str) -> None:
  if jax.tree.structure(initial) != jax.tree.structure(current):
    raise ValueError(f"sgperm_jax: {what}: the trees differ in structure")
  for path, a, b in zip(_layout.leaf_paths(initial),
                        jax.tree.leaves(initial), jax.tree.leaves(current)):
    if np.shape(a) != np.shape(b):
      raise ValueError(f"sgperm_jax: {what}: leaf {path} has shape"
                       f" {np.shape(a)} at the start and {np.shape(b)} now")


class RankMap(NamedTuple):
  """Where each slot's value stands in its row, at the start and now.

  Ranks are fractions of the row: 0 for the row's smallest initial value,
  1 for its largest (a rank counts the row's initial values strictly below).
  """
  before: np.ndarray  # (slots,) rank of each slot's initial value
  after: np.ndarray  # (slots,) rank of the value the slot holds now
  counts: np.ndarray  # (bins, bins): slots per (before bin, after bin)


def rank_map(initial: Any, current: Any, *, layout: Any = "neurons",
             bins: int = 32) -> RankMap:
  """The rank of every slot's value at the start and now, for one leaf.

  A slot on the diagonal kept a value of its initial rank; permutation
  training moves values within rows, so the map shows how far and where.

  Args:
    initial: the leaf at the start.
    current: the leaf now (e.g. :func:`~sgperm_jax.exact_params`); each row
      should be a permutation of the initial row, as permutation training
      keeps it (then ranks are exact; otherwise they are the initial row's
      ranks of the new values).
    layout: the rows, as for the optimizer (``"neurons"`` or ``"whole"``).
    bins: bins per axis of the 2-D histogram.

  Returns:
    A :class:`RankMap`.

  Example:
    >>> import numpy as np
    >>> from sgperm_jax import plotting
    >>> m = plotting.rank_map(np.array([0., 1., 2., 3., 4.]),
    ...                       np.array([1., 0., 2., 3., 4.]), bins=2)
    >>> m.before.tolist(), m.after.tolist(), m.counts.tolist()
    ([0.0, 0.25, 0.5, 0.75, 1.0], [0.25, 0.0, 0.5, 0.75, 1.0], [[2, 0], [0, 3]])
  """
  start, now = _paired_rows("rank_map", initial, current, layout)
  scale = max(start.shape[1] - 1, 1)
  before = (_value_ranks(start, start) / scale).ravel()
  after = (_value_ranks(now, start) / scale).ravel()
  edges = np.linspace(0.0, 1.0, bins + 1)
  counts, _, _ = np.histogram2d(before, after, bins=(edges, edges))
  return RankMap(before, after, counts.astype(np.int64))


def plot_rank_maps(initial: Any, current: Any, *, layout: Any = "neurons",
                   bins: int = 32, title: str | None = None) -> Any:
  """One "where did each initial weight go" map per leaf with rows.

  Args:
    initial: the params at the start (a tree).
    current: the exact params now, a tree like ``initial``.
    layout: the rows, as for the optimizer.
    bins: bins per axis.
    title: a title for the figure.

  Returns:
    A ``matplotlib.figure.Figure`` with one heat map per leaf (x: a slot's
    initial rank, y: the rank of the value it holds now; log colour scale),
    titled with the leaf's path and the share of slots off the diagonal.
  """
  require_matplotlib()
  from matplotlib import colors  # noqa: PLC0415 (lazy import)
  _check_like(initial, current, "plot_rank_maps")
  leaves = _row_layouts(initial, layout)
  currents = dict(zip(_layout.leaf_paths(current),
                      jax.tree.leaves(current)))
  if not leaves:
    raise ValueError("sgperm_jax: plot_rank_maps: no leaf has rows")
  cols = min(4, len(leaves))
  rows = -(-len(leaves) // cols)
  fig = figure((3.2 * cols, 3.0 * rows))
  axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
  for ax, (path, leaf, spec) in zip(axes, leaves):
    n = _layout.row_shape(tuple(np.shape(leaf)), spec)[1]  # type: ignore[index]
    m = rank_map(leaf, currents[path], layout=spec, bins=min(bins, n))
    image = ax.imshow(m.counts.T, origin="lower", extent=(0, 1, 0, 1),
                      norm=colors.LogNorm(vmin=1, vmax=max(2, m.counts.max())),
                      cmap="viridis", aspect="equal")
    moved = float(np.mean(m.before != m.after))
    ax.set_title(f"{path}\n{moved:.0%} of slots changed rank",
                 fontsize="small")
    ax.set_xlabel("initial rank in row")
    ax.set_ylabel("rank now")
    fig.colorbar(image, ax=ax, shrink=0.8, label="slots")
  for ax in axes[len(leaves):]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title)
  return fig


class DisplacementHistograms(NamedTuple):
  """Rank displacements from the start, at several steps of training."""
  steps: np.ndarray  # (T,) the step of each snapshot
  edges: np.ndarray  # (bins + 1,) displacement bin edges, fractions of a row
  shares: np.ndarray  # (T, bins): share of all slots in each bin


def displacement_histograms(initial: Any,
                            snapshots: Mapping[int, Any] | Sequence[
                                tuple[int, Any]], *,
                            layout: Any = "neurons",
                            bins: int = 20) -> DisplacementHistograms:
  """Histograms of how far each slot's value moved in rank since the start.

  A slot's displacement is ``|rank(now) - rank(initial)| / (n - 1)``, ranks
  counting the row's initial values strictly below (docs/algorithm.md §14,
  measured from the start instead of the last step), pooled over the slots of
  every leaf with rows.

  Args:
    initial: the params at the start.
    snapshots: ``{step: exact params}`` (or ``(step, params)`` pairs), trees
      like ``initial``.
    layout: the rows, as for the optimizer.
    bins: the number of bins over ``[0, 1]``.

  Returns:
    A :class:`DisplacementHistograms`, snapshots in step order.

  Example:
    >>> import numpy as np
    >>> from sgperm_jax import plotting
    >>> w0 = np.array([0., 1., 2., 3., 4.])
    >>> h = plotting.displacement_histograms(
    ...     w0, {5: np.array([1., 0., 2., 3., 4.]), 9: w0[::-1]}, bins=2)
    >>> h.steps.tolist(), h.shares.tolist()
    ([5, 9], [[1.0, 0.0], [0.2, 0.8]])
  """
  items = sorted(dict(snapshots).items())
  if not items:
    raise ValueError("sgperm_jax: displacement_histograms: no snapshots")
  leaves = _row_layouts(initial, layout)
  starts = [_rows(leaf, spec) for _, leaf, spec in leaves]
  ranks0 = [_value_ranks(s, s) for s in starts]
  edges = np.linspace(0.0, 1.0, bins + 1)
  shares = []
  for _, params in items:
    _check_like(initial, params, "displacement_histograms")
    now = dict(zip(_layout.leaf_paths(params),
                   jax.tree.leaves(params)))
    moves = [np.abs(_value_ranks(_rows(now[path], spec), s) - r0).ravel()
             / max(s.shape[1] - 1, 1)
             for (path, _, spec), s, r0 in zip(leaves, starts, ranks0)]
    d = np.concatenate(moves)
    counts, _ = np.histogram(d, bins=edges)
    shares.append(counts / d.size)
  return DisplacementHistograms(np.asarray([s for s, _ in items]), edges,
                                np.asarray(shares))


def plot_displacement_histograms(h: DisplacementHistograms, *,
                                 title: str | None = None) -> Any:
  """Draws :func:`displacement_histograms`: one line per snapshot (darker is
  later), share of slots against displacement (log scale).

  Returns:
    A ``matplotlib.figure.Figure``.
  """
  fig = figure((6.5, 4))
  ax = fig.subplots()
  centers = (h.edges[:-1] + h.edges[1:]) / 2
  for k, (step, shares) in enumerate(zip(h.steps, h.shares)):
    shade = 0.25 + 0.75 * (k + 1) / len(h.steps)
    ax.plot(centers, np.where(shares > 0, shares, np.nan), marker=".",
            color=(0.1, 0.2, 0.6, shade), label=f"step {int(step)}")
  ax.set_yscale("log")
  ax.set_xlabel("rank displacement since the start (fraction of the row)")
  ax.set_ylabel("share of slots")
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  if title:
    fig.suptitle(title)
  return fig


class WeightProfile(NamedTuple):
  """The values of each row of a leaf, sorted, at init and after training."""
  initial: np.ndarray  # (rows, n), each row ascending
  trained: np.ndarray  # (rows, n), each row ascending


def weight_profile(initial: Any, trained: Any, *, layout: Any = "neurons"
                   ) -> WeightProfile:
  """Sorted row values of one leaf at init and after free training (Adam).

  Train-by-Reconnect's observation: a row trained freely ends with nearly
  the same sorted profile as it started with, so the values can be kept and
  only their places learnt, which is what permutation training does.

  Example:
    >>> import numpy as np
    >>> from sgperm_jax import plotting
    >>> p = plotting.weight_profile(np.array([[3., 0.], [1., 2.]]),
    ...                             np.array([[2.5, 0.], [1., 2.]]))
    >>> p.initial.tolist(), p.trained.tolist()
    ([[1.0, 3.0], [0.0, 2.0]], [[1.0, 2.5], [0.0, 2.0]])
  """
  start, end = _paired_rows("weight_profile", initial, trained, layout)
  return WeightProfile(np.sort(start, axis=-1), np.sort(end, axis=-1))


def plot_weight_profiles(initial: Any, trained: Any, *,
                         layout: Any = "neurons", rows: int = 6,
                         title: str | None = None) -> Any:
  """Weight profiles in the style of Train-by-Reconnect, one panel per leaf.

  Each panel draws the sorted values of ``rows`` rows of the leaf (evenly
  spaced among its rows), at init (dashed) and after training (solid), one
  colour per row, against the rank in the row.

  Args:
    initial: the params at init.
    trained: the params after free training (e.g. Adam), like ``initial``.
    layout: the rows, as for the optimizer.
    rows: rows drawn per leaf.
    title: a title for the figure.

  Returns:
    A ``matplotlib.figure.Figure``.
  """
  _check_like(initial, trained, "plot_weight_profiles")
  leaves = _row_layouts(initial, layout)
  if not leaves:
    raise ValueError("sgperm_jax: plot_weight_profiles: no leaf has rows")
  after = dict(zip(_layout.leaf_paths(trained),
                   jax.tree.leaves(trained)))
  cols = min(3, len(leaves))
  nrows = -(-len(leaves) // cols)
  fig = figure((4.2 * cols, 3.2 * nrows))
  axes = np.atleast_1d(fig.subplots(nrows, cols, squeeze=False)).ravel()
  for ax, (path, leaf, spec) in zip(axes, leaves):
    p = weight_profile(leaf, after[path], layout=spec)
    x = np.linspace(0, 1, p.initial.shape[1])
    for k, j in enumerate(np.unique(np.linspace(
        0, p.initial.shape[0] - 1, rows).round().astype(int))):
      ax.plot(x, p.initial[j], "--", color=f"C{k % 10}", lw=1)
      ax.plot(x, p.trained[j], "-", color=f"C{k % 10}", lw=1)
    ax.set_title(f"{path} (dashed: init, solid: trained)", fontsize="small")
    ax.set_xlabel("rank in row")
    ax.set_ylabel("value")
    ax.grid(alpha=0.3)
  for ax in axes[len(leaves):]:
    ax.set_visible(False)
  if title:
    fig.suptitle(title)
  return fig


def plot_permutation_stats(histories: Mapping[str, Sequence[Mapping[
    str, float]]], *, title: str | None = None) -> Any:
  """The trainer's permutation statistics over training, one colour per run.

  Args:
    histories: for each optimizer, one record per epoch with any of
      ``"moved_fraction"``, ``"mean_displacement"``, ``"cycles"``,
      ``"mean_cycle_length"``, ``"free_distance"`` (as the trainer logs
      them from :func:`~sgperm_jax.permutation_stats`).
    title: a title for the figure.

  Returns:
    A ``matplotlib.figure.Figure`` with a panel per field present.

  Example:
    >>> from sgperm_jax import plotting
    >>> fig = plotting.plot_permutation_stats({"sgperm": [
    ...     {"moved_fraction": 0.2, "cycles": 40.0},
    ...     {"moved_fraction": 0.1, "cycles": 25.0}]})
    >>> [ax.get_title() for ax in fig.axes]
    ['slots moved (share)', 'cycles']
  """
  names = {"moved_fraction": "slots moved (share)",
           "mean_displacement": "mean rank displacement",
           "cycles": "cycles", "mean_cycle_length": "mean cycle length",
           "free_distance": "free weights' distance to the sync"}
  require_matplotlib()
  from matplotlib import ticker  # noqa: PLC0415 (lazy import)
  fields = [f for f in names if any(f in r for h in histories.values()
                                    for r in h)]
  if not fields:
    raise ValueError("sgperm_jax: plot_permutation_stats: no statistics")
  fig = figure((3.6 * len(fields), 3.4))
  axes = np.atleast_1d(fig.subplots(1, len(fields)))
  for ax, field in zip(axes, fields):
    for i, (name, records) in enumerate(histories.items()):
      values = [r.get(field, np.nan) for r in records]
      if not np.all(np.isnan(values)):
        ax.plot(np.arange(1, len(values) + 1), values, marker=".",
                color=f"C{i % 10}", label=name)
    ax.set_title(names[field])
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  axes[0].legend(fontsize="small")
  if title:
    fig.suptitle(title)
  return fig
