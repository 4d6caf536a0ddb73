"""``sgperm-jax quality``: how well each optimizer learns, task by task.

Every task (an MLP and convnets on the digits, a 1-D convnet on generated
signals, a permuted-output ReLU regression) is trained with Adam, SGPerm,
LaPerm (Adam inside) and SGPerm-Adam from the same initial weights, on the
same batches, for several seeds. Permutation optimizers are scored on their
exact weights (:func:`sgperm_jax.exact_params`); LaPerm is also scored on its
free weights, which shows what the synchronisation costs.

``--sparse`` runs a different sweep instead: the digits MLP with sparse
kernels (:func:`sgperm_jax.initializers.sparse`: a random fraction
``density`` of each kernel row nonzero, He-initialised) for several
densities, trained by SGPerm and LaPerm, which keep every row's zeros and so
only rewire the net; its table gives the test accuracy per density.

``--preset quick`` runs in a few minutes on a 2-core CPU; ``--preset full``
trains longer, on more seeds. The result is a markdown table (stdout and
``--md``), JSON (``--json``) and a bar chart, or accuracy against density
(``--plot``). Run ``sgperm-jax quality -h`` for the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax import lax

import sgperm_jax
from sgperm_jax import cli
from sgperm_jax import _layout
from sgperm_jax import initializers
from sgperm_jax.experiments import data as data_lib
from sgperm_jax.experiments import models
from sgperm_jax.experiments.train import name_list

OPTIMIZERS = ("adam", "sgperm", "laperm", "sgperm-adam")
# For comparison: the papers' rules, without this library's centring, and
# Adam held to what a permutation keeps (each kernel row's initial norm).
PAPER_OPTIMIZERS = ("sgperm-paper", "laperm-paper", "sgperm-adam-paper",
                    "adam-fixed-norms")
PERMUTATION_OPTIMIZERS = ("sgperm", "laperm", "sgperm-adam", "sgperm-paper",
                          "laperm-paper", "sgperm-adam-paper")
# The sweep of --sparse: kernel densities and the optimizers that keep them.
SPARSE_DENSITIES = (1.0, 0.5, 0.2, 0.1)
SPARSE_OPTIMIZERS = ("sgperm", "laperm")


# ------------------------------------------------------------------ the data


@dataclasses.dataclass(frozen=True)
class Arrays:
  """Inputs and targets of one task, split into train and test."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def signals(count: int, length: int = 128, seed: int = 0
            ) -> tuple[np.ndarray, np.ndarray]:
  """A 6-class 1-D signal task: ``(count, length, 1)`` signals and labels.

  The classes are sine, square, sawtooth and triangle waves, a chirp and a
  damped sine, each with a random frequency (2-8 cycles), phase and
  amplitude, plus Gaussian noise of standard deviation 0.5: telling them
  apart needs the shape of a few periods, which a small 1-D convnet learns.
  """
  rng = np.random.default_rng(seed)
  t = np.linspace(0.0, 1.0, length, endpoint=False)[None, :]
  labels = rng.integers(0, 6, count)
  cycles = rng.uniform(2.0, 8.0, (count, 1))
  phase = rng.uniform(0.0, 1.0, (count, 1))
  amplitude = rng.uniform(0.5, 1.5, (count, 1))
  x = (cycles * t + phase) % 1.0  # phase in [0, 1)
  waves = np.stack([
      np.sin(2 * np.pi * x),
      np.where(x < 0.5, 1.0, -1.0),
      2 * x - 1,
      4 * np.abs(x - 0.5) - 1,
      np.sin(2 * np.pi * (cycles * t * (0.5 + t) + phase)),
      np.sin(2 * np.pi * x) * np.exp(-3.0 * t),
  ])
  out = waves[labels, np.arange(count)] * amplitude
  out += rng.normal(0.0, 0.5, out.shape)
  return out[..., None].astype(np.float32), labels.astype(np.int32)


def regression_target(x: np.ndarray) -> np.ndarray:
  """The regression task's function, ``-sin(2 pi x)``."""
  return -np.sin(2 * np.pi * x)


def _digits() -> Arrays:
  d = data_lib.load_digits()
  return Arrays(d.x_train, d.y_train, d.x_test, d.y_test)


