"""The ``sgperm-jax train`` command: train a Flax NNX model, compare optimizers.

Trains an MLP or a small convnet on scikit-learn's bundled 8x8 digits (or an
MNIST-style IDX or CSV data set) with SGPerm or another optimizer, shows a
progress bar with the live loss and accuracy, and ends with a summary table.
``--compare adam,laperm`` trains more optimizers from the same initial weights
on the same batches. Permutation optimizers are evaluated on their exact
weights (:func:`sgperm_jax.exact_params`).

Run ``sgperm-jax train -h`` (or ``python -m sgperm_jax.experiments.train -h``)
for the options. Exit status: 0 on success, 2 for a bad option or a missing or
malformed data file (one line on stderr naming it; nothing is written).
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import math
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sgperm_jax
from sgperm_jax import cli
from sgperm_jax import checkpoint
from sgperm_jax.experiments import data as data_lib
from sgperm_jax.experiments import models

OPTIMIZERS = ("sgperm", "adam", "sgd", "laperm", "sgperm-adam")
PERMUTATION_OPTIMIZERS = ("sgperm", "laperm", "sgperm-adam")
LEARNING_RATES = {"adam": 1e-3, "sgd": 0.1, "laperm": 1e-3}
SGPERM_OPTIONS = ("alpha0", "lamda0", "beta1", "beta2", "alpha_min",
                  "lamda_max", "momentum_lr", "momentum", "partition_size_min")
EVAL_CHUNK = 1000


class UsageError(ValueError):
  """A command-line value that cannot be used; the message says why."""


@dataclasses.dataclass
class RunResult:
  """What one optimizer's training run measured."""
  optimizer: str
  test_accuracy: float
  test_loss: float
  epochs: int
  steps: int
  seconds: float  # the whole run: compilation, training, evaluation
  compile_seconds: float  # the first step, which compiles
  train_seconds: float  # the other training steps
  history: dict[str, list[float]]  # per epoch: train/test loss and accuracy

  @property
  def steps_per_second(self) -> float:
    """Training steps per second, compilation excluded."""
    return (self.steps - 1) / self.train_seconds if self.train_seconds else 0.

  def metrics(self) -> dict[str, Any]:
    """The final metrics and the history, as stored by ``--json``."""
    out = dataclasses.asdict(self)
    out["steps_per_second"] = self.steps_per_second
    return out


# ----------------------------------------------------------------- optimizers


def sgperm_kwargs(args: argparse.Namespace) -> dict[str, Any]:
  """The SGPerm hyperparameters given on the command line (others default)."""
  return {name: getattr(args, name) for name in SGPERM_OPTIONS
          if getattr(args, name) is not None}


def make_optimizer(name: str, args: argparse.Namespace
                   ) -> optax.GradientTransformation:
  """The optax transformation named ``name``, configured from ``args``.

  Args:
    name: one of :data:`OPTIMIZERS`.
    args: parsed options (SGPerm hyperparameters, ``learning_rate``,
      ``sync_period``, ``seed``).

  Returns:
    The transformation; ``sgperm`` and ``sgperm-adam`` take the SGPerm
    hyperparameters, ``laperm`` is ``sgperm_jax.laperm(optax.adam(lr))``.

  Raises:
    UsageError: for an unknown name or a rejected hyperparameter.
  """
  lr = LEARNING_RATES.get(name) if args.learning_rate is None else (
      args.learning_rate)
  try:
    if name == "sgperm":
      return sgperm_jax.sgperm(**sgperm_kwargs(args), seed=args.seed)
    if name == "sgperm-adam":
      kwargs = sgperm_kwargs(args)
      kwargs.pop("momentum_lr", None)
      kwargs.pop("momentum", None)
      return optax.chain(optax.scale_by_adam(),
                         sgperm_jax.permute_by_recommendation(
                             **kwargs, seed=args.seed))
    if name == "adam":
      return optax.adam(lr)
    if name == "sgd":
      return optax.sgd(lr)
    if name == "laperm":
      extra = {} if args.sync_period is None else {
          "sync_period": args.sync_period}
      return sgperm_jax.laperm(optax.adam(lr), **extra)
  except (TypeError, ValueError) as e:
    if isinstance(e, UsageError):
      raise
    raise UsageError(f"optimizer {name}: {e}") from e
  raise UsageError(f"unknown optimizer {name!r}; choose from"
                   f" {', '.join(OPTIMIZERS)}")


# -------------------------------------------------------------- the train step


def _loss_and_correct(graphdef: nnx.GraphDef, params: Any, x: jax.Array,
                      y: jax.Array) -> tuple[jax.Array, jax.Array]:
  logits = nnx.merge(graphdef, params)(x)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return losses, (jnp.argmax(logits, -1) == y)


