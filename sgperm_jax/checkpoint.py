"""Checkpoint and resume: save params and optimizer state with orbax.

The state of every sgperm_jax transformation is a plain pytree of arrays
(step counts, momentum, the exact weights and a raw ``uint32`` PRNG key), so a
run saved at step ``k`` and restored continues bit for bit as if it had never
stopped: same exact weights, same random partitions. These helpers wrap
`orbax-checkpoint <https://orbax.readthedocs.io>`_, an optional dependency
(``pip install 'sgperm-jax[checkpoint]'``), imported only when they are called.

Each checkpoint is a numbered step directory under ``directory`` holding the
params, the optimizer state, optionally an ``extra`` pytree of arrays (a
data-order key, say) and a small JSON ``metadata`` dict (an epoch number, a
metrics history). Restoring needs templates of the same structure:
concrete arrays (e.g. a freshly initialised model and ``tx.init(params)``) or
``jax.ShapeDtypeStruct`` trees (``jax.eval_shape(tx.init, params)``). The
restored arrays get the templates' dtypes, and the shardings of templates
that are sharded (committed arrays, or structs given a ``sharding``): restore
a sharded model into sharded templates, and each process reads only its own
shards. Trees of Flax NNX variables (``nnx.state(model)``,
``nnx.state(optimizer)``) work too.

Example:
  >>> import tempfile
  >>> import jax, jax.numpy as jnp, optax, sgperm_jax
  >>> from sgperm_jax import checkpoint
  >>> tx = sgperm_jax.sgperm(lamda0=0.5, partition_size_min=2)
  >>> init = {"w": jnp.linspace(-1., 1., 8)}
  >>> grad = lambda p: {"w": jnp.sin(3. * p["w"])}
  >>> @jax.jit
  ... def train_step(params, opt_state):
  ...   updates, opt_state = tx.update(grad(params), opt_state, params)
  ...   return optax.apply_updates(params, updates), opt_state
  >>> params, opt_state = init, tx.init(init)
  >>> for _ in range(3):
  ...   params, opt_state = train_step(params, opt_state)
  >>> directory = tempfile.mkdtemp()
  >>> checkpoint.save_checkpoint(directory, 3, params, opt_state)
  >>> checkpoint.latest_step(directory)
  3
  >>> # Later, in a fresh process: templates, restore, continue.
  >>> restored = checkpoint.restore_checkpoint(
  ...     directory, init, jax.eval_shape(tx.init, init))
  >>> restored.step
  3
  >>> params2, opt_state2 = restored.params, restored.opt_state
  >>> for _ in range(3):
  ...   params, opt_state = train_step(params, opt_state)
  ...   params2, opt_state2 = train_step(params2, opt_state2)
  >>> exact = sgperm_jax.exact_params(params, opt_state)["w"]
  >>> exact2 = sgperm_jax.exact_params(params2, opt_state2)["w"]
  >>> bool(jnp.all(exact == exact2))
  True
  >>> import shutil; shutil.rmtree(directory)
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

_INSTALL_HINT = ("sgperm_jax: sgperm_jax.checkpoint needs the [checkpoint]"
                 " extra (orbax-checkpoint); install it with pip install"
                 " 'sgperm-jax[checkpoint]'")


class Checkpoint(NamedTuple):
  """What :func:`restore_checkpoint` returns."""
  step: int  # the step number the checkpoint was saved under
  params: Any  # tree like the params template
  opt_state: Any  # tree like the optimizer-state template
  extra: Any  # tree like the extra template (None if none was given)
  metadata: dict[str, Any]  # the JSON metadata saved ({} if none)


def _orbax():
  """Imports orbax-checkpoint, or raises ImportError with the install hint."""
  try:
    import orbax.checkpoint as ocp  # noqa: PLC0415 (lazy import)
  except ImportError as e:
    raise ImportError(_INSTALL_HINT) from e
  return ocp


def _path(directory: str | os.PathLike[str]) -> str:
  """Absolute path (orbax needs one); URLs such as ``gs://`` pass unchanged."""
  if isinstance(directory, bool) or not isinstance(directory,
                                                   (str, os.PathLike)):
    raise TypeError(f"sgperm_jax: directory must be a path, got {directory!r}")
  directory = os.fspath(directory)
  if not directory:
    raise ValueError("sgperm_jax: directory must not be empty")
  return directory if "://" in directory else os.path.abspath(directory)


def _check_step(step: Any) -> int:
  integer_array = (hasattr(step, "dtype") and jnp.ndim(step) == 0
                   and jnp.issubdtype(step.dtype, jnp.integer))
  if isinstance(step, bool) or not (isinstance(step, int) or integer_array):
    raise TypeError(f"sgperm_jax: step must be an integer, got {step!r}")
  step = int(step)
  if step < 0:
    raise ValueError(f"sgperm_jax: step must be >= 0, got {step}")
  return step