def _csv(path: str) -> Callable[[], Arrays]:
  def load() -> Arrays:
    d = data_lib.load_csv(path)
    return Arrays(d.x_train, d.y_train, d.x_test, d.y_test)
  return load


def _signals() -> Arrays:
  x, y = signals(4000, seed=1)
  return Arrays(x[:3000], y[:3000], x[3000:], y[3000:])


def _regression() -> Arrays:
  rng = np.random.default_rng(2)
  x_train = rng.uniform(0.0, 1.0, (256, 1)).astype(np.float32)
  x_test = np.linspace(0.0, 1.0, 1000, dtype=np.float32)[:, None]
  return Arrays(x_train, regression_target(x_train).astype(np.float32),
                x_test, regression_target(x_test).astype(np.float32))


# ---------------------------------------------------------------- the models


class Conv1D(nnx.Module):
  """1-D convolutions (width 5) with ReLU and pooling by 2, then a head."""

  def __init__(self, length: int, channels: Sequence[int], num_classes: int,
               *, rngs: nnx.Rngs):
    depth = 1
    convs = []
    for out in channels:
      convs.append(nnx.Conv(depth, out, (5,), rngs=rngs))
      depth, length = out, length // 2
    self.convs = nnx.List(convs)
    self.head = nnx.Linear(length * depth, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> list[jax.Array]:
    """The output of each convolution, after its ReLU (before pooling)."""
    out = []
    for conv in self.convs:
      out.append(nnx.relu(conv(x)))
      x = nnx.avg_pool(out[-1], (2,), strides=(2,))
    return out

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.avg_pool(self.features(x)[-1], (2,), strides=(2,))
    return self.head(x.reshape(x.shape[0], -1))


class PermutedRegression(nnx.Module):
  """``x -> sum_k v_k relu(s_k (x - c_k))``: Cai, Chen and Qiao's setting.

  The hidden layer (``2 width`` units, half of each slope sign, kinks ``c_k``
  spread over ``[0, 1]``) is fixed; only the output weights ``v``, drawn
  uniformly from ``[-1, 1]``, are trained (permuted, for a permutation
  optimizer).
  """

  def __init__(self, width: int, *, rngs: nnx.Rngs):
    key = rngs.params()
    k1, k2 = jax.random.split(key)
    slopes = jnp.concatenate([jnp.ones(width), -jnp.ones(width)])
    kinks = jax.random.uniform(k1, (2 * width,))
    self.hidden = nnx.Linear(1, 2 * width, rngs=rngs)
    self.hidden.kernel = nnx.Param(slopes[None, :])
    self.hidden.bias = nnx.Param(-slopes * kinks)
    self.out = nnx.Linear(2 * width, 1, use_bias=False, rngs=rngs)
    self.out.kernel = nnx.Param(
        jax.random.uniform(k2, (2 * width, 1), minval=-1.0, maxval=1.0))

  def features(self, x: jax.Array) -> list[jax.Array]:
    """The hidden layer's output."""
    return [nnx.relu(self.hidden(x))]

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(self.features(x)[0])


def _regression_model(width: int, seed: int) -> PermutedRegression:
  return PermutedRegression(width, rngs=nnx.Rngs(seed))


@functools.cache  # one initialiser per density: its draws compile once
def _sparse_he(density: float) -> initializers.Initializer:
  return initializers.sparse(
      jax.nn.initializers.variance_scaling(2.0 / density, "fan_in",
                                           "truncated_normal"), density)


def sparse_mlp(density: float, seed: int, image_shape: Sequence[int] = (
    8, 8, 1), num_classes: int = 10) -> nnx.Module:
  """The suite's MLP with every kernel drawn by
  ``initializers.sparse(he, density)``: ``row_nonzeros(fan_in, density)``
  nonzero weights per unit, He-normal (truncated) with the variance scaled
  by ``1 / density``, so that each unit's input keeps the variance of a
  dense He initialisation. Biases stay zero."""
  model = models.make_model("mlp", image_shape, num_classes, seed=seed)
  init = _sparse_he(density)
  layers = model.layers  # type: ignore[attr-defined]
  keys = jax.random.split(jax.random.key(seed), len(layers))
  for key, layer in zip(keys, layers):
    layer.kernel = nnx.Param(init(key, layer.kernel[...].shape))
  return model


# ----------------------------------------------------------------- the tasks


@dataclasses.dataclass(frozen=True)
class Task:
  """One learning problem of the suite."""
  name: str
  description: str
  load: Callable[[], Arrays]
  model: Callable[[int], Any]  # seed -> an nnx.Module
  epochs: dict[str, int]  # per preset
  batch_size: int = 32
  regression: bool = False  # scored by test MSE, not accuracy
  frozen: Callable[[tuple[Any, ...]], bool] | None = None  # by leaf path
  density: float | None = None  # of the kernels' rows, for --sparse


def _frozen_hidden(path: tuple[Any, ...]) -> bool:
  return any(getattr(p, "key", None) == "hidden" for p in path)


def tasks(csv: str | None = None, widths: Sequence[int] = (16, 64)
          ) -> dict[str, Task]:
  """The suite's tasks by name; ``csv`` adds an MNIST-style CSV task."""
  digit_shape, classes = (8, 8, 1), 10
  out = [
      Task("mlp-digits", "MLP 64-128-10, sklearn digits", _digits,
           lambda s: models.make_model("mlp", digit_shape, classes, seed=s),
           {"quick": 10, "full": 30}),
      Task("cnn-digits", "convnet 16-32, no BatchNorm, digits", _digits,
           lambda s: models.make_model("conv", digit_shape, classes, seed=s),
           {"quick": 10, "full": 30}),
      Task("cnn-bn-digits", "convnet 16-32 with BatchNorm, digits", _digits,
           lambda s: models.make_model("conv", digit_shape, classes, seed=s,
                                       batch_norm=True),
           {"quick": 10, "full": 30}),
      Task("cnn1d-signals", "1-D convnet 16-32, 6 generated waveforms",
           _signals,
           lambda s: Conv1D(128, (16, 32), 6, rngs=nnx.Rngs(s)),
           {"quick": 4, "full": 15}),
  ]
  for width in widths:
    out.append(Task(
        f"regression-w{width}",
        f"1 -> {2 * width} -> 1 ReLU, output permuted, -sin(2 pi x)",
        _regression,
        functools.partial(_regression_model, width),
        {"quick": 100, "full": 300}, batch_size=32, regression=True,
        frozen=_frozen_hidden))
  if csv is not None:
    out.append(Task("mlp-csv", f"MLP 784-100-10, {pathlib.Path(csv).name}",
                    _csv(csv),
                    lambda s: models.make_model("mlp", (28, 28, 1), 10,
                                                seed=s, hidden=(100,)),
                    {"quick": 3, "full": 10}, batch_size=64))
  return {t.name: t for t in out}


def sparse_tasks(densities: Sequence[float] = SPARSE_DENSITIES
                 ) -> dict[str, Task]:
  """The tasks of ``--sparse``: :func:`sparse_mlp` on the digits, one per
  kernel density, by name (``sparse-mlp-d0.5``)."""
  out = [Task(f"sparse-mlp-d{d:g}",
              f"MLP 64-128-10, digits, {d:.0%} of each kernel row nonzero",
              _digits, functools.partial(sparse_mlp, d),
              {"quick": 10, "full": 30}, density=d)
         for d in densities]
  return {t.name: t for t in out}


# ------------------------------------------------------------- the optimizers


@dataclasses.dataclass(frozen=True)
class Overrides:
  """Hyperparameters that replace the defaults, to measure their effect.

  ``sgperm`` goes to :func:`sgperm_jax.sgperm` (and, less the momentum
  options, to ``permute_by_recommendation`` for ``sgperm-adam``); ``laperm``
  to :func:`sgperm_jax.laperm`; ``inner_lr`` is the learning rate of
  LaPerm's inner Adam. A ``layout`` of ``"whole-below:N"`` makes each leaf
  whose rows hold fewer than ``N`` values one row.
  """
  sgperm: dict[str, Any] = dataclasses.field(default_factory=dict)
  laperm: dict[str, Any] = dataclasses.field(default_factory=dict)
  inner_lr: float = 1e-3


def _layout_option(options: dict[str, Any]) -> dict[str, Any]:
  layout = options.get("layout")
  if not (isinstance(layout, str) and layout.startswith("whole-below:")):
    return options
  below = int(layout.split(":", 1)[1])
  return dict(options, layout=lambda params: jax.tree.map(
      lambda p: "whole" if p.ndim >= 2 and math.prod(p.shape[:-1]) < below
      else "neurons", params))


def make_optimizer(name: str, seed: int, overrides: Overrides = Overrides()
                   ) -> optax.GradientTransformation:
  """The library's defaults (what a user gets without tuning), changed only
  by ``overrides``; names ending in ``-paper`` turn this library's centring
  off (the papers' rules)."""
  base, paper = name.removesuffix("-paper"), name.endswith("-paper")
  center = {"center_recommendations": False} if paper else {}
  sgperm = _layout_option(overrides.sgperm)
  if name == "adam":
    return optax.adam(1e-3)
  if name == "adam-fixed-norms":
    return optax.chain(optax.adam(1e-3), fixed_row_norms())
  if base == "sgperm":
    return sgperm_jax.sgperm(**{"seed": seed, **center, **sgperm})
  if base == "laperm":
    return sgperm_jax.laperm(
        optax.adam(overrides.inner_lr),
        **{"center_updates": not paper, **_layout_option(overrides.laperm)})
  if base == "sgperm-adam":
    kwargs = {k: v for k, v in sgperm.items()
              if k not in ("momentum_lr", "momentum", "mu_dtype")}
    return optax.chain(optax.scale_by_adam(),
                       sgperm_jax.permute_by_recommendation(
                           **{"seed": seed, **center, **kwargs}))
  raise ValueError(f"optimizer must be one of {OPTIMIZERS + PAPER_OPTIMIZERS},"
                   f" got {name!r}")


def fixed_row_norms() -> optax.GradientTransformation:
  """Rescales each row of every kernel (leaves of two or more dimensions,
  rows ``leaf[..., j]``) back to its norm at ``init``, after the update.

  Every permutation of a row keeps its norm; chained after Adam this gives
  an optimizer held to the same constraint with free values, which shows
  how much of a gap to Adam the norms alone explain.
  """

  def norm(x):
    axes = _layout.row_axes(x.ndim, _layout.NEURONS)
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))

  def init_fn(params):
    return jax.tree.map(lambda p: norm(p) if p.ndim >= 2 else jnp.zeros(()),
                        params)

  def update_fn(updates, norms, params=None):
    if params is None:
      raise ValueError("fixed_row_norms: update needs params")

    def rescale(u, n, p):
      if p.ndim < 2:
        return u
      target = p + u
      return target * (n / norm(target)) - p

    return jax.tree.map(rescale, updates, norms, params), norms

  return optax.GradientTransformation(init_fn, update_fn)


