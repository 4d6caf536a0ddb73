"""The ``sgperm-jax train`` command: train a Flax NNX model, compare optimizers.

Trains an MLP or a convnet on scikit-learn's bundled 8x8 digits (or an
MNIST-style IDX or CSV data set, or CIFAR-10 with the convnets of
Train-by-Reconnect and a ResNet-20) with SGPerm or another optimizer, shows a
progress bar with the live loss and accuracy, and ends with a summary table.
``--compare adam,laperm`` trains more optimizers from the same initial weights
on the same batches (augmented alike with ``--augment``). Permutation
optimizers are evaluated on their exact weights
(:func:`sgperm_jax.exact_params`); ``--keep-best`` keeps those of the epoch
with the best test accuracy.

Run ``sgperm-jax train -h`` (or ``python -m sgperm_jax.experiments.train -h``)
for the options. Exit status: 0 on success, 2 for a bad option or a missing or
malformed data file (one line on stderr naming it; nothing is written).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import math
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sgperm_jax
from sgperm_jax import cli
from sgperm_jax import checkpoint
from sgperm_jax._stats import tracking_states
from sgperm_jax.experiments import cifar
from sgperm_jax.experiments import data as data_lib
from sgperm_jax.experiments import models

OPTIMIZERS = ("sgperm", "adam", "sgd", "laperm", "sgperm-adam")
PERMUTATION_OPTIMIZERS = ("sgperm", "laperm", "sgperm-adam")
LEARNING_RATES = {"adam": 1e-3, "sgd": 0.1, "laperm": 1e-3}
SGPERM_OPTIONS = ("alpha0", "lamda0", "beta1", "beta2", "alpha_min",
                  "lamda_max", "momentum_lr", "momentum", "partition_size_min")
EVAL_CHUNK = 1000
AUGMENT_STREAM = 0x617567  # folded into the seed's key for augmentation keys

# A per-epoch schedule of LaPerm's sync period: (first epoch, period) pairs,
# the first from epoch 0, epochs increasing.
SyncSchedule = tuple[tuple[int, int], ...]


class UsageError(ValueError):
  """A command-line value that cannot be used; the message says why."""


_NOT_IN_JSON = {"json": False}


@dataclasses.dataclass
class RunResult:
  """What one optimizer's training run measured, and its final weights.

  ``test_accuracy`` and ``test_loss`` are those of the final weights: the
  last epoch's, or with ``keep_best`` the best epoch's (``best_epoch``,
  counted from 1, and ``best_test_accuracy``; both None without it).
  """
  optimizer: str
  test_accuracy: float
  test_loss: float
  epochs: int
  steps: int
  seconds: float  # the whole run: compilation, training, evaluation
  compile_seconds: float  # the first step, which compiles
  train_seconds: float  # the other training steps
  history: dict[str, list[float]]  # per epoch: train/test loss and accuracy
  best_epoch: int | None = None  # keep_best: the epoch whose weights are kept
  best_test_accuracy: float | None = None
  # the final weights (exact ones for a permutation optimizer), an nnx.State
  params: Any = dataclasses.field(default=None, repr=False, compare=False,
                                  metadata=_NOT_IN_JSON)
  # the model's other final state (BatchNorm statistics), an nnx.State
  model_state: Any = dataclasses.field(default=None, repr=False,
                                       compare=False, metadata=_NOT_IN_JSON)

  @property
  def steps_per_second(self) -> float:
    """Training steps per second, compilation excluded."""
    return (self.steps - 1) / self.train_seconds if self.train_seconds else 0.

  def metrics(self) -> dict[str, Any]:
    """The final metrics and the history, as stored by ``--json``.

    ``best_epoch`` and ``best_test_accuracy`` only when they are set; never
    the weights.
    """
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
           if f.metadata.get("json", True)}
    out["history"] = {k: list(v) for k, v in self.history.items()}
    if self.best_epoch is None:
      del out["best_epoch"], out["best_test_accuracy"]
    out["steps_per_second"] = self.steps_per_second
    return out


# ----------------------------------------------------------------- optimizers


def sgperm_kwargs(args: argparse.Namespace) -> dict[str, Any]:
  """The SGPerm hyperparameters given on the command line (others default)."""
  return {name: getattr(args, name) for name in SGPERM_OPTIONS
          if getattr(args, name) is not None}


def sync_period_schedule(schedule: SyncSchedule, steps_per_epoch: int
                         ) -> optax.Schedule:
  """LaPerm's per-epoch sync period as an optax schedule over steps.

  Args:
    schedule: ``(first epoch, period)`` pairs, the first from epoch 0, the
      epochs increasing (what ``--sync-period 20,10:50`` parses to).
    steps_per_epoch: training steps per epoch.

  Returns:
    A schedule mapping the step count (from 0) to the int32 period of its
    epoch, for ``sgperm_jax.laperm(sync_period=...)``.

  Example:
    >>> from sgperm_jax.experiments import train
    >>> fn = train.sync_period_schedule(((0, 20), (10, 50), (30, 100)), 7)
    >>> [int(fn(step)) for step in (0, 69, 70, 209, 210, 10**6)]
    [20, 20, 50, 50, 100, 100]
  """
  periods = np.asarray([p for _, p in schedule], np.int32)
  starts = np.asarray([e * steps_per_epoch for e, _ in schedule[1:]],
                      np.int32)

  def period(count: jax.typing.ArrayLike) -> jax.Array:
    return jnp.asarray(periods)[jnp.searchsorted(
        jnp.asarray(starts), jnp.asarray(count, jnp.int32), side="right")]

  return period


def make_optimizer(name: str, args: argparse.Namespace,
                   steps_per_epoch: int = 1) -> optax.GradientTransformation:
  """The optax transformation named ``name``, configured from ``args``.

  Args:
    name: one of :data:`OPTIMIZERS`.
    args: parsed options (SGPerm hyperparameters, ``learning_rate``,
      ``sync_period``, ``seed``).
    steps_per_epoch: training steps per epoch, which turn a per-epoch
      ``sync_period`` schedule into one over steps.

  Returns:
    The transformation; ``sgperm`` and ``sgperm-adam`` take the SGPerm
    hyperparameters, ``laperm`` is ``sgperm_jax.laperm(optax.adam(lr))``.

  Raises:
    UsageError: for an unknown name or a rejected hyperparameter.
  """
  lr = LEARNING_RATES.get(name) if args.learning_rate is None else (
      args.learning_rate)
  try:
    track = bool(getattr(args, "track_stats", False))
    if name == "sgperm":
      return sgperm_jax.sgperm(**sgperm_kwargs(args), seed=args.seed,
                               track_stats=track)
    if name == "sgperm-adam":
      kwargs = sgperm_kwargs(args)
      kwargs.pop("momentum_lr", None)
      kwargs.pop("momentum", None)
      return optax.chain(optax.scale_by_adam(),
                         sgperm_jax.permute_by_recommendation(
                             **kwargs, seed=args.seed, track_stats=track))
    if name == "adam":
      return optax.adam(lr)
    if name == "sgd":
      return optax.sgd(lr)
    if name == "laperm":
      period = args.sync_period
      if isinstance(period, tuple):
        period = sync_period_schedule(period, steps_per_epoch)
      extra = {} if period is None else {"sync_period": period}
      return sgperm_jax.laperm(optax.adam(lr), **extra, track_stats=track)
  except (TypeError, ValueError) as e:
    if isinstance(e, UsageError):
      raise
    raise UsageError(f"optimizer {name}: {e}") from e
  raise UsageError(f"unknown optimizer {name!r}; choose from"
                   f" {', '.join(OPTIMIZERS)}")


# ------------------------------------------------------ permutation statistics

# What the trainer logs per epoch from sgperm_jax.permutation_stats.
STATS_FIELDS = ("moved_fraction", "mean_displacement", "cycles",
                "mean_cycle_length", "free_distance")


def stats_summary(opt_state: Any, params: Any
                  ) -> dict[str, float | None] | None:
  """The last step's (LaPerm: sync's) statistics, summed over the leaves.

  Shares and mean displacements are weighted by the leaves' sizes, cycles
  are added up, and the mean cycle length is moved slots per cycle.

  Args:
    opt_state: the optimizer state.
    params: the params (a tree of the state's structure), for leaf sizes.

  Returns:
    ``{field: value}`` for the fields of :data:`STATS_FIELDS` the optimizer
    records (``free_distance`` for LaPerm only); values are None before the
    first record. None if the optimizer tracks no statistics.
  """
  states = tracking_states(opt_state)
  if not states:
    return None
  fields = (STATS_FIELDS if isinstance(states[0][0], sgperm_jax.SyncStats)
            else STATS_FIELDS[:-1])
  stats = sgperm_jax.permutation_stats(opt_state)
  is_record = lambda x: x is None or isinstance(
      x, (sgperm_jax.PermutationStats, sgperm_jax.SyncStats))
  records = jax.tree.leaves(stats, is_leaf=is_record)
  sizes = [int(np.size(x)) for x in jax.tree.leaves(params)]
  if len(records) != len(sizes):
    raise ValueError(f"stats_summary: {len(records)} stats for"
                     f" {len(sizes)} params")
  pairs = [(r, n) for r, n in zip(records, sizes) if r is not None]
  if not pairs:
    return dict.fromkeys(fields)
  slots = sum(n for _, n in pairs)
  mean = lambda field: sum(float(getattr(r, field)) * n
                           for r, n in pairs) / slots
  moved = sum(float(r.moved_fraction) * n for r, n in pairs)
  cycles = sum(int(r.cycles) for r, _ in pairs)
  out = {"moved_fraction": moved / slots,
         "mean_displacement": mean("mean_displacement"),
         "cycles": float(cycles),
         "mean_cycle_length": moved / cycles if cycles else 0.0,
         "free_distance": mean("free_distance") if len(fields) == 5 else None}
  return {f: out[f] for f in fields}


# -------------------------------------------------------------- the train step


def _loss_and_correct(graphdef: nnx.GraphDef, params: Any, x: jax.Array,
                      y: jax.Array, rest: Any = None
                      ) -> tuple[jax.Array, jax.Array]:
  model = (nnx.merge(graphdef, params) if rest is None
           else nnx.merge(graphdef, params, rest))
  logits = model(x)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return losses, (jnp.argmax(logits, -1) == y)


def train_step_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                  augment: Callable[[jax.Array, jax.Array], jax.Array]
                  | None = None
                  ) -> Callable[..., tuple[Any, Any, Any, jax.Array]]:
  """The (unjitted) train step for one model and one optimizer.

  The returned function maps ``(params, opt_state, rest, images, labels,
  batch, key)``, where ``rest`` is the model's other state (BatchNorm
  statistics; an empty ``nnx.State`` for models without), ``batch`` indexes
  the training set and ``key`` is the step's augmentation key, to
  ``(params, opt_state, rest, metrics)`` with ``metrics = [loss, accuracy]``
  of the batch before the update.

  Args:
    graphdef: the model's graph in training mode (``model.train()``, then
      ``nnx.split(model, nnx.Param, ...)``).
    tx: the optimizer.
    augment: if given, ``augment(key, images)`` transforms the batch's
      images (e.g. :func:`sgperm_jax.experiments.cifar.augment`); else
      ``key`` is ignored (pass None).
  """

  def step(params, opt_state, rest, images, labels, batch, key):
    x, y = images[batch], labels[batch]
    if augment is not None:
      x = augment(key, x)

    def loss_fn(p, r):
      model = nnx.merge(graphdef, p, r)
      logits = model(x)
      losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
      return jnp.mean(losses), (jnp.mean(correct),
                                nnx.state(model, nnx.Not(nnx.Param)))

    # The state is an argument of grad too (its gradient unused), so that
    # BatchNorm updates its statistics at grad's trace level.
    (loss, (accuracy, rest)), (grads, _) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True, allow_int=True)(params, rest)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, rest,
            jnp.stack([loss, accuracy]))

  return step


def eval_fn(graphdef: nnx.GraphDef, permutes: bool
            ) -> Callable[..., jax.Array]:
  """Sums of loss and correct predictions over one padded chunk of images.

  The returned function maps ``(params, opt_state, images, labels, mask,
  rest=None)`` to ``[loss_sum, correct_sum]`` over the entries where
  ``mask`` is set; a permutation optimizer is evaluated on
  :func:`sgperm_jax.exact_params`. ``rest`` is the model's other state
  (BatchNorm statistics), for a ``graphdef`` in evaluation mode.
  """

  def evaluate(params, opt_state, x, y, mask, rest=None):
    if permutes:
      params = sgperm_jax.exact_params(params, opt_state)
    losses, correct = _loss_and_correct(graphdef, params, x, y, rest)
    mask = mask.astype(losses.dtype)
    return jnp.stack([jnp.sum(losses * mask), jnp.sum(correct * mask)])

  return evaluate


def final_weights_fn(permutes: bool) -> Callable[[Any, Any], Any]:
  """``(params, opt_state) -> the weights to keep``: the exact weights
  (:func:`sgperm_jax.exact_params`) of a permutation optimizer, else the
  params; a tree of the structure of ``params`` (``nnx.Param`` included)."""

  def weights(params, opt_state):
    if not permutes:
      return params
    exact = sgperm_jax.exact_params(params, opt_state)
    return jax.tree.unflatten(jax.tree.structure(params),
                              jax.tree.leaves(exact))

  return weights


def eval_chunks(x: np.ndarray, y: np.ndarray, size: int):
  """Pads the images to whole chunks of ``size``; yields (x, y, mask)."""
  count = len(y)
  padded = math.ceil(count / size) * size
  pad = [(0, padded - count)] + [(0, 0)] * (x.ndim - 1)
  x, y = np.pad(x, pad), np.pad(y, (0, padded - count))
  mask = np.arange(padded) < count
  return [(jnp.asarray(x[i:i + size]), jnp.asarray(y[i:i + size]),
           jnp.asarray(mask[i:i + size])) for i in range(0, padded, size)]


def batch_order(seed: int, epoch: int, count: int, batch_size: int
                ) -> np.ndarray:
  """The batches of one epoch, ``(steps, batch_size)`` indices.

  The same for every optimizer of a comparison; the last partial batch is
  dropped so that every step has the same shape (one compilation).
  """
  order = np.random.default_rng([seed, epoch]).permutation(count)
  steps = count // batch_size
  return order[:steps * batch_size].reshape(steps, batch_size)


def augment_keys(seed: int, first_step: int, steps: int) -> np.ndarray:
  """The augmentation keys of ``steps`` steps from ``first_step`` (from 0).

  Step ``n``'s key is ``fold_in(fold_in(PRNGKey(seed), AUGMENT_STREAM),
  n)``: the same for every optimizer of a comparison, and the same after
  ``--resume``.

  Returns:
    Raw keys, ``uint32 (steps, 2)``.
  """
  base = jax.random.fold_in(jax.random.PRNGKey(seed), AUGMENT_STREAM)
  index = jnp.arange(first_step, first_step + steps, dtype=jnp.uint32)
  return np.asarray(jax.vmap(lambda i: jax.random.fold_in(base, i))(index))


# ---------------------------------------------------------------- the loop


def _progress(total: int, name: str, enabled: bool):
  from tqdm.auto import tqdm  # noqa: PLC0415 (lazy import)
  return tqdm(total=total, desc=f"{name:>11}", unit="step", leave=True,
              disable=not enabled, dynamic_ncols=True)


@dataclasses.dataclass
class _Clock:
  """Seconds spent compiling (the first step) and on the other steps."""
  compile_seconds: float = 0.0
  train_seconds: float = 0.0
  steps: int = 0


@dataclasses.dataclass
class _Best:
  """The weights of the best epoch so far (``--keep-best``)."""
  epoch: int  # counted from 1
  test_accuracy: float
  test_loss: float
  params: Any
  rest: Any

  def beaten_by(self, accuracy: float, loss: float) -> bool:
    """Whether an epoch with this accuracy and loss is better (ties in
    accuracy go to the lower loss, then to the earlier epoch)."""
    return accuracy > self.test_accuracy or (
        accuracy == self.test_accuracy and loss < self.test_loss)


def _train_epoch(step: Callable[..., Any], state: tuple[Any, Any, Any],
                 images: jax.Array, labels: jax.Array, batches: np.ndarray,
                 keys: Iterable[Any], bar: Any, clock: _Clock
                 ) -> tuple[tuple[Any, Any, Any], np.ndarray]:
  """Runs one epoch of steps from ``state = (params, opt_state, rest)``;
  returns the new state and the mean [loss, acc]."""
  params, opt_state, rest = state
  refresh = max(1, len(batches) // 10)
  metrics = []
  start = time.perf_counter()
  for batch, key in zip(batches, keys):
    if clock.steps == 0:
      bar.set_postfix_str("compiling the first step", refresh=True)
    params, opt_state, rest, m = step(params, opt_state, rest, images, labels,
                                      jnp.asarray(batch), key)
    metrics.append(m)
    clock.steps += 1
    if clock.steps == 1:  # compiles: timed apart from the other steps
      jax.block_until_ready(m)
      clock.compile_seconds = time.perf_counter() - start
      start = time.perf_counter()
      bar.reset(total=bar.total)  # no rate (or ETA) from the compilation
      bar.set_postfix_str("", refresh=False)
    if len(metrics) % refresh == 0:
      loss, acc = np.mean(np.asarray(metrics[-refresh:]), axis=0)
      bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}", refresh=False)
    bar.update(1)
  mean = np.mean(np.asarray(metrics), axis=0)  # waits for the last step
  clock.train_seconds += time.perf_counter() - start
  return (params, opt_state, rest), mean


def _checkpoint_extra(rest: Any, best: _Best | None) -> dict[str, Any] | None:
  """What a checkpoint keeps besides params and optimizer state: the model's
  other state (if it has any) and, with ``--keep-best``, the best weights."""
  extra = {}
  has_rest = bool(jax.tree.leaves(rest))
  if has_rest:
    extra["rest"] = rest
  if best is not None:
    extra["best_params"] = best.params
    if has_rest:
      extra["best_rest"] = best.rest
  return extra or None


def _restore(checkpoint_dir: pathlib.Path, params: Any, opt_state: Any,
             rest: Any, weights: Callable[[Any, Any], Any], keep_best: bool
             ) -> tuple[Any, Any, Any, int, dict[str, Any], _Best | None]:
  """Restores the newest checkpoint: params, optimizer state, rest, the
  epochs done, the history and the best epoch so far (``keep_best``).

  Checkpoints saved with ``--keep-best`` also resume without it (the best
  weights are then dropped); the other way round is refused.
  """
  errors = []
  best_template = _Best(0, 0., 0., jax.eval_shape(weights, params, opt_state),
                        rest)
  for with_best in (keep_best, not keep_best):
    template = _checkpoint_extra(rest, best_template if with_best else None)
    try:
      saved = checkpoint.restore_checkpoint(checkpoint_dir, params,
                                            opt_state, extra=template)
    except (ValueError, FileNotFoundError) as e:
      errors.append(str(e).splitlines()[0])
      continue
    if keep_best and not with_best:
      raise UsageError(f"--keep-best: the checkpoints in {checkpoint_dir}"
                       " were saved without --keep-best; resume without it")
    best = None
    if keep_best:
      info = saved.metadata["best"]
      best = _Best(info["epoch"], info["test_accuracy"], info["test_loss"],
                   saved.extra["best_params"],
                   saved.extra.get("best_rest", rest))
    if template is not None and "rest" in template:
      rest = saved.extra["rest"]
    return (saved.params, saved.opt_state, rest, saved.step,
            saved.metadata["history"], best)
  raise UsageError(f"--resume: {errors[0]} (were the checkpoints in"
                   f" {checkpoint_dir} saved with the same --model?)")


def train_run(name: str, tx: optax.GradientTransformation,
              graphdef: nnx.GraphDef, params: Any, dataset: data_lib.Dataset,
              *, epochs: int, batch_size: int, seed: int,
              progress: bool = True,
              checkpoint_dir: pathlib.Path | None = None,
              resume: bool = False, rest: Any = None,
              graph_eval: nnx.GraphDef | None = None,
              augment: Callable[[jax.Array, jax.Array], jax.Array]
              | None = None,
              keep_best: bool = False,
              on_epoch: Callable[[int, Any, Any], None] | None = None
              ) -> RunResult:
  """Trains one optimizer from ``params`` and evaluates it after each epoch.

  The train step is jitted once for this optimizer and every step has the
  same shapes, so it compiles once.

  Args:
    name: the optimizer's name (for the progress bar and the result);
      names in :data:`PERMUTATION_OPTIMIZERS` are evaluated on their exact
      weights.
    tx: the optimizer.
    graphdef: the model's graph definition (``nnx.split``), in training mode
      for a model with BatchNorm.
    params: the initial parameters (an ``nnx.State`` of ``nnx.Param``).
    dataset: the data.
    epochs: passes over the training set.
    batch_size: images per step.
    seed: seed of the batch order and of the augmentation.
    progress: whether to show a progress bar.
    checkpoint_dir: if given, save params, optimizer state, the model's
      other state, the best weights (``keep_best``) and history there after
      every epoch (the last two kept).
    resume: continue from the newest checkpoint in ``checkpoint_dir``.
    rest: the model's other initial state (BatchNorm statistics:
      ``nnx.split(model, nnx.Param, ...)``); None for a model without.
    graph_eval: the graph definition in evaluation mode (``model.eval()``);
      by default ``graphdef``.
    augment: if given, ``augment(key, images)`` transforms each training
      batch inside the train step; step ``n``'s key is
      :func:`augment_keys` of ``seed``.
    keep_best: keep the weights of the epoch with the best test accuracy
      (ties: lower test loss, then the earlier epoch) as the final ones.
    on_epoch: if given, called after every epoch with the epoch (from 1),
      the weights (exact ones for a permutation optimizer) and the
      optimizer state, e.g. to keep snapshots.

  An optimizer made with ``track_stats=True`` also logs, per epoch, the
  :func:`stats_summary` of its last step in the history.

  Returns:
    A :class:`RunResult` with the final weights.
  """
  start = time.perf_counter()
  permutes = name in PERMUTATION_OPTIMIZERS
  rest = nnx.State({}) if rest is None else rest
  step = jax.jit(train_step_fn(graphdef, tx, augment))
  evaluate = jax.jit(eval_fn(graphdef if graph_eval is None else graph_eval,
                             permutes))
  weights = jax.jit(final_weights_fn(permutes))
  images, labels = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
  test = eval_chunks(dataset.x_test, dataset.y_test,
                     min(EVAL_CHUNK, len(dataset.y_test)))
  opt_state = tx.init(params)
  history: dict[str, list[float]] = {
      k: [] for k in ("train_loss", "train_accuracy", "test_loss",
                      "test_accuracy")}
  first_epoch = 0
  best: _Best | None = None
  if (resume and checkpoint_dir is not None
      and checkpoint.latest_step(checkpoint_dir) is not None):
    params, opt_state, rest, first_epoch, history, best = _restore(
        checkpoint_dir, params, opt_state, rest, weights, keep_best)
  clock = _Clock()
  steps_per_epoch = len(labels) // batch_size
  total = max(0, epochs - first_epoch) * steps_per_epoch
  state = (params, opt_state, rest)
  with _progress(total, name, progress) as bar:
    for epoch in range(first_epoch, epochs):
      batches = batch_order(seed, epoch, len(labels), batch_size)
      keys: Iterable[Any] = (
          augment_keys(seed, epoch * steps_per_epoch, len(batches))
          if augment is not None else [None] * len(batches))
      state, (loss, acc) = _train_epoch(step, state, images, labels,
                                        batches, keys, bar, clock)
      params, opt_state, rest = state
      sums = np.sum([np.asarray(evaluate(params, opt_state, *c, rest))
                     for c in test], axis=0)
      test_loss, test_acc = (float(v) for v in sums / len(dataset.y_test))
      for key, value in (("train_loss", loss), ("train_accuracy", acc),
                         ("test_loss", test_loss), ("test_accuracy", test_acc)):
        history[key].append(float(value))
      for key, value in (stats_summary(opt_state, params) or {}).items():
        history.setdefault(key, []).append(value)  # type: ignore[arg-type]
      if on_epoch is not None:
        on_epoch(epoch + 1, weights(params, opt_state), opt_state)
      if keep_best and (best is None or best.beaten_by(test_acc, test_loss)):
        best = _Best(epoch + 1, test_acc, test_loss,
                     weights(params, opt_state), rest)
      bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}",
                      test_acc=f"{test_acc:.3f}")
      if checkpoint_dir is not None:
        metadata: dict[str, Any] = {"history": history}
        if best is not None:
          metadata["best"] = {"epoch": best.epoch,
                              "test_accuracy": best.test_accuracy,
                              "test_loss": best.test_loss}
        checkpoint.save_checkpoint(checkpoint_dir, epoch + 1, params,
                                   opt_state, metadata=metadata,
                                   extra=_checkpoint_extra(rest, best),
                                   max_to_keep=2)
  result = RunResult(
      optimizer=name, test_accuracy=history["test_accuracy"][-1],
      test_loss=history["test_loss"][-1], epochs=epochs, steps=clock.steps,
      seconds=0.0, compile_seconds=clock.compile_seconds,
      train_seconds=clock.train_seconds, history=history,
      params=None, model_state=rest)
  if best is None:
    result.params = weights(params, opt_state)
  else:
    result = dataclasses.replace(
        result, test_accuracy=best.test_accuracy, test_loss=best.test_loss,
        best_epoch=best.epoch, best_test_accuracy=best.test_accuracy,
        params=best.params, model_state=best.rest)
  result.seconds = time.perf_counter() - start
  return result


# -------------------------------------------------------------- reporting


def summary_table(results: Sequence[RunResult]) -> str:
  """A markdown table: optimizer, test accuracy and loss, steps, speed."""
  lines = ["| optimizer | test accuracy | test loss | steps | seconds |"
           " steps/s |",
           "|---|---:|---:|---:|---:|---:|"]
  for r in results:
    lines.append(f"| {r.optimizer} | {r.test_accuracy:.4f} |"
                 f" {r.test_loss:.4f} | {r.steps} | {r.seconds:.1f} |"
                 f" {r.steps_per_second:.1f} |")
  return "\n".join(lines)


def _staged(path: pathlib.Path, write: Callable[[str], object]) -> str:
  """Writes to a temporary file beside ``path``; returns its name."""
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix,
                             dir=path.parent)
  os.close(fd)
  try:
    write(tmp)
  except BaseException:
    os.remove(tmp)
    raise
  return tmp


def json_document(results: Sequence[RunResult], config: dict[str, Any]
                  ) -> dict[str, Any]:
  """What ``--json`` writes.

  The first optimizer's final metrics at the top level (``test_accuracy``,
  ``test_loss``, ``epochs``, ``seconds``, ...), every optimizer's metrics and
  history under ``"runs"``, and the options under ``"config"``.
  """
  first = results[0].metrics()
  first.pop("history")
  return {**first, "config": config,
          "runs": {r.optimizer: r.metrics() for r in results}}


def stats_records(history: dict[str, list[float]]) -> list[dict[str, float]]:
  """The per-epoch permutation statistics of a history, one dict an epoch."""
  fields = [f for f in STATS_FIELDS if f in history]
  return [{f: np.nan if history[f][k] is None else history[f][k]
           for f in fields}
          for k in range(len(history[fields[0]]))] if fields else []


def stats_plot_path(plot_path: pathlib.Path) -> pathlib.Path:
  """Where ``--plot FILE.png`` puts the statistics: ``FILE-stats.png``."""
  return plot_path.with_name(f"{plot_path.stem}-stats{plot_path.suffix}")


def write_outputs(results: Sequence[RunResult], config: dict[str, Any],
                  json_path: pathlib.Path | None,
                  plot_path: pathlib.Path | None, title: str) -> None:
  """Writes ``--json`` and ``--plot``: both, or (on an error) neither."""
  staged = []
  try:
    if plot_path is not None:
      from sgperm_jax import plotting  # noqa: PLC0415 (lazy import)
      fig = plotting.plot_history({r.optimizer: r.history for r in results},
                                  title=title)
      staged.append((_staged(plot_path, lambda t: fig.savefig(t, dpi=120)),
                     plot_path))
      logged = {r.optimizer: stats_records(r.history) for r in results}
      logged = {k: v for k, v in logged.items() if v}
      if logged:
        stats_fig = plotting.plot_permutation_stats(logged, title=title)
        path = stats_plot_path(plot_path)
        staged.append((_staged(path, lambda t: stats_fig.savefig(t, dpi=120)),
                       path))
    if json_path is not None:
      text = json.dumps(json_document(results, config), indent=2) + "\n"
      staged.append((_staged(json_path, lambda t: pathlib.Path(t).write_text(
          text, encoding="utf-8")), json_path))
    for tmp, path in staged:
      os.replace(tmp, path)
  finally:
    for tmp, _ in staged:
      if os.path.exists(tmp):
        os.remove(tmp)


# -------------------------------------------------------------- the CLI


def _int_list(text: str) -> tuple[int, ...]:
  try:
    values = tuple(int(v) for v in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated integers, got {text!r}") from None
  if not values or min(values) < 1:
    raise argparse.ArgumentTypeError(f"expected positive sizes, got {text!r}")
  return values


def positive_int(text: str) -> int:
  """An argparse type: an integer of at least 1."""
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def name_list(text: str, known: Sequence[str], what: str) -> tuple[str, ...]:
  """The comma-separated names of ``text``, each one of ``known``.

  Raises:
    argparse.ArgumentTypeError: naming the unknown ones (``what`` says of
      what) and the choices, or saying that there were none.
  """
  names = tuple(n.strip() for n in text.split(",") if n.strip())
  unknown = [n for n in names if n not in known]
  if unknown or not names:
    raise argparse.ArgumentTypeError(
        f"unknown {what} {', '.join(unknown) or text!r}; choose from"
        f" {', '.join(known)}")
  return names


def _optimizer_list(text: str) -> tuple[str, ...]:
  return name_list(text, OPTIMIZERS, "optimizer(s)")


def parse_sync_period(text: str) -> int | SyncSchedule:
  """``--sync-period``: one period, or a per-epoch schedule.

  ``"100"`` is 100 steps throughout; ``"20,10:50,30:100"`` is 20 from epoch
  0, 50 from epoch 10 and 100 from epoch 30 (epochs counted from 0).

  Returns:
    The period, or the schedule's ``(first epoch, period)`` pairs.

  Raises:
    argparse.ArgumentTypeError: saying what is wrong with ``text``.

  Example:
    >>> from sgperm_jax.experiments import train
    >>> train.parse_sync_period("20,10:50,30:100")
    ((0, 20), (10, 50), (30, 100))
    >>> train.parse_sync_period("50")
    50
  """
  usage = ("expected a period (e.g. 100) or a per-epoch schedule PERIOD,"
           "EPOCH:PERIOD,... (e.g. 20,10:50,30:100: 20 steps from epoch 0,"
           " 50 from epoch 10, 100 from epoch 30)")
  entries: list[tuple[int, int]] = []
  for i, item in enumerate(part.strip() for part in text.split(",")):
    epoch_text, sep, period_text = item.rpartition(":")
    try:
      epoch = int(epoch_text) if sep else 0
      period = int(period_text)
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"{item!r} in {text!r}: {usage}") from None
    if period < 1:
      raise argparse.ArgumentTypeError(
          f"{item!r} in {text!r}: a period must be at least 1 step")
    if i == 0 and epoch != 0:
      raise argparse.ArgumentTypeError(
          f"{text!r}: the schedule must start at epoch 0 (e.g."
          f" {period},{epoch}:...)")
    if i > 0 and not sep:
      raise argparse.ArgumentTypeError(
          f"{item!r} in {text!r}: give the epoch it starts at, as"
          f" EPOCH:{item}; {usage}")
    if entries and epoch <= entries[-1][0]:
      raise argparse.ArgumentTypeError(
          f"{item!r} in {text!r}: epochs must increase (epoch {epoch} after"
          f" {entries[-1][0]})")
    entries.append((epoch, period))
  return entries[0][1] if len(entries) == 1 else tuple(entries)


def _default_of(fn: Callable[..., Any], name: str) -> Any:
  """The default value of ``fn``'s argument ``name``."""
  return inspect.signature(fn).parameters[name].default