def train_step_fn(graphdef: nnx.GraphDef, tx: optax.GradientTransformation
                  ) -> Callable[..., tuple[Any, Any, jax.Array]]:
  """The (unjitted) train step for one model and one optimizer.

  The returned function maps ``(params, opt_state, images, labels, batch)``,
  where ``batch`` indexes the training set, to ``(params, opt_state,
  metrics)`` with ``metrics = [loss, accuracy]`` of the batch before the
  update.
  """

  def step(params, opt_state, images, labels, batch):
    x, y = images[batch], labels[batch]

    def loss_fn(p):
      losses, correct = _loss_and_correct(graphdef, p, x, y)
      return jnp.mean(losses), jnp.mean(correct.astype(jnp.float32))

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state,
            jnp.stack([loss, accuracy]))

  return step


def eval_fn(graphdef: nnx.GraphDef, permutes: bool
            ) -> Callable[..., jax.Array]:
  """Sums of loss and correct predictions over one padded chunk of images.

  The returned function maps ``(params, opt_state, images, labels, mask)`` to
  ``[loss_sum, correct_sum]`` over the entries where ``mask`` is set; a
  permutation optimizer is evaluated on :func:`sgperm_jax.exact_params`.
  """

  def evaluate(params, opt_state, x, y, mask):
    if permutes:
      params = sgperm_jax.exact_params(params, opt_state)
    losses, correct = _loss_and_correct(graphdef, params, x, y)
    mask = mask.astype(losses.dtype)
    return jnp.stack([jnp.sum(losses * mask), jnp.sum(correct * mask)])

  return evaluate


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


def _train_epoch(step: Callable[..., Any], params: Any, opt_state: Any,
                 images: jax.Array, labels: jax.Array, batches: np.ndarray,
                 bar: Any, clock: _Clock) -> tuple[Any, Any, np.ndarray]:
  """Runs one epoch of steps; returns the state and the mean [loss, acc]."""
  refresh = max(1, len(batches) // 10)
  metrics = []
  start = time.perf_counter()
  for batch in batches:
    if clock.steps == 0:
      bar.set_postfix_str("compiling the first step", refresh=True)
    params, opt_state, m = step(params, opt_state, images, labels,
                                jnp.asarray(batch))
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
  return params, opt_state, mean


def train_run(name: str, tx: optax.GradientTransformation,
              graphdef: nnx.GraphDef, params: Any, dataset: data_lib.Dataset,
              *, epochs: int, batch_size: int, seed: int,
              progress: bool = True,
              checkpoint_dir: pathlib.Path | None = None,
              resume: bool = False) -> RunResult:
  """Trains one optimizer from ``params`` and evaluates it after each epoch.

  The train step is jitted once for this optimizer and every step has the
  same shapes, so it compiles once.

  Args:
    name: the optimizer's name (for the progress bar and the result);
      names in :data:`PERMUTATION_OPTIMIZERS` are evaluated on their exact
      weights.
    tx: the optimizer.
    graphdef: the model's graph definition (``nnx.split``).
    params: the initial parameters (an ``nnx.State`` of ``nnx.Param``).
    dataset: the data.
    epochs: passes over the training set.
    batch_size: images per step.
    seed: seed of the batch order.
    progress: whether to show a progress bar.
    checkpoint_dir: if given, save params, optimizer state and history there
      after every epoch (the last two kept).
    resume: continue from the newest checkpoint in ``checkpoint_dir``.

  Returns:
    A :class:`RunResult`.
  """
  start = time.perf_counter()
  step = jax.jit(train_step_fn(graphdef, tx))
  evaluate = jax.jit(eval_fn(graphdef, name in PERMUTATION_OPTIMIZERS))
  images, labels = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
  test = eval_chunks(dataset.x_test, dataset.y_test,
                     min(EVAL_CHUNK, len(dataset.y_test)))
  opt_state = tx.init(params)
  history: dict[str, list[float]] = {
      k: [] for k in ("train_loss", "train_accuracy", "test_loss",
                      "test_accuracy")}
  first_epoch = 0
  if (resume and checkpoint_dir is not None
      and checkpoint.latest_step(checkpoint_dir) is not None):
    try:
      saved = checkpoint.restore_checkpoint(checkpoint_dir, params, opt_state)
    except ValueError as e:
      raise UsageError(f"--resume: {e}") from e
    params, opt_state, first_epoch = saved.params, saved.opt_state, saved.step
    history = saved.metadata["history"]
  clock = _Clock()
  total = max(0, epochs - first_epoch) * (len(labels) // batch_size)
  with _progress(total, name, progress) as bar:
    for epoch in range(first_epoch, epochs):
      batches = batch_order(seed, epoch, len(labels), batch_size)
      params, opt_state, (loss, acc) = _train_epoch(
          step, params, opt_state, images, labels, batches, bar, clock)
      sums = np.sum([np.asarray(evaluate(params, opt_state, *c))
                     for c in test], axis=0)
      test_loss, test_acc = sums / len(dataset.y_test)
      for key, value in (("train_loss", loss), ("train_accuracy", acc),
                         ("test_loss", test_loss), ("test_accuracy", test_acc)):
        history[key].append(float(value))
      bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.3f}",
                      test_acc=f"{test_acc:.3f}")
      if checkpoint_dir is not None:
        checkpoint.save_checkpoint(checkpoint_dir, epoch + 1, params,
                                   opt_state, metadata={"history": history},
                                   max_to_keep=2)
  return RunResult(
      optimizer=name, test_accuracy=history["test_accuracy"][-1],
      test_loss=history["test_loss"][-1], epochs=epochs, steps=clock.steps,
      seconds=time.perf_counter() - start,
      compile_seconds=clock.compile_seconds,
      train_seconds=clock.train_seconds, history=history)


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