def with_frozen(tx: optax.GradientTransformation, params: Any,
                frozen: Callable[[tuple[Any, ...]], bool] | None
                ) -> optax.GradientTransformation:
  """``tx`` on the leaves ``frozen`` leaves out (by path); zero updates on
  the others (``optax.partition``, so no optimizer sees them)."""
  if frozen is None:
    return tx
  labels = jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if frozen(path) else "train", params)
  return optax.partition({"train": tx, "frozen": optax.set_to_zero()},
                         labels)


# ------------------------------------------------------------------ the loop


@dataclasses.dataclass
class Run:
  """One optimizer on one task with one seed."""
  task: str
  optimizer: str
  seed: int
  score: float  # test accuracy of the exact weights (MSE for regression)
  free_score: float  # the same for the params as they are
  seconds: float


def batch_indices(seed: int, epochs: int, count: int, batch_size: int
                  ) -> np.ndarray:
  """``(epochs * steps, batch)`` training-set indices, a new order each
  epoch, the same for every optimizer of a seed; remainders dropped."""
  size = min(batch_size, count)
  steps = count // size
  rng = np.random.default_rng([seed, 7])
  return np.stack([rng.permutation(count)[:steps * size].reshape(steps, size)
                   for _ in range(epochs)]).reshape(-1, size)


