"""Plots: training curves, and one SGPerm step drawn like the paper's puzzles.

:func:`plot_history` draws loss and accuracy per epoch, one colour per
optimizer. :func:`one_step` runs the four public stages (:func:`~sgperm_jax.
partition`, :func:`~sgperm_jax.permissibility_graph`, :func:`~sgperm_jax.
find_cycles`, :func:`~sgperm_jax.permute`) on one weight vector and keeps every
intermediate result; :func:`plot_one_step` draws them as four panels: the
sorted weights with their recommendations, the permissibility graph's edges,
the cycles found, and the values after the permutation.

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