def build_parser() -> argparse.ArgumentParser:
  """The options of ``sgperm-jax train``."""
  p = argparse.ArgumentParser(
      prog="sgperm-jax train",
      description="Train a Flax NNX model by permuting its weights (SGPerm),"
      " optionally against other optimizers from the same initial weights.",
      formatter_class=cli.HelpFormatter)
  p.add_argument("--dataset", "--data", dest="dataset", default="digits",
                 help="'digits' (default: scikit-learn's bundled 8x8 digits),"
                 " 'cifar10:DIR' (the CIFAR-10 python batches data_batch_1..5"
                 " and test_batch in DIR or DIR/cifar-10-batches-py; never"
                 " downloaded), an MNIST-style IDX images file or directory"
                 " (.gz or not), or a CSV of pixels (0..255) then the label"
                 " per line")
  p.add_argument("--model", choices=models.MODELS, default="mlp",
                 help="mlp, conv (small convnet), conv2, conv4, conv13"
                 " (Train-by-Reconnect's CIFAR convnets, with BatchNorm) or"
                 " resnet20 (CIFAR ResNet-20) (default: mlp)")
  p.add_argument("--hidden", type=_int_list, default=models.DEFAULT_HIDDEN,
                 help="hidden widths of the MLP, comma-separated (default:"
                 f" {','.join(map(str, models.DEFAULT_HIDDEN))})")
  p.add_argument("--channels", type=_int_list,
                 default=models.DEFAULT_CHANNELS,
                 help="channels of the convnet's 3x3 convolutions (default:"
                 f" {','.join(map(str, models.DEFAULT_CHANNELS))})")
  p.add_argument("--optimizer", choices=OPTIMIZERS, default="sgperm",
                 help="default: sgperm")
  p.add_argument("--compare", type=_optimizer_list, default=(),
                 help="more optimizers to train from the same initial"
                 " weights on the same batches, comma-separated (e.g."
                 " adam,laperm)")
  p.add_argument("--epochs", type=positive_int, default=10,
                 help="default: 10")
  p.add_argument("--batch-size", type=positive_int, default=32,
                 help="default: 32")
  p.add_argument("--seed", type=int, default=0,
                 help="seed of the initial weights, the batch order and the"
                 " random partitions (default: 0)")
  p.add_argument("--learning-rate", type=float, default=None,
                 help="for adam, sgd and laperm's inner adam (default: 1e-3"
                 " for adam and laperm, 0.1 for sgd)")
  p.add_argument("--sync-period", type=parse_sync_period, default=None,
                 metavar="K|K,EPOCH:K,...",
                 help="laperm: steps between synchronisations, or a"
                 " per-epoch schedule: 20,10:50,30:100 is 20 from epoch 0,"
                 " 50 from epoch 10, 100 from epoch 30 (default:"
                 f" {_default_of(sgperm_jax.laperm, 'sync_period')}, as"
                 " sgperm_jax.laperm)")
  p.add_argument("--augment", action=argparse.BooleanOptionalAction,
                 default=None,
                 help="augment each training batch on the device: a random"
                 f" crop of the image padded with {cifar.DEFAULT_PADDING}"
                 " zeros and a random horizontal flip, keyed by --seed and"
                 " the step (default: on for cifar10 data, off otherwise)")
  p.add_argument("--track-stats", action="store_true",
                 help="sgperm, sgperm-adam, laperm: record what each step"
                 " (laperm: each sync) moved (sgperm_jax.permutation_stats);"
                 " the last record of each epoch goes into the --json"
                 " history and, with --plot FILE.png, into FILE-stats.png"
                 " (default: off)")
  p.add_argument("--keep-best", action="store_true",
                 help="keep the weights (a permutation optimizer's exact"
                 " ones) of the epoch with the best test accuracy and use"
                 " them as the final weights: the reported test accuracy"
                 " and loss are theirs, and --json adds best_epoch (from 1)"
                 " and best_test_accuracy (default: off, the last epoch's"
                 " weights)")
  sg = p.add_argument_group(
      "SGPerm hyperparameters", "for sgperm and sgperm-adam (which ignores"
      " --momentum-lr and --momentum); defaults: sgperm_jax.sgperm's")
  for name, kind in (("alpha0", float), ("lamda0", float), ("beta1", float),
                     ("beta2", float), ("alpha_min", float),
                     ("lamda_max", float), ("momentum_lr", float),
                     ("momentum", float), ("partition_size_min", int)):
    sg.add_argument("--" + name.replace("_", "-"), dest=name, type=kind,
                    default=None, metavar=kind.__name__.upper(),
                    help=f"default: {_default_of(sgperm_jax.sgperm, name)}")
  p.add_argument("--plot", type=pathlib.Path, default=None, metavar="FILE.png",
                 help="save loss and accuracy curves (needs matplotlib)")
  p.add_argument("--json", type=pathlib.Path, default=None, metavar="FILE",
                 help="save the final metrics and the per-epoch history")
  p.add_argument("--checkpoint-dir", type=pathlib.Path, default=None,
                 metavar="DIR", help="save a checkpoint after every epoch in"
                 " DIR/<optimizer> (needs orbax-checkpoint: pip install"
                 " 'sgperm-jax[checkpoint]')")
  p.add_argument("--resume", action="store_true",
                 help="continue from the newest checkpoints in"
                 " --checkpoint-dir")
  p.add_argument("--no-progress", dest="progress", action="store_false",
                 help="hide the progress bars")
  return p