def loss_function(task: Task) -> Callable[..., tuple[jax.Array, Any]]:
  """``(params, rest, x, y, graphdef) -> (loss, new rest)`` for the task.

  ``rest`` is the model's non-parameter state (BatchNorm statistics), which
  a forward pass in training mode updates.
  """

  def loss_fn(p, r, xb, yb, graphdef):
    m = nnx.merge(graphdef, p, r)
    out = m(xb)
    if task.regression:
      loss = jnp.mean((out - yb) ** 2)
    else:
      loss = jnp.mean(
          optax.softmax_cross_entropy_with_integer_labels(out, yb))
    return loss, nnx.state(m, nnx.Not(nnx.Param))

  return loss_fn


class SplitModel(NamedTuple):
  """A task's model for one seed, split for a functional training loop."""
  graph_train: Any  # the graph in training mode (batch statistics)
  graph_eval: Any  # the graph in evaluation mode (running statistics)
  params: Any  # the nnx.Param state
  rest: Any  # the other state (BatchNorm's running statistics)


def split_model(task: Task, seed: int) -> SplitModel:
  """The task's model built from ``seed``, split into graphs and states."""
  model = task.model(seed)
  model.train()
  graph_train, params, rest = nnx.split(  # type: ignore[misc]
      model, nnx.Param, ...)
  model.eval()
  graph_eval = nnx.split(model, nnx.Param, ...)[0]
  return SplitModel(graph_train, graph_eval, params, rest)


