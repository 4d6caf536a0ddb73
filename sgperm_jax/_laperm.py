"""Lookahead Permutation (LaPerm) as an optax transformation.

LaPerm (Qiu & Suda, "Train-by-Reconnect", NeurIPS 2020) lets any inner
optimizer train the weights freely and, every ``k`` steps, replaces each
weight vector ("row", same layouts as :func:`sgperm`) with its *initial*
values re-ordered to follow the current ranking:
``sorted(initial_row)[rank(current_row)]``. Between synchronisations the
weights are free; at every synchronisation each row is again a bit-exact
permutation of its initial values, because the synchronised weights are
gathered from a bank of sorted initial values, never accumulated from deltas.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax import lax
from jax.sharding import PartitionSpec as P

from sgperm_jax import _checks
from sgperm_jax import _layout
from sgperm_jax import _sharding
from sgperm_jax import _stats
from sgperm_jax._laperm_sync import laperm_sync, rank_key
from sgperm_jax._stats import SyncStats


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _bank_spec(leaf_shape: tuple[int, ...], bank_shape: tuple[int, ...]
               ) -> _layout.RowLayout:
  """The row layout a bank leaf was built with (see :func:`_empty_bank`)."""
  if len(leaf_shape) >= 2 and len(bank_shape) == 1:
    return _layout.WHOLE
  return _layout.NEURONS


def _empty_bank(leaf: Any, spec: _layout.RowLayout) -> Any:
  """Zeros shaped like the bank of ``leaf``, or ``MaskedNode`` if not synced.

  The bank of a ``"neurons"`` leaf has the leaf's own shape (so Flax NNX
  attaches the param's metadata consistently); a ``"whole"`` leaf of two or
  more dimensions is stored flat, which is how the layout is told apart.
  """
  shape = tuple(jnp.shape(leaf))
  if _layout.row_shape(shape, spec) is None:
    return optax.MaskedNode()
  if spec == _layout.WHOLE and len(shape) >= 2:
    shape = (int(jnp.size(leaf)),)
  return jnp.zeros(shape, leaf.dtype)


def _match_ranks(sorted_rows: jax.Array, rows: jax.Array) -> jax.Array:
  """``sorted_rows[j][rank(rows[j])]`` for every row ``j``.

  Ranks follow the values exactly (subnormals too, -0 as +0), ties broken
  stably by position; NaNs rank last (they receive the largest values of
  the row).
  """
  order = jnp.argsort(rank_key(rows), axis=-1, stable=True)
  row_index = jnp.arange(rows.shape[0])[:, None]
  return jnp.zeros_like(sorted_rows).at[row_index, order].set(
      sorted_rows, unique_indices=True)


def _synchronize(bank_leaf: jax.Array, leaf: jax.Array) -> jax.Array:
  """The synchronised view of one leaf: its bank values, ranked like ``leaf``.

  Args:
    bank_leaf: the leaf's bank, as kept in :class:`LaPermState` (each row of
      the initial values, sorted).
    leaf: the current values of the leaf.

  Returns:
    An array like ``leaf`` whose every row holds exactly the bank's values,
    in the order of the ranks of the row of ``leaf``.
  """
  spec = _bank_spec(jnp.shape(leaf), jnp.shape(bank_leaf))
  out = _match_ranks(_layout.to_rows(bank_leaf, spec),
                     _layout.to_rows(leaf, spec))
  return _layout.from_rows(out, spec, jnp.shape(leaf)).astype(leaf.dtype)


@jax.jit  # one sort per leaf: compiled once, not dispatched op by op
def _synced_view(bank: Any, params: Any, started: jax.Array) -> Any:
  """Each synced leaf of ``params`` synchronised to its bank, if ``started``."""

  def view(bank_leaf, p):
    if _is_masked(bank_leaf) or _is_masked(p):
      return p
    whole = lambda x: _sharding.as_spec(jnp.asarray(x), P())  # row sorts
    synced = _sharding.like(_synchronize(whole(bank_leaf), whole(p)), p)
    return jnp.where(started, synced, p)

  return jax.tree.map(view, bank, params, is_leaf=_is_masked)


class LaPermState(NamedTuple):
  """State of :func:`laperm`.

  ``steps_since_sync`` counts the steps since the last synchronisation.
  ``bank`` holds, per synced leaf, each row of the initial values sorted
  ascending (zeros before the first step, when they are taken from the
  params), in the leaf's shape (flat for a ``"whole"`` leaf of two or more
  dimensions); leaves that are not synced hold ``optax.MaskedNode()``.
  """
  # shape=(), dtype=jnp.int32: steps taken (the name shadows tuple.count,
  # as in optax's states)
  count: chex.Array
  steps_since_sync: jax.typing.ArrayLike  # shape=(), dtype=jnp.int32
  inner_state: Any  # state of the inner optimizer, kept across syncs
  bank: Any  # tree like params: sorted initial rows; MaskedNode if not synced
  # the last synchronisation's statistics (one entry per leaf), or None if
  # not tracked
  stats: SyncStats | None = None
  # with stats: each synced slot's rank at the last synchronisation (the
  # synced leaves' rows back to back), else None
  sync_ranks: jax.Array | None = None

  def tracked_stats(self) -> list[tuple[SyncStats, Any]]:
    """``[(stats, bank)]`` if statistics are tracked, else ``[]``."""
    return [] if self.stats is None else [(self.stats, self.bank)]

  def exact_params(self, params: Any) -> Any:
    """The synchronised view ``sorted(initial)[rank(params)]`` of ``params``.

    Right after a synchronisation this is the synchronised weights (up to
    rank flips between values closer than the rounding of
    ``optax.apply_updates``); in between, it is what a synchronisation would
    make of the current weights. Leaves that are not synced, and all leaves
    before the first step, come from ``params``.

    Args:
      params: the current parameters.

    Returns:
      A tree like ``params``; every synced row a bit-exact permutation of its
      initial values.
    """
    _checks.params_like_state(self.bank, params, same_shape=False)
    return _synced_view(self.bank, params, self.count > 0)


def laperm(
    inner: optax.GradientTransformation,
    sync_period: optax.ScalarOrSchedule = 100,
    *,
    layout: _layout.LayoutSpec = "neurons",
    skip_vectors: bool = True,
    center_updates: bool = True,
    track_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Lookahead Permutation: an inner optimizer, synchronised every k steps.

  The inner optimizer (any optax transformation, e.g. ``optax.adam(1e-3)``)
  trains the weights freely: between synchronisations its updates are
  passed through unchanged. After every ``sync_period``-th step, each row
  :math:`w` of a synced leaf is replaced by the initial values of that row
  re-ordered to follow the ranking of the freely trained row:

  .. math::
    w \leftarrow \mathrm{sort}(w_0)[\mathrm{rank}(w)]

  (ties broken stably by position), so the network again holds only its
  initial weights, reconnected. The sorted initial values (the "bank") are
  taken from the params at the first update, so ``init`` needs only shapes.
  The synchronised weights are gathered from the bank, so rounding in
  ``optax.apply_updates`` never accumulates; :func:`exact_params` returns the
  synchronised view ``sort(w_0)[rank(params)]`` at any time. The inner
  state (e.g. Adam's moments) is kept across synchronisations, as in the
  paper.

  Synchronisation happens after the steps ``k, 2k, ...`` (counting from 1)
  for a constant period, as in the reference. A schedule ``sync_period(count)``
  is read at every step, and a sync happens once at least that many steps
  have passed since the last one.

  Leaves of fewer than two dimensions (biases, normalisation scales) are
  skipped by default (``skip_vectors``, like the reference's ``skip_bias``
  and ``skip_bn``): Flax initialises biases to zero, and a synced zero bias
  could never leave zero. Skipped leaves, and leaves with the layout
  ``None``, are trained by the inner optimizer alone and never synced.

  The default period was chosen by measurement: on scikit-learn's digits, a
  64-256-10 MLP trained for 200 epochs with ``laperm(optax.adam(1e-3))``
  reaches 97.5% test accuracy (Adam alone: 97.6%; mean of 8 seeds, see
  ``tests/test_laperm.py``). With the paper's rule (``center_updates=False``)
  the default period reaches 97.2% there and the paper's period of about
  20 steps 95.4%. Shorter periods pull the weights back to the initial values
  more often; longer ones behave more like the inner optimizer between
  syncs but lose more at each.

  Args:
    inner: the inner optimizer, whose updates train the weights between
      synchronisations.
    sync_period: the synchronisation period ``k >= 1`` in steps, or an optax
      schedule of it (a callable of the step count).
    layout: per-leaf row layout, as for :func:`sgperm`: ``"neurons"`` (rows
      are ``leaf[..., j]``; a vector is one row), ``"whole"`` (the leaf is one
      row) or ``None`` (train freely, never sync); one value, a tree of them,
      or a callable on the params returning such a tree. List it in
      ``static_args`` of ``optax.inject_hyperparams`` when it is a callable.
    skip_vectors: whether leaves of fewer than two dimensions are left out of
      the synchronisation whatever their layout.
    center_updates: subtract from the inner optimizer's update of each
      synced row its mean over the row (ours, not the paper's; on by
      default, ``False`` gives the paper's rule). A synchronisation keeps
      each row's sum (it is a permutation of the initial values), so a free
      row whose sum drifts learns something the next synchronisation takes
      away; centered, the free rows keep their initial sums and the
      synchronisation costs far less (quality suite, quick preset: 1-D
      convnet 47% -> 70%, digits convnet 66% -> 81%; see the README).
    track_stats: record, at every synchronisation, what it did to each synced
      leaf (the share of slots that moved since the previous one, rank
      displacements, cycles) and how far the free weights were from the
      synchronised view; read them with :func:`permutation_stats`. Off by
      default: the state then holds ``None`` and nothing is computed. On, the
      state also keeps each synced slot's rank (an int32 per weight).

  Returns:
    An optax ``GradientTransformationExtraArgs``; its state is a
    :class:`LaPermState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, sgperm_jax
    >>> initial = {"w": jnp.array([[0.5, -0.25], [0.125, 0.75], [-1., 0.25]]),
    ...            "b": jnp.zeros(2)}
    >>> x = jnp.array([1., -1., 2.])
    >>> loss = lambda p: jnp.sum((x @ p["w"] + p["b"] - 1.) ** 2)
    >>> tx = sgperm_jax.laperm(optax.adam(0.1), sync_period=5)
    >>> @jax.jit
    ... def train_step(params, state):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> params, state = initial, tx.init(initial)
    >>> for _ in range(10):
    ...   params, state = train_step(params, state)
    >>> exact = sgperm_jax.exact_params(params, state)
    >>> exact["w"].T.tolist()  # each column: its initial values, reconnected
    [[0.5, 0.125, -1.0], [-0.25, 0.25, 0.75]]
    >>> bool(jnp.all(exact["b"] == params["b"]))  # a vector: trained freely
    True
    >>> float(loss(initial)), bool(loss(exact) < 4.)
    (9.140625, True)

  References:
    Qiu & Suda, `Train-by-Reconnect: Decoupling Locations of Weights from
    Their Values <https://arxiv.org/abs/2003.02570>`_, NeurIPS 2020.
  """
  if not (callable(getattr(inner, "init", None))
          and callable(getattr(inner, "update", None))):
    raise TypeError("sgperm_jax: laperm: inner must be an optax"
                    " GradientTransformation,"
                    f" got {inner!r}")
  inner = optax.with_extra_args_support(inner)
  if not callable(sync_period):
    _checks.positive_int("sync_period", sync_period)
  _layout.check_layout(layout)
  _checks.boolean("skip_vectors", skip_vectors)
  _checks.boolean("center_updates", center_updates)
  _checks.boolean("track_stats", track_stats)

  def resolve(params):
    specs = _layout.resolve_layout(layout, params)
    if skip_vectors:
      specs = jax.tree.map(lambda p, s: None if jnp.ndim(p) < 2 else s,
                           params, specs)
    return specs

  def init_fn(params: optax.Params) -> LaPermState:
    specs = resolve(params)
    for path, leaf, spec in zip(_layout.leaf_paths(params),
                                jax.tree.leaves(params),
                                jax.tree.leaves(specs, is_leaf=lambda x: x
                                                is None)):
      if _layout.row_shape(tuple(jnp.shape(leaf)), spec) is not None:
        _layout.check_float_leaf(leaf, path)
    bank = jax.tree.map(_empty_bank, params, specs)
    stats, ranks = None, None
    if track_stats:
      synced = jax.tree.leaves(bank)
      stats = _stats.empty_sync_stats(len(synced))
      ranks = jnp.zeros((sum(int(jnp.size(b)) for b in synced),), jnp.int32)
    return LaPermState(
        count=jnp.zeros([], jnp.int32),
        steps_since_sync=jnp.zeros([], jnp.int32),
        inner_state=inner.init(params),
        bank=bank, stats=stats, sync_ranks=ranks)

  def update_fn(updates: optax.Updates, state: LaPermState,
                params: optax.Params | None = None,
                **extra_args: Any) -> tuple[optax.Updates, LaPermState]:
    if params is None:
      raise ValueError("sgperm_jax: laperm: update needs params (the third"
                       " argument of tx.update); the bank of initial values"
                       " and the synchronisation are taken from them.")
    specs = resolve(params)
    inner_updates, inner_state = inner.update(updates, state.inner_state,
                                              params, **extra_args)
    period = sync_period(state.count) if callable(sync_period) else sync_period
    since = state.steps_since_sync + 1
    do_sync = since >= period
    leaves, treedef = jax.tree.flatten(params)
    banks = treedef.flatten_up_to(state.bank)
    moves = treedef.flatten_up_to(inner_updates)
    layouts = treedef.flatten_up_to(specs)
    synced = [i for i, b in enumerate(banks) if not _is_masked(b)]
    if center_updates:
      for i in synced:
        moves[i] = _layout.center_rows(moves[i], layouts[i])
    inner_moves = list(moves)  # the free weights are params + these
    if synced:
      new_banks, new_moves = laperm_sync(
          [jnp.asarray(leaves[i]) for i in synced],
          [moves[i] for i in synced], [banks[i] for i in synced],
          [layouts[i] for i in synced], fill=state.count == 0, sync=do_sync)
      for k, i in enumerate(synced):
        banks[i] = new_banks[k]
        moves[i] = new_moves[k]
    bank = jax.tree.unflatten(treedef, banks)
    new_updates = jax.tree.unflatten(treedef, moves)
    count = optax.safe_increment(state.count)
    stats, ranks = state.stats, state.sync_ranks
    if track_stats and synced:
      index = _stats.row_index([tuple(jnp.shape(leaves[i])) for i in synced],
                               [layouts[i] for i in synced])
      free = [(jnp.asarray(leaves[i]) + inner_moves[i]).astype(
          jnp.result_type(leaves[i])) for i in synced]
      stats, ranks = _track_sync(
          index, [leaves[i] for i in synced], free,
          [banks[i] for i in synced], state, count, do_sync, period)
    return new_updates, LaPermState(
        count=count,
        steps_since_sync=jnp.where(do_sync, 0, since).astype(jnp.int32),
        inner_state=inner_state,
        bank=bank, stats=stats, sync_ranks=ranks)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _track_sync(index: _stats.RowIndex, params: list[Any], free: list[Any],
                banks: list[Any], state: LaPermState, count: jax.Array,
                do_sync: jax.Array, period: Any
                ) -> tuple[SyncStats, jax.Array]:
  """The stats and ranks after this step (changed only by a sync).

  At the first step the ranks are those of the initial params, so that the
  first sync is compared with the initial weights.
  """
  ranks = lax.cond(state.count == 0,
                   lambda: _stats.stable_ranks(params, index),
                   lambda: state.sync_ranks)

  def sync():
    after = _stats.stable_ranks(free, index)
    flat_bank = _stats.flat_rows(banks, index)
    synced = len(banks)
    return _stats.sync_stats(count, index, flat_bank, ranks, after, free,
                             list(range(synced)), synced, period), after

  return lax.cond(do_sync, sync, lambda: (state.stats, ranks))