def _positive_int(text: str) -> int:
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
  p.add_argument("--dataset", default="digits",
                 help="'digits' (default: scikit-learn's bundled 8x8 digits),"
                 " an MNIST-style IDX images file or directory (.gz or not),"
                 " or a CSV of pixels (0..255) then the label per line")
  p.add_argument("--model", choices=models.MODELS, default="mlp",
                 help="default: mlp")
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
  p.add_argument("--epochs", type=_positive_int, default=10,
                 help="default: 10")
  p.add_argument("--batch-size", type=_positive_int, default=32,
                 help="default: 32")
  p.add_argument("--seed", type=int, default=0,
                 help="seed of the initial weights, the batch order and the"
                 " random partitions (default: 0)")
  p.add_argument("--learning-rate", type=float, default=None,
                 help="for adam, sgd and laperm's inner adam (default: 1e-3"
                 " for adam and laperm, 0.1 for sgd)")
  p.add_argument("--sync-period", type=_positive_int, default=None,
                 help="laperm: steps between synchronisations (default:"
                 f" {_default_of(sgperm_jax.laperm, 'sync_period')}, as"
                 " sgperm_jax.laperm)")
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
  return f"conv {'-'.join(map(str, args.channels))}"


def _describe(dataset: data_lib.Dataset, args: argparse.Namespace,
              params: Any) -> str:
  size = sum(int(np.size(p)) for p in jax.tree.leaves(params))
  arch = _architecture(args)
  shape = "x".join(map(str, dataset.image_shape))
  return (f"{dataset.name}: {len(dataset.y_train)} training and"
          f" {len(dataset.y_test)} test images of {shape},"
          f" {dataset.num_classes} classes | model {arch} ({size:,} params) |"
          f" {args.epochs} epochs, batch {args.batch_size}, seed {args.seed}")


def run(args: argparse.Namespace) -> list[RunResult]:
  """Loads the data, builds the model and trains every optimizer asked for.

  Raises:
    data_lib.DataError: if the data set cannot be loaded.
    UsageError: if an option cannot be used.
  """
  names = tuple(dict.fromkeys((args.optimizer, *args.compare)))
  optimizers = {name: make_optimizer(name, args) for name in names}
  _check_outputs(args)
  _check_checkpoints(args, names)
  dataset = data_lib.load_dataset(args.dataset)
  if args.batch_size > len(dataset.y_train):
    raise UsageError(f"--batch-size {args.batch_size} is larger than the"
                     f" training set ({len(dataset.y_train)} images)")
  try:
    model = models.make_model(args.model, dataset.image_shape,
                              dataset.num_classes, seed=args.seed,
                              hidden=args.hidden, channels=args.channels)
  except ValueError as e:
    raise UsageError(str(e)) from e
  graphdef, params = nnx.split(model, nnx.Param)
  print(_describe(dataset, args, params), flush=True)
  results = [train_run(name, tx, graphdef, params, dataset,
                       epochs=args.epochs, batch_size=args.batch_size,
                       seed=args.seed, progress=args.progress,
                       checkpoint_dir=None if args.checkpoint_dir is None
                       else args.checkpoint_dir / name, resume=args.resume)
             for name, tx in optimizers.items()]
  print(summary_table(results), flush=True)
  title = f"{os.path.basename(dataset.name)}, {_architecture(args)}"
  write_outputs(results, used_config(args, names), args.json, args.plot,
                title)
  for what, path in (("metrics (JSON)", args.json), ("plot", args.plot),
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
  config["hidden"], config["channels"] = list(args.hidden), list(args.channels)
  config["compare"] = list(args.compare)
  return config


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``sgperm-jax train [options]``; returns the exit status."""
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # -h, or a bad option (argparse printed why)
    return int(e.code or 0)
  try:
    run(args)
  except (data_lib.DataError, UsageError) as e:
    print(f"sgperm-jax train: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