def train_one(task: Task, arrays: Arrays, optimizer: str, seed: int,
              epochs: int, overrides: Overrides = Overrides()) -> Run:
  """Trains ``optimizer`` on ``task`` from the seed's initial weights."""
  start = time.perf_counter()
  graph_train, graph_eval, params, rest = split_model(task, seed)
  tx = with_frozen(make_optimizer(optimizer, seed, overrides), params,
                   task.frozen)
  opt_state = tx.init(params)
  x, y = jnp.asarray(arrays.x_train), jnp.asarray(arrays.y_train)
  loss_fn = loss_function(task)

  def step(carry, batch):
    p, r, s = carry
    # Both trees are arguments of grad, so that BatchNorm updates its
    # statistics at grad's trace level; their gradient is unused.
    (grads, _), r = jax.grad(loss_fn, argnums=(0, 1), has_aux=True)(
        p, r, x[batch], y[batch], graph_train)
    updates, s = tx.update(grads, s, p)
    return (optax.apply_updates(p, updates), r, s), None

  @jax.jit
  def train(p, r, s, batches):
    return lax.scan(step, (p, r, s), batches)[0]

  @jax.jit
  def score(p, r, s):
    exact = sgperm_jax.exact_params(p, s) if optimizer in (
        PERMUTATION_OPTIMIZERS) else p
    out = []
    for q in (exact, p):
      pred = nnx.merge(graph_eval, q, r)(jnp.asarray(arrays.x_test))
      if task.regression:
        out.append(jnp.mean((pred - jnp.asarray(arrays.y_test)) ** 2))
      else:
        out.append(jnp.mean(jnp.argmax(pred, -1) == arrays.y_test))
    return jnp.stack(out)

  batches = batch_indices(seed, epochs, len(arrays.y_train), task.batch_size)
  params, rest, opt_state = train(params, rest, opt_state,
                                  jnp.asarray(batches))
  exact, free = (float(v) for v in score(params, rest, opt_state))
  return Run(task.name, optimizer, seed, exact, free,
             time.perf_counter() - start)


# --------------------------------------------------------------- reporting


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  return float(np.mean(values)), float(np.std(values))


def summarize(runs: Sequence[Run], task_list: Sequence[Task]
              ) -> list[dict[str, Any]]:
  """Per task and optimizer: mean and std over seeds of every measure."""
  rows = []
  for task in task_list:
    for opt in OPTIMIZERS + PAPER_OPTIMIZERS:
      mine = [r for r in runs if r.task == task.name and r.optimizer == opt]
      if not mine:
        continue
      score, score_std = _mean_std([r.score for r in mine])
      free, free_std = _mean_std([r.free_score for r in mine])
      rows.append(dict(task=task.name, optimizer=opt,
                       metric="test MSE" if task.regression else "accuracy",
                       seeds=len(mine), score=score, score_std=score_std,
                       free_score=free, free_score_std=free_std,
                       seconds=float(np.mean([r.seconds for r in mine])),
                       **({} if task.density is None
                          else {"density": task.density})))
  return rows