def _check_outputs(args: argparse.Namespace) -> None:
  """Fails before training if an output cannot be written."""
  for flag, path in (("--json", args.json), ("--plot", args.plot)):
    if path is None:
      continue
    if path.is_dir():
      raise UsageError(f"{flag} {path}: is a directory")
    if not path.parent.is_dir():
      raise UsageError(f"{flag} {path}: directory {path.parent} does not"
                       " exist")
  if args.plot is not None:
    from sgperm_jax import plotting  # noqa: PLC0415 (lazy import)
    try:
      plotting.require_matplotlib()
    except ImportError as e:
      raise UsageError(f"--plot {args.plot}: {e}") from e


def _check_checkpoints(args: argparse.Namespace,
                       names: Sequence[str]) -> None:
  """Fails before training if checkpoints cannot be written or resumed."""
  directory = args.checkpoint_dir
  if directory is None:
    if args.resume:
      raise UsageError("--resume needs --checkpoint-dir")
    return
  if directory.exists() and not directory.is_dir():
    raise UsageError(f"--checkpoint-dir {directory}: not a directory")
  try:
    taken = [n for n in names
             if checkpoint.latest_step(directory / n) is not None]
  except ImportError as e:
    raise UsageError(f"--checkpoint-dir: {e}") from e
  if taken and not args.resume:
    raise UsageError(f"--checkpoint-dir {directory} already holds checkpoints"
                     f" of {', '.join(taken)}; pass --resume to continue"
                     " them, or choose another directory")


