"""``sgperm-jax pictures``: the README's figures of what permutation did.

Trains the trainer's MLP on the bundled digits three times from the same
initial weights (SGPerm and LaPerm with ``track_stats=True``, and Adam), keeping
the exact weights after every epoch, and draws with :mod:`sgperm_jax.plotting`:

- ``rank_maps.png``: where each slot's initial value ended up in rank (SGPerm);
- ``displacement.png``: rank displacements from the start, over the epochs;
- ``weight_profiles.png``: sorted rows at init and after Adam;
- ``permutation_stats.png``: the per-epoch statistics of SGPerm and LaPerm;

and measures the compact export (:func:`sgperm_jax.save_permutation`) of the
digits MLP and convnet after a few SGPerm steps against raw float32, in
``export_sizes.md``.

``python -m pip install -e ".[train,plot]" && sgperm-jax pictures --out
docs/images`` remakes the README's copies (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import sgperm_jax
from sgperm_jax import cli
from sgperm_jax import plotting
from sgperm_jax.experiments import data as data_lib
from sgperm_jax.experiments import models
from sgperm_jax.experiments import train

FILES = ("rank_maps.png", "displacement.png", "weight_profiles.png",
         "permutation_stats.png", "export_sizes.md")


def build_parser() -> argparse.ArgumentParser:
  """The options of ``sgperm-jax pictures``."""
  p = argparse.ArgumentParser(
      prog="sgperm-jax pictures",
      description="Train an MLP on the bundled digits with SGPerm, LaPerm and"
      " Adam, and draw what permutation training did: "
      + ", ".join(FILES) + ".", formatter_class=cli.HelpFormatter)
  p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."),
                 metavar="DIR", help="where to write the figures (created if"
                 " missing)")
  p.add_argument("--epochs", type=train.positive_int, default=20,
                 help="epochs of each run")
  p.add_argument("--seed", type=int, default=0,
                 help="seed of the initial weights, batches and partitions")
  p.add_argument("--no-progress", dest="progress", action="store_false",
                 help="hide the progress bars")
  return p


def kernels_only(params: Any) -> Any:
  """The layout that draws the kernels' rows and leaves out the vectors
  (biases start at zero: nothing to see)."""
  return jax.tree.map(lambda x: "neurons" if np.ndim(x) >= 2 else None,
                      params)


def _pure(state: Any) -> Any:
  """An ``nnx.State`` of params as a plain nested dict of arrays."""
  return jax.tree.map(np.asarray, nnx.to_pure_dict(state))


def export_sizes(directory: pathlib.Path, *, seed: int = 0) -> str:
  """The compact export's sizes for the trainer's MLP and convnet on digits.

  Each model takes 3 SGPerm steps (every kernel and bias row then a
  permutation of its initial values), and is saved with its banks and with
  ``init_fn`` (the model's own initialiser and ``seed``), plain and
  compressed; every file is loaded back and compared bit for bit.

  Returns:
    A markdown table: bytes, and the ratio to 4 bytes per parameter.
  """
  lines = ["| model | params | float32 | with banks | banks, compressed |"
           " with `init_fn` | `init_fn`, compressed |",
           "|---|---:|---:|---:|---:|---:|---:|"]
  for name in ("mlp", "conv"):
    @functools.cache  # built once, though every save and load asks for it
    def init_fn(s, name=name):
      model = models.make_model(name, (8, 8, 1), 10, seed=s)
      return nnx.to_pure_dict(nnx.state(model, nnx.Param))
    params = init_fn(seed)
    tx = sgperm_jax.sgperm(lamda0=0.5, seed=seed)
    state = tx.init(params)
    update = jax.jit(tx.update)
    for k in range(3):
      grads = jax.tree.map(lambda p, k=k: jnp.sin(7.0 * p + k), params)
      updates, state = update(grads, state, params)
      params = optax.apply_updates(params, updates)
    exact = jax.tree.map(np.asarray, sgperm_jax.exact_params(params, state))
    cells = []
    for given, compress in ((False, False), (False, True), (True, False),
                            (True, True)):
      path = directory / f"{name}.npz"
      fn = init_fn if given else None
      info = sgperm_jax.save_permutation(
          path, exact, init_fn=fn, seed=seed if given else None,
          compress=compress)
      back = sgperm_jax.load_permutation(path, init_fn=fn)
      same = jax.tree.map(lambda a, b: np.array_equal(
          np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8)),
          exact, back)
      if not all(jax.tree.leaves(same)):
        raise AssertionError(f"{name}: the export did not load back exactly")
      cells.append(f"{info['file_bytes']:,} B ({info['ratio']:.2f}x)")
    count = sum(int(np.size(x)) for x in jax.tree.leaves(exact))
    lines.append(f"| {name} | {count:,} | {4 * count:,} B | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def make_pictures(out: pathlib.Path, *, epochs: int, seed: int,
                  progress: bool = True) -> dict[str, pathlib.Path]:
  """Trains the three runs and writes the figures.

  Args:
    out: the directory of the figures.
    epochs: epochs of each run.
    seed: seed of the initial weights, the batches and the partitions.
    progress: whether to show progress bars.

  Returns:
    ``{file name: path}`` of the figures written.
  """
  dataset = data_lib.load_digits()
  model = models.make_model("mlp", dataset.image_shape, dataset.num_classes,
                            seed=seed)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
  initial = _pure(params)
  snapshots: dict[int, Any] = {0: initial}
  keep = lambda epoch, weights, _: snapshots.__setitem__(epoch,
                                                         _pure(weights))
  runs = {"sgperm": sgperm_jax.sgperm(seed=seed, track_stats=True),
          "laperm": sgperm_jax.laperm(optax.adam(1e-3), track_stats=True),
          "adam": optax.adam(1e-3)}
  results = {}
  for name, tx in runs.items():
    results[name] = train.train_run(
        name, tx, graphdef, params, dataset, epochs=epochs, batch_size=32,
        seed=seed, progress=progress, rest=rest,
        on_epoch=keep if name == "sgperm" else None)
  adam = _pure(results["adam"].params)
  sgperm = snapshots[epochs]
  accuracy = {n: f"{r.test_accuracy:.1%}" for n, r in results.items()}
  label = (f"MLP on digits, {epochs} epochs (test accuracy: "
           + ", ".join(f"{n} {a}" for n, a in accuracy.items()) + ")")
  chosen = sorted({1, max(1, epochs // 4), max(1, epochs // 2), epochs})
  figures = {
      "rank_maps.png": plotting.plot_rank_maps(
          initial, sgperm, layout=kernels_only,
          title=f"SGPerm, {epochs} epochs: each slot's rank in its row,"
          " start vs end"),
      "displacement.png": plotting.plot_displacement_histograms(
          plotting.displacement_histograms(
              initial, {e * results["sgperm"].steps // epochs: snapshots[e]
                        for e in chosen}, layout=kernels_only),
          title="SGPerm: rank displacement since the start, by step"),
      "weight_profiles.png": plotting.plot_weight_profiles(
          initial, adam, layout=kernels_only,
          title="Adam: sorted rows at init (dashed) and after"
          f" {epochs} epochs (solid)"),
      "permutation_stats.png": plotting.plot_permutation_stats(
          {n: train.stats_records(results[n].history)
           for n in ("sgperm", "laperm")},
          title=label),
  }
  out.mkdir(parents=True, exist_ok=True)
  written = {}
  for name, fig in figures.items():
    path = out / name
    fig.savefig(path, dpi=110)
    written[name] = path
  with tempfile.TemporaryDirectory() as tmp:
    table = export_sizes(pathlib.Path(tmp), seed=seed)
  written["export_sizes.md"] = out / "export_sizes.md"
  written["export_sizes.md"].write_text(table, encoding="utf-8")
  return written


def main(argv: Sequence[str] | None = None) -> int:
  """Runs ``sgperm-jax pictures [options]``; returns the exit status."""
  args = cli.parse(build_parser(), argv)
  if isinstance(args, int):
    return args
  try:
    plotting.require_matplotlib()
  except ImportError as e:
    print(f"sgperm-jax pictures: error: {e}", file=sys.stderr)
    return 2
  for name, path in make_pictures(args.out, epochs=args.epochs,
                                  seed=args.seed,
                                  progress=args.progress).items():
    print(f"wrote {name} to {path}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