def markdown(rows: Sequence[dict[str, Any]], task_list: Sequence[Task]
             ) -> str:
  """One line per task: each optimizer's mean ± std (over seeds; accuracy in
  percent, or test MSE), LaPerm's free weights, and seconds per run."""
  def cell(row):
    if row is None:
      return "-"
    if row["metric"] == "accuracy":
      return f"{100 * row['score']:.1f} ± {100 * row['score_std']:.1f}"
    return f"{row['score']:.4f} ± {row['score_std']:.4f}"

  present = [o for o in OPTIMIZERS + PAPER_OPTIMIZERS
             if any(r["optimizer"] == o for r in rows)]
  head = ["task", "metric", *present, "laperm free", "seconds/run"]
  lines = ["| " + " | ".join(head) + " |",
           "|---|---|" + "---:|" * (len(head) - 2)]
  for task in task_list:
    by_opt = {r["optimizer"]: r for r in rows if r["task"] == task.name}
    if not by_opt:
      continue
    lap = by_opt.get("laperm")
    free = None if lap is None else dict(
        lap, score=lap["free_score"], score_std=lap["free_score_std"])
    metric = next(iter(by_opt.values()))["metric"]
    seconds = " / ".join(f"{by_opt[o]['seconds']:.1f}" for o in present
                         if o in by_opt)
    lines.append("| " + " | ".join(
        [task.name, "% accuracy" if metric == "accuracy" else metric,
         *(cell(by_opt.get(o)) for o in present), cell(free), seconds])
                 + " |")
  return "\n".join(lines)


def _percent(row: dict[str, Any] | None, key: str = "score") -> str:
  if row is None:
    return "-"
  return f"{100 * row[key]:.1f} ± {100 * row[key + '_std']:.1f}"