def _architecture(args: argparse.Namespace) -> str:
  if args.model == "mlp":
    return f"mlp {'-'.join(map(str, args.hidden))}"
  if args.model == "conv":
    return f"conv {'-'.join(map(str, args.channels))}"
  return args.model


def augments(args: argparse.Namespace) -> bool:
  """Whether ``--augment`` is on: as given, else for cifar10 data only."""
  if args.augment is not None:
    return bool(args.augment)
  return args.dataset.startswith(data_lib.CIFAR10_PREFIX)


def _describe(dataset: data_lib.Dataset, args: argparse.Namespace,
              params: Any) -> str:
  size = sum(int(np.size(p)) for p in jax.tree.leaves(params))
  arch = _architecture(args)
  shape = "x".join(map(str, dataset.image_shape))
  augmented = (f", augmented (crop, pad {cifar.DEFAULT_PADDING}, flip)"
               if augments(args) else "")
  return (f"{dataset.name}: {len(dataset.y_train)} training and"
          f" {len(dataset.y_test)} test images of {shape},"
          f" {dataset.num_classes} classes | model {arch} ({size:,} params) |"
          f" {args.epochs} epochs, batch {args.batch_size}, seed"
          f" {args.seed}{augmented}")


def run(args: argparse.Namespace) -> list[RunResult]:
  """Loads the data, builds the model and trains every optimizer asked for.

  Raises:
    data_lib.DataError: if the data set cannot be loaded.
    UsageError: if an option cannot be used.
  """
  names = tuple(dict.fromkeys((args.optimizer, *args.compare)))
  for name in names:  # a rejected hyperparameter fails before the data loads
    make_optimizer(name, args)
  _check_outputs(args)
  _check_checkpoints(args, names)
  dataset = data_lib.load_dataset(args.dataset)
  if args.batch_size > len(dataset.y_train):
    raise UsageError(f"--batch-size {args.batch_size} is larger than the"
                     f" training set ({len(dataset.y_train)} images)")
  steps_per_epoch = len(dataset.y_train) // args.batch_size
  optimizers = {name: make_optimizer(name, args, steps_per_epoch)
                for name in names}
  try:
    model = models.make_model(args.model, dataset.image_shape,
                              dataset.num_classes, seed=args.seed,
                              hidden=args.hidden, channels=args.channels)
  except ValueError as e:
    raise UsageError(str(e)) from e
  model.train()  # BatchNorm: batch statistics in training
  graphdef, params, rest = nnx.split(  # type: ignore[misc]
      model, nnx.Param, ...)
  model.eval()  # and running averages in evaluation
  graph_eval = nnx.split(model, nnx.Param, ...)[0]
  augment = (functools.partial(cifar.augment, padding=cifar.DEFAULT_PADDING)
             if augments(args) else None)
  print(_describe(dataset, args, params), flush=True)
  results = [train_run(name, tx, graphdef, params, dataset,
                       epochs=args.epochs, batch_size=args.batch_size,
                       seed=args.seed, progress=args.progress,
                       checkpoint_dir=None if args.checkpoint_dir is None
                       else args.checkpoint_dir / name, resume=args.resume,
                       rest=rest, graph_eval=graph_eval, augment=augment,
                       keep_best=args.keep_best)
             for name, tx in optimizers.items()]
  print(summary_table(results), flush=True)
  for r in results:
    if r.best_epoch is not None:
      print(f"{r.optimizer}: kept the weights of epoch {r.best_epoch} of"
            f" {r.epochs} (test accuracy {r.test_accuracy:.4f})", flush=True)
  title = f"{os.path.basename(dataset.name)}, {_architecture(args)}"
  write_outputs(results, used_config(args, names), args.json, args.plot,
                title)
  stats_plot = (stats_plot_path(args.plot) if args.plot is not None and any(
      stats_records(r.history) for r in results) else None)
  for what, path in (("metrics (JSON)", args.json), ("plot", args.plot),
                     ("statistics plot", stats_plot),
                     ("checkpoints", args.checkpoint_dir)):
    if path is not None:
      print(f"wrote {what} to {path}", flush=True)
  return results


def used_config(args: argparse.Namespace, names: Sequence[str]
                ) -> dict[str, Any]:
  """The options, with the value each default stood for (not ``None``)."""
  config = {k: (str(v) if isinstance(v, pathlib.Path) else v)
            for k, v in vars(args).items()}
  for name in SGPERM_OPTIONS:
    if config[name] is None:
      config[name] = _default_of(sgperm_jax.sgperm, name)
  config["learning_rate"] = {
      n: LEARNING_RATES[n] if args.learning_rate is None else args.learning_rate
      for n in names if n in LEARNING_RATES}
  if config["sync_period"] is None:
    config["sync_period"] = _default_of(sgperm_jax.laperm, "sync_period")
  elif isinstance(config["sync_period"], tuple):  # [[first epoch, period]]
    config["sync_period"] = [list(e) for e in config["sync_period"]]
  config["augment"] = augments(args)
  config["hidden"], config["channels"] = list(args.hidden), list(args.channels)
  config["compare"] = list(args.compare)
  return config


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``sgperm-jax train [options]``; returns the exit status."""
  args = cli.parse(build_parser(), argv)
  if isinstance(args, int):
    return args
  try:
    run(args)
  except (data_lib.DataError, UsageError) as e:
    print(f"sgperm-jax train: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