def _manager(ocp, directory: str, max_to_keep: int | None = None):
  options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
  return ocp.CheckpointManager(directory, options=options)


def _leaf_paths(tree: Any) -> list[str]:
  return [jax.tree_util.keystr(path) for path, _ in
          jax.tree_util.tree_flatten_with_path(tree)[0]]


def _restore_target(x: Any) -> Any:
  """What orbax restores one template leaf into.

  A committed array or a ``jax.ShapeDtypeStruct`` with a sharding restores
  as a ``jax.Array`` with that sharding. Anything else (an uncommitted array,
  as ``jax.random`` and ``tx.init`` make; a struct without sharding; NumPy)
  restores through NumPy (``np.zeros`` reserves no memory until written) and
  becomes an uncommitted array on the default device, like a freshly made
  one: orbax would commit it to one device, which ``jax.jit`` then refuses to
  mix with arrays sharded over several.
  """
  sharding = getattr(x, "sharding", None)
  if ((isinstance(x, jax.ShapeDtypeStruct) and sharding is not None)
      or (isinstance(x, jax.Array) and x.committed)):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  dtype = x.dtype if hasattr(x, "dtype") else jnp.asarray(x).dtype
  return np.zeros(jnp.shape(x), dtype)


def _finish(restored: Any, template: Any) -> Any:
  """A restored leaf as a ``jax.Array``, weakly typed if its template was.

  ``optax.inject_hyperparams`` holds Python numbers as weakly typed scalars;
  orbax restores them strongly typed, which would retrace a jitted update.
  """
  if not isinstance(restored, jax.Array):
    restored = jnp.asarray(restored)
  if getattr(template, "weak_type", False) and restored.ndim == 0:
    weak = jnp.asarray(restored.item())  # from a Python number: weak
    if weak.dtype == restored.dtype:
      restored = (jax.device_put(weak, restored.sharding)
                  if restored.committed else weak)
  return restored


def save_checkpoint(directory: str | os.PathLike[str], step: int, params: Any,
                    opt_state: Any, *, extra: Any = None,
                    metadata: dict[str, Any] | None = None,
                    max_to_keep: int | None = None) -> None:
  """Saves params, optimizer state and extras as checkpoint ``step``.

  Blocks until the checkpoint is written. In a multi-host run every process
  must call it (orbax writes each process's shards and coordinates).

  Args:
    directory: where checkpoints live (one subdirectory per step); created if
      missing.
    step: the step number to save under, an integer ``>= 0``; it must not be
      saved already.
    params: the parameters, a pytree of arrays (or Flax NNX variables).
    opt_state: the optimizer state, e.g. of :func:`sgperm_jax.sgperm`.
    extra: optional pytree of arrays to keep alongside (a data-order key);
      restore it by passing a template of it.
    metadata: optional JSON-serialisable dict (an epoch, a metrics history),
      restored as is without a template.
    max_to_keep: keep only this many most recent checkpoints (None: all).

  Raises:
    ImportError: if orbax-checkpoint is not installed.
    TypeError, ValueError: for a bad ``directory``, ``step``,
      ``metadata`` or ``max_to_keep``, or a ``step`` already saved.
  """
  ocp = _orbax()
  directory = _path(directory)
  step = _check_step(step)
  if max_to_keep is not None and (isinstance(max_to_keep, bool)
                                  or not isinstance(max_to_keep, int)
                                  or max_to_keep < 1):
    raise ValueError("sgperm_jax: max_to_keep must be None or an integer >= 1,"
                     " got"
                     f" {max_to_keep!r}")
  if metadata is None:
    metadata = {}
  if not isinstance(metadata, dict):
    raise TypeError(f"sgperm_jax: metadata must be a dict, got {metadata!r}")
  try:
    json.dumps(metadata)
  except (TypeError, ValueError) as e:
    raise TypeError(
        f"sgperm_jax: metadata must be JSON-serialisable: {e}") from e
  item = {"params": params, "opt_state": opt_state}
  if extra is not None:
    item["extra"] = extra
  with _manager(ocp, directory, max_to_keep) as manager:
    if step in manager.all_steps():
      raise ValueError(f"sgperm_jax: step {step} is already saved in"
                       f" {directory}")
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(item),
        metadata=ocp.args.JsonSave(metadata)))
    manager.wait_until_finished()


def latest_step(directory: str | os.PathLike[str]) -> int | None:
  """The newest step saved in ``directory``, or None if there is none.

  Args:
    directory: a directory given to :func:`save_checkpoint` (it need not
      exist).

  Returns:
    The largest saved step number, or None.
  """
  ocp = _orbax()
  directory = _path(directory)
  if "://" not in directory and not os.path.isdir(directory):
    return None
  with ocp.CheckpointManager(directory) as manager:
    return manager.latest_step()