def density_markdown(rows: Sequence[dict[str, Any]],
                     fan_ins: Sequence[int] = (64, *models.DEFAULT_HIDDEN)
                     ) -> str:
  """The table of ``--sparse``: one line per density, with the nonzero
  weights per unit of each layer (of ``fan_ins`` inputs), each optimizer's
  test accuracy in percent (mean ± std over seeds; its exact weights) and
  LaPerm's free weights."""
  present = [o for o in OPTIMIZERS + PAPER_OPTIMIZERS
             if any(r["optimizer"] == o for r in rows)]
  free = "laperm" in present
  head = ["density", "nonzero per unit", *(f"{o} % accuracy" for o in present),
          *(["laperm free"] if free else []), "seconds/run"]
  lines = ["| " + " | ".join(head) + " |",
           "|---:|---|" + "---:|" * (len(head) - 2)]
  for density in sorted({r["density"] for r in rows}, reverse=True):
    by_opt = {r["optimizer"]: r for r in rows if r["density"] == density}
    kept = ", ".join(f"{initializers.row_nonzeros(n, density)}/{n}"
                     for n in fan_ins)
    cells = [f"{density:g}", kept, *(_percent(by_opt.get(o)) for o in present)]
    if free:
      cells.append(_percent(by_opt.get("laperm"), "free_score"))
    cells.append(" / ".join(f"{by_opt[o]['seconds']:.1f}" for o in present
                            if o in by_opt))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot_density(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
  """Test accuracy against kernel density, a line per optimizer (error
  bars: std over seeds); LaPerm's free weights dashed."""
  from sgperm_jax import plotting  # noqa: PLC0415 (lazy import)
  fig = plotting.figure((5.0, 3.6))
  ax = fig.add_subplot(1, 1, 1)
  names = list(dict.fromkeys(r["optimizer"] for r in rows))
  for i, opt in enumerate(names):
    mine = sorted((r for r in rows if r["optimizer"] == opt),
                  key=lambda r: r["density"])
    x = [r["density"] for r in mine]
    ax.errorbar(x, [r["score"] for r in mine],
                yerr=[r["score_std"] for r in mine], marker="o",
                color=f"C{i}", label=opt, capsize=3)
    if opt == "laperm":
      ax.plot(x, [r["free_score"] for r in mine], "--", color=f"C{i}",
              label="laperm free")
  ax.set_xscale("log")
  densities = sorted({r["density"] for r in rows})
  ax.set_xticks(densities, [f"{d:g}" for d in densities])
  ax.minorticks_off()
  ax.set_xlabel("density of each kernel row")
  ax.set_ylabel("test accuracy")
  ax.set_title("sparse MLP, digits", fontsize=9)
  ax.legend(fontsize=8)
  fig.savefig(path, dpi=100)


def plot(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> None:
  """Bars of each task's score per optimizer (error bars: std over seeds)."""
  from sgperm_jax import plotting  # noqa: PLC0415 (lazy import)
  names = list(dict.fromkeys(r["task"] for r in rows))
  fig = plotting.figure((3.2 * len(names), 3.4))
  for i, name in enumerate(names):
    ax = fig.add_subplot(1, len(names), i + 1)
    mine = [r for r in rows if r["task"] == name]
    ax.bar([r["optimizer"] for r in mine], [r["score"] for r in mine],
           yerr=[r["score_std"] for r in mine], color="C0")
    ax.set_title(name, fontsize=9)
    ax.set_ylabel(mine[0]["metric"])
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
  fig.savefig(path, dpi=100)


# ---------------------------------------------------------------- the command


def _json_object(text: str) -> dict[str, Any]:
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise argparse.ArgumentTypeError(f"not JSON: {text!r} ({e})") from None
  if not isinstance(value, dict):
    raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
  return value


def _densities(text: str) -> tuple[float, ...]:
  try:
    values = tuple(float(t) for t in text.split(",") if t.strip())
  except ValueError:
    values = ()
  if not values or not all(0.0 < v <= 1.0 for v in values):
    raise argparse.ArgumentTypeError(
        f"expected comma-separated densities in (0, 1], got {text!r}")
  return values


def _overrides(args: argparse.Namespace) -> Overrides:
  return Overrides(args.sgperm_options, args.laperm_options, args.inner_lr)


def build_parser() -> argparse.ArgumentParser:
  """The options of ``sgperm-jax quality``."""
  p = argparse.ArgumentParser(
      prog="sgperm-jax quality",
      description="Train every task with every optimizer and several seeds;"
                  " print a table of test scores.",
      formatter_class=cli.HelpFormatter)
  p.add_argument("--preset", choices=("quick", "full"), default="quick",
                 help="epochs per task: quick (minutes) or full")
  p.add_argument("--seeds", type=int, default=3, help="seeds per task")
  p.add_argument("--tasks", default=None,
                 help="comma-separated task names (default: all of them)")
  p.add_argument("--optimizers", default=None,
                 help="comma-separated optimizers, of "
                      + ", ".join(OPTIMIZERS + PAPER_OPTIMIZERS)
                      + " (default: " + ",".join(OPTIMIZERS) + "; with"
                      " --sparse: " + ",".join(SPARSE_OPTIMIZERS) + ")")
  p.add_argument("--sparse", nargs="?", metavar="DENSITIES",
                 type=_densities,
                 const=",".join(f"{d:g}" for d in SPARSE_DENSITIES),
                 help="instead of the suite, train the digits MLP with"
                      " sparse kernels of these comma-separated densities"
                      " (the fraction of each kernel row that is nonzero;"
                      " default: none, alone: "
                      + ",".join(f"{d:g}" for d in SPARSE_DENSITIES) + ")")
  p.add_argument("--csv", default=None,
                 help="an MNIST-style CSV (label, 784 pixels) to add the"
                      " mlp-csv task")
  p.add_argument("--epochs-scale", type=float, default=1.0,
                 help="multiply every task's epochs (smoke tests)")
  p.add_argument("--sgperm-options", type=_json_object, default={},
                 metavar="JSON", help="keyword arguments for sgperm (and"
                 " permute_by_recommendation), e.g. '{\"beta1\": 0.999}'")
  p.add_argument("--laperm-options", type=_json_object, default={},
                 metavar="JSON", help="keyword arguments for laperm, e.g."
                 " '{\"sync_period\": 20}'; a layout of 'whole-below:N'"
                 " makes leaves with rows under N values one row")
  p.add_argument("--inner-lr", type=float, default=1e-3,
                 help="learning rate of LaPerm's inner Adam")
  p.add_argument("--diagnose", default=None, metavar="TASK:OPTIMIZER",
                 help="instead of the suite, print per-layer measurements"
                      " at each LaPerm sync (every 100th step otherwise)")
  p.add_argument("--steps", type=int, default=1000,
                 help="training steps of --diagnose")
  p.add_argument("--json", default=None, help="write the results as JSON")
  p.add_argument("--md", default=None, help="write the table as markdown")
  p.add_argument("--plot", default=None, help="write a bar chart (PNG)")
  return p


def _diagnose(parser: argparse.ArgumentParser, args: argparse.Namespace,
              known: dict[str, Task]) -> int:
  from sgperm_jax.experiments import diagnostics  # noqa: PLC0415 (lazy import)
  task_name, _, opt = args.diagnose.partition(":")
  if task_name not in known or opt not in OPTIMIZERS + PAPER_OPTIMIZERS:
    parser.error(f"--diagnose: expected TASK:OPTIMIZER with a task of"
                 f" {', '.join(known)} and an optimizer of"
                 f" {', '.join(OPTIMIZERS)}, got {args.diagnose!r}")
  task = known[task_name]
  found = diagnostics.events(
      task, task.load(), lambda: make_optimizer(opt, 0, _overrides(args)),
      steps=args.steps,
      permutes_each_step=not opt.startswith("laperm"))
  print(diagnostics.table(found))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(found, indent=1))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the suite; returns the exit status (2 for a bad option)."""
  parser = build_parser()
  args = parser.parse_args(argv)
  if isinstance(args.sparse, str):  # the const: argparse does not convert it
    args.sparse = _densities(args.sparse)
  if args.sparse and (args.tasks or args.csv or args.diagnose):
    parser.error("--sparse runs its own tasks: it takes no --tasks, --csv"
                 " or --diagnose")
  known = sparse_tasks(args.sparse) if args.sparse else tasks(args.csv)
  default_optimizers = SPARSE_OPTIMIZERS if args.sparse else OPTIMIZERS
  try:
    names = (list(known) if args.tasks is None
             else name_list(args.tasks, list(known), "task(s)"))
    optimizers = name_list(args.optimizers or ",".join(default_optimizers),
                           OPTIMIZERS + PAPER_OPTIMIZERS, "optimizer(s)")
  except argparse.ArgumentTypeError as e:
    parser.error(str(e))
  if args.seeds < 1:
    parser.error("--seeds must be at least 1")
  if args.epochs_scale <= 0:
    parser.error("--epochs-scale must be positive")
  if args.diagnose:
    return _diagnose(parser, args, known)
  chosen = [known[n] for n in names]
  overrides = _overrides(args)
  try:  # a bad keyword fails here, before any training
    for opt in optimizers:
      make_optimizer(opt, 0, overrides)
  except (TypeError, ValueError) as e:
    parser.error(f"optimizer options: {e}")
  runs = []
  start = time.perf_counter()
  for task in chosen:
    try:
      arrays = task.load()
    except data_lib.DataError as e:
      print(f"sgperm-jax quality: {e}", file=sys.stderr)
      return 2
    epochs = max(1, math.ceil(task.epochs[args.preset] * args.epochs_scale))
    for opt in optimizers:
      for seed in range(args.seeds):
        run = train_one(task, arrays, opt, seed, epochs, overrides)
        runs.append(run)
        print(f"  {task.name:>16} {opt:>11} seed {seed}: {run.score:.4f}"
              f" (free {run.free_score:.4f}) in {run.seconds:.1f} s",
              file=sys.stderr, flush=True)
  rows = summarize(runs, chosen)
  table = density_markdown(rows) if args.sparse else markdown(rows, chosen)
  print(table)
  print(f"\n{len(runs)} runs in {time.perf_counter() - start:.0f} s"
        f" ({jax.devices()[0].platform}, preset {args.preset})")
  if args.md:
    pathlib.Path(args.md).write_text(table + "\n")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(dict(
        preset=args.preset, seeds=args.seeds, backend=jax.default_backend(),
        sparse=args.sparse,
        sgperm_options=args.sgperm_options,
        laperm_options=args.laperm_options, inner_lr=args.inner_lr,
        rows=rows, runs=[dataclasses.asdict(r) for r in runs]), indent=1))
  if args.plot:
    (plot_density if args.sparse else plot)(rows, pathlib.Path(args.plot))
  return 0


if __name__ == "__main__":
  sys.exit(main())
