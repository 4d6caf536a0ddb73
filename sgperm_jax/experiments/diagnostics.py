"""What one synchronisation (LaPerm) or permutation step (SGPerm) does.

:func:`events` trains a task of the quality suite step by step and, at every
LaPerm synchronisation (or every ``every``-th SGPerm step), compares the
weights just before the step with the weights just after it:

- ``moved``: the fraction of slots whose value changed since the last
  synchronisation (LaPerm; the initial weights before the first) or in the
  step (SGPerm);
- ``displacement``: ``rms(after - before) / rms(before)`` of the leaf;
- ``norm_ratio``: the mean over rows of ``|after row| / |before row|``, which
  shows whether a synchronisation pulls rows back to the initial scale;
- per hidden layer, on a fixed probe batch: the RMS of the activations
  before and after, and the fraction of dead ReLU units (zero on the whole
  batch);
- the loss on the probe batch before and after.

``sgperm-jax quality --diagnose cnn-digits:laperm`` prints these as a table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sgperm_jax.experiments import quality

PROBE = 512  # images in the probe batch


def _leaf_name(path: tuple[Any, ...]) -> str:
  return "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)


def _leaf_stats(before: jax.Array, after: jax.Array, last: jax.Array
                ) -> dict[str, float]:
  b = np.asarray(before, np.float64)
  a = np.asarray(after, np.float64)
  rows_b = b.reshape(-1, b.shape[-1]) if b.ndim > 1 else b[None]
  rows_a = a.reshape(rows_b.shape)
  norm_b = np.linalg.norm(rows_b, axis=0 if b.ndim > 1 else 1)
  norm_a = np.linalg.norm(rows_a, axis=0 if b.ndim > 1 else 1)
  ok = norm_b > 0
  return dict(
      moved=float(np.mean(a != np.asarray(last, np.float64))),
      displacement=float(np.sqrt(np.mean((a - b) ** 2))
                         / max(np.sqrt(np.mean(b ** 2)), 1e-30)),
      norm_ratio=float(np.mean(norm_a[ok] / norm_b[ok])) if ok.any() else 1.)


def events(task: quality.Task, arrays: quality.Arrays,
           make_tx: Callable[[], optax.GradientTransformation], *,
           seed: int = 0, steps: int = 1000, every: int = 100,
           permutes_each_step: bool = False) -> list[dict[str, Any]]:
  """Per-layer measurements around the syncs (or steps) of one run.

  Args:
    task: a task of :func:`sgperm_jax.experiments.quality.tasks`.
    arrays: its data.
    make_tx: builds the optimizer (LaPerm, SGPerm, ...).
    seed: seed of the initial weights and the batches.
    steps: training steps.
    every: for an optimizer that permutes each step (``permutes_each_step``),
      measure every ``every``-th step; LaPerm is measured at each sync.
    permutes_each_step: whether the optimizer is SGPerm-like.

  Returns:
    One dict per event: ``step``, ``loss_before``, ``loss_after``,
    ``leaves`` (name -> :func:`_leaf_stats`), ``layers`` (per hidden layer:
    ``rms_before``, ``rms_after``, ``dead_before``, ``dead_after``).
  """
  graph_train, graph_eval, params, rest = quality.split_model(task, seed)
  tx = quality.with_frozen(make_tx(), params, task.frozen)
  state = tx.init(params)
  x, y = jnp.asarray(arrays.x_train), jnp.asarray(arrays.y_train)
  probe_x, probe_y = x[:PROBE], y[:PROBE]
  loss_of = quality.loss_function(task)

  @jax.jit
  def step(p, r, s, batch):
    (grads, _), r = jax.grad(loss_of, argnums=(0, 1), has_aux=True)(
        p, r, x[batch], y[batch], graph_train)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), r, s

  @jax.jit
  def probe(p, r):
    m = nnx.merge(graph_eval, p, r)
    feats = m.features(probe_x)
    axes = lambda f: tuple(range(f.ndim - 1))
    return (loss_of(p, r, probe_x, probe_y, graph_eval)[0],
            [jnp.sqrt(jnp.mean(f ** 2)) for f in feats],
            [jnp.mean(jnp.all(f == 0, axis=axes(f))) for f in feats])

  batches = quality.batch_indices(
      seed, -(-steps * task.batch_size // len(arrays.y_train)),
      len(arrays.y_train), task.batch_size)[:steps]
  out = []
  last = params  # the weights of the last synchronisation
  for i, batch in enumerate(batches):
    new_p, new_r, new_s = step(params, rest, state, jnp.asarray(batch))
    synced = (not permutes_each_step and hasattr(new_s, "steps_since_sync")
              and int(new_s.steps_since_sync) == 0)
    if synced or (permutes_each_step and (i + 1) % every == 0):
      loss_b, rms_b, dead_b = probe(params, rest)
      loss_a, rms_a, dead_a = probe(new_p, new_r)
      leaves = {}
      reference = params if permutes_each_step else last
      for (path, b), a, c in zip(jax.tree_util.tree_leaves_with_path(params),
                                 jax.tree.leaves(new_p),
                                 jax.tree.leaves(reference)):
        if jnp.ndim(b) >= 1:
          leaves[_leaf_name(path)] = _leaf_stats(b, a, c)
      last = new_p
      out.append(dict(
          step=i + 1, loss_before=float(loss_b), loss_after=float(loss_a),
          leaves=leaves,
          layers=[dict(rms_before=float(rb), rms_after=float(ra),
                       dead_before=float(db), dead_after=float(da))
                  for rb, ra, db, da in zip(rms_b, rms_a, dead_b, dead_a)]))
    params, rest, state = new_p, new_r, new_s
  return out


def table(found: list[dict[str, Any]]) -> str:
  """A markdown table: one line per event and leaf, with the layer data."""
  lines = ["| step | loss before -> after | leaf | moved | displacement |"
           " row norm after/before |",
           "|---:|---|---|---:|---:|---:|"]
  for e in found:
    for name, s in e["leaves"].items():
      lines.append(
          f"| {e['step']} | {e['loss_before']:.3f} -> {e['loss_after']:.3f}"
          f" | {name} | {s['moved']:.3f} | {s['displacement']:.3f} |"
          f" {s['norm_ratio']:.3f} |")
  lines += ["", "| step | layer | activation rms before -> after |"
            " dead units before -> after |", "|---:|---:|---|---|"]
  for e in found:
    for k, layer in enumerate(e["layers"]):
      lines.append(
          f"| {e['step']} | {k} | {layer['rms_before']:.3f} ->"
          f" {layer['rms_after']:.3f} | {layer['dead_before']:.3f} ->"
          f" {layer['dead_after']:.3f} |")
  return "\n".join(lines)