def restore_checkpoint(directory: str | os.PathLike[str], params: Any,
                       opt_state: Any, *, extra: Any = None,
                       step: int | None = None) -> Checkpoint:
  """Restores a checkpoint written by :func:`save_checkpoint`.

  Args:
    directory: the checkpoint directory.
    params: template of the params: a tree of arrays or
      ``jax.ShapeDtypeStruct`` of the saved structure, shapes and dtypes (a
      freshly initialised model, say). Restored arrays take the shardings of
      committed template arrays (e.g. sharded over a mesh) and of structs
      that have one; the others land uncommitted on the default device.
    opt_state: template of the optimizer state, e.g. ``tx.init(params)`` or
      ``jax.eval_shape(tx.init, params)``.
    extra: template of the ``extra`` tree, if one was saved and is wanted.
    step: which step to restore; by default the latest.

  Returns:
    A :class:`Checkpoint` ``(step, params, opt_state, extra, metadata)``; the
    trees have the templates' structures (NamedTuple states included).

  Raises:
    ImportError: if orbax-checkpoint is not installed.
    FileNotFoundError: if there is no checkpoint (or not that step).
    ValueError: if the templates do not match what was saved.

  Example:
    With Flax NNX, save ``nnx.state`` of the model's params and of the
    optimizer; restore into a model and optimizer built the same way.

    >>> import tempfile
    >>> import jax, jax.numpy as jnp, optax, sgperm_jax
    >>> from flax import nnx
    >>> from sgperm_jax import checkpoint
    >>> def build():
    ...   model = nnx.Linear(16, 3, rngs=nnx.Rngs(0))
    ...   tx = sgperm_jax.sgperm(lamda0=0.5, partition_size_min=2)
    ...   return model, nnx.Optimizer(model, tx, wrt=nnx.Param)
    >>> model, optimizer = build()
    >>> x = jax.random.normal(jax.random.key(0), (32, 16))
    >>> y = jax.random.randint(jax.random.key(1), (32,), 0, 3)
    >>> @nnx.jit
    ... def train_step(model, optimizer):
    ...   loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(
    ...       m(x), y).mean()
    ...   optimizer.update(model, nnx.grad(loss)(model))
    >>> for _ in range(3):
    ...   train_step(model, optimizer)
    >>> directory = tempfile.mkdtemp()
    >>> checkpoint.save_checkpoint(
    ...     directory, int(optimizer.step[...]), nnx.state(model, nnx.Param),
    ...     nnx.state(optimizer), metadata={"epoch": 1})
    >>> model2, optimizer2 = build()  # e.g. in a new process
    >>> restored = checkpoint.restore_checkpoint(
    ...     directory, nnx.state(model2, nnx.Param), nnx.state(optimizer2))
    >>> restored.step, restored.metadata
    (3, {'epoch': 1})
    >>> nnx.update(model2, restored.params)
    >>> nnx.update(optimizer2, restored.opt_state)
    >>> for _ in range(2):  # both continue; partitions as if never stopped
    ...   train_step(model, optimizer)
    ...   train_step(model2, optimizer2)
    >>> exact = sgperm_jax.exact_params(nnx.state(model, nnx.Param),
    ...                                 optimizer.opt_state)
    >>> exact2 = sgperm_jax.exact_params(nnx.state(model2, nnx.Param),
    ...                                  optimizer2.opt_state)
    >>> bool(jnp.all(exact["kernel"][...] == exact2["kernel"][...]))
    True
    >>> import shutil; shutil.rmtree(directory)
  """
  ocp = _orbax()
  directory = _path(directory)
  if step is not None:
    step = _check_step(step)
  template = {"params": params, "opt_state": opt_state}
  if extra is not None:
    template["extra"] = extra
  target = jax.tree.map(_restore_target, template)
  if "://" not in directory and not os.path.isdir(directory):
    raise FileNotFoundError(f"sgperm_jax: no checkpoint directory {directory}")
  with ocp.CheckpointManager(directory) as manager:
    steps = manager.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"sgperm_jax: no checkpoint in {directory}")
      step = max(steps)
    elif step not in steps:
      raise FileNotFoundError(f"sgperm_jax: no checkpoint for step {step} in"
                              f" {directory}"
                              f" (saved: {sorted(steps)})")
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target),
          metadata=ocp.args.JsonRestore()))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(f"sgperm_jax: checkpoint {step} in {directory} does not"
                       " match the"
                       f" templates given: {e}") from e
  for path, got, want in zip(_leaf_paths(template),
                             jax.tree.leaves(restored["state"]),
                             jax.tree.leaves(template)):
    if jnp.shape(got) != jnp.shape(want):
      raise ValueError(f"sgperm_jax: checkpoint {step} in {directory} does not"
                       " match the"
                       f" templates given: {path} was saved with shape"
                       f" {jnp.shape(got)}, the template has"
                       f" {jnp.shape(want)}")
  item = jax.tree.map(_finish, restored["state"], template)
  return Checkpoint(step=int(step), params=item["params"],
                    opt_state=item["opt_state"], extra=item.get("extra"),
                    metadata=dict(restored["metadata"] or {}))
