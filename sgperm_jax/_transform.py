"""SGPerm as optax transformations: the permutation stage and the alias.

``permute_by_recommendation`` composes the four stages on every row of every
permuted leaf and keeps the exact weights in its state; ``sgperm`` chains the
momentum recommendation in front of it, as the paper does.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sgperm_jax import _checks
from sgperm_jax import _layout
from sgperm_jax._cycles import check_cycle_search
from sgperm_jax._recommendation import momentum_recommendation
from sgperm_jax._schedules import aggressiveness, partition_ratio
from sgperm_jax._partition import partition_size, typed_key
from sgperm_jax._stats import PermutationStats, empty_permutation_stats
from sgperm_jax._stats import step_stats
from sgperm_jax._step import StepHyperparams, permute_tree


class PermutationState(NamedTuple):
  """State of :func:`permute_by_recommendation`."""
  # shape=(), dtype=jnp.int32: steps taken (the name shadows tuple.count,
  # as in optax's states)
  count: chex.Array
  rng_key: jax.Array  # raw uint32 threefry key data (2,), split every step
  weights: Any  # tree like params: the exact weights (zeros before step 0)
  # the last step's statistics (one entry per leaf), or None if not tracked
  stats: PermutationStats | None = None

  def tracked_stats(self) -> list[tuple[PermutationStats, Any]]:
    """``[(stats, weights)]`` if statistics are tracked, else ``[]``."""
    return [] if self.stats is None else [(self.stats, self.weights)]

  def exact_params(self, params: Any) -> Any:
    """The exact weights: ``weights`` after the first step, else ``params``."""
    _checks.params_like_state(self.weights, params, same_shape=True)
    started = self.count > 0
    return jax.tree.map(
        lambda w, p: p if isinstance(w, optax.MaskedNode)
        else jnp.where(started, w, p), self.weights, params,
        is_leaf=lambda x: isinstance(x, optax.MaskedNode))


def _check_hyperparams(alpha0, lamda0, beta1, beta2, alpha_min, lamda_max,
                       partition_size_min, include_partition_remainder, seed):
  _checks.in_range("alpha0", alpha0, 0.0, None)
  _checks.in_range("lamda0", lamda0, 0.0, 1.0)
  _checks.in_range("beta1", beta1, 0.0, 1.0)
  _checks.in_range("beta2", beta2, 1.0, None)
  _checks.in_range("alpha_min", alpha_min, 0.0, None)
  _checks.in_range("lamda_max", lamda_max, 0.0, 1.0)
  _checks.positive_int("partition_size_min", partition_size_min)
  _checks.boolean("include_partition_remainder", include_partition_remainder)
  _checks.seed("seed", seed)


def permute_by_recommendation(
    alpha0: optax.ScalarOrSchedule = 0.5,
    lamda0: optax.ScalarOrSchedule = 0.1,
    beta1: float = 0.99,
    beta2: float = 1.01,
    alpha_min: float = 0.01,
    lamda_max: float = 1.0,
    partition_size_min: int = 10,
    include_partition_remainder: bool = True,
    seed: int = 0,
    *,
    layout: _layout.LayoutSpec = "neurons",
    mesh: jax.sharding.Mesh | None = None,
    cycle_search: str = "auto",
    center_recommendations: bool = True,
    track_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Permutes the weights within each row, following the incoming updates.

  The incoming updates are read as recommendations (``r > 0``: this slot
  wants a smaller value; ``0`` or non-finite: leave it), for instance the
  output of :func:`momentum_recommendation` or ``optax.scale_by_adam()``.
  The returned updates move ``params`` onto the permuted exact weights, which
  the state keeps (see :func:`exact_params`); the params are read only at the
  first step, so rounding in ``optax.apply_updates`` never accumulates.

  This must be the **last** transformation of an ``optax.chain``: anything
  after it (a scale, a clip) would change the permutation into something
  else. Leaves that must not move should be given the layout ``None``, or be
  routed to another optimizer with ``optax.partition`` (not ``optax.masked``,
  which would pass raw gradients through as updates).

  ``lamda`` is the paper's spelling of the partition ratio λ, kept because
  ``lambda`` is a Python keyword.

  Args:
    alpha0: initial aggressiveness, or an optax schedule of it.
    lamda0: initial partition ratio in ``[0, 1]``, or an optax schedule of it.
    beta1: aggressiveness decay per step, ``<= 1``.
    beta2: partition-ratio growth per step, ``>= 1``.
    alpha_min: smallest aggressiveness.
    lamda_max: largest partition ratio.
    partition_size_min: smallest partition size.
    include_partition_remainder: whether the shorter last chunk of a random
      partition takes part.
    seed: seed of the random partitions (the key is carried in the state).
    layout: per-leaf row layout: ``"neurons"`` (rows are ``leaf[..., j]``; a
      vector is one row), ``"whole"`` (the leaf is one row) or ``None`` (do
      not permute); one value, a tree of them, or a callable on the params
      returning such a tree. List it in ``static_args`` of
      ``optax.inject_hyperparams`` when it is a callable.
    mesh: optional ``jax.sharding.Mesh`` of sharded params. Rows are
      independent, so each device permutes the rows it holds, with no
      communication, and the step gives the same result as on one device.
      Without it, inside ``jax.jit`` the step finds the mesh itself: that of
      the params' shardings when their types carry one (explicit axes, the
      default of ``jax.make_mesh``), else that of ``jax.set_mesh``; a leaf's
      rows are then split over the mesh axes of its last dimension. With a
      mesh of automatic axes, the rows of every leaf whose row count
      divides the device count are split over all its devices (matching
      params sharded along their last axis). List it in ``static_args`` of
      ``optax.inject_hyperparams``.
    cycle_search: how a step runs: ``"auto"`` (by platform: on CPU a native
      kernel does the whole step of every row, on GPU the JAX stages with a
      Pallas cycle search), ``"native"``, ``"loop"`` (the JAX stages with
      the portable cycle search) or ``"pallas"``; see :func:`find_cycles`.
      Every choice gives the same result, bit for bit.
    center_recommendations: subtract from each row's recommendations their mean
      over the row's active slots (ours, not the paper's; on by default,
      ``False`` gives the paper's step exactly). A permutation keeps each row's
      sum, so the part of a recommendation that asks the whole row to rise or
      fall cannot be followed; when it dominates, every slot of a row asks the
      same way, the permissibility graph has no cycle and the row stalls.
      Centering keeps only the part a permutation can follow: which slots should
      grow relative to the others. It never hurt and often helped on the quality
      suite (``sgperm-jax quality``), see the README's "When does permutation
      training work".
    track_stats: record, at every step, what it did to each leaf (the share
      of slots that moved, rank displacements, cycles, and the partition
      size, alpha and lamda used); read them with :func:`permutation_stats`.
      Off by default: the state then holds ``None`` and nothing is computed.

  Returns:
    An optax ``GradientTransformationExtraArgs``.

  Example:
    >>> import jax.numpy as jnp, optax, sgperm_jax
    >>> tx = optax.chain(optax.scale_by_adam(),
    ...                  sgperm_jax.permute_by_recommendation(lamda0=1.0))
    >>> params = {"w": jnp.array([0., 1., 2., 3.])}
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.array([1., -1., 1., -1.])}
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"].tolist()
    [0.0, 2.0, 1.0, 3.0]
  """
  _check_hyperparams(alpha0, lamda0, beta1, beta2, alpha_min, lamda_max,
                     partition_size_min, include_partition_remainder, seed)
  alpha_fn = aggressiveness(alpha0, beta1, alpha_min)
  lamda_fn = partition_ratio(lamda0, beta2, lamda_max)
  _layout.check_layout(layout)
  check_cycle_search(cycle_search)
  _checks.boolean("center_recommendations", center_recommendations)
  _checks.boolean("track_stats", track_stats)

  def init_fn(params: optax.Params) -> PermutationState:
    specs = _layout.resolve_layout(layout, params)
    for path, leaf, spec in zip(_layout.leaf_paths(params),
                                jax.tree.leaves(params),
                                jax.tree.leaves(specs, is_leaf=lambda x: x
                                                is None)):
      if spec is not None and jnp.ndim(leaf) > 0:
        _layout.check_float_leaf(leaf, path)
    return PermutationState(
        count=jnp.zeros([], jnp.int32),
        rng_key=jax.random.key_data(
            jax.random.key(seed, impl="threefry2x32")),
        weights=optax.tree.zeros_like(params),
        stats=(empty_permutation_stats(len(jax.tree.leaves(params)))
               if track_stats else None))

  def update_fn(updates: optax.Updates, state: PermutationState,
                params: optax.Params | None = None,
                **extra_args: Any) -> tuple[optax.Updates, PermutationState]:
    del extra_args
    if params is None:
      raise ValueError("sgperm_jax: update needs params (the third argument"
                       " of tx.update); permutation starts from them.")
    key, step_key = jax.random.split(typed_key(state.rng_key))
    hp = StepHyperparams(alpha_fn(state.count), lamda_fn(state.count),
                         partition_size_min, include_partition_remainder)
    if center_recommendations:
      leaves, treedef = jax.tree.flatten(updates)
      specs = treedef.flatten_up_to(_layout.resolve_layout(layout, params))
      updates = treedef.unflatten([
          _layout.center_rows(r, s, active_only=True)
          for r, s in zip(leaves, specs)])
    new_weights, new_updates = permute_tree(
        step_key, state.weights, updates, hp, layout=layout, mesh=mesh,
        cycle_search=cycle_search, initial=params, started=state.count > 0)
    count = optax.safe_increment(state.count)
    stats = (_stats_of_step(count, state, params, new_weights, hp)
             if track_stats else None)
    return new_updates, PermutationState(
        count=count, rng_key=jax.random.key_data(key), weights=new_weights,
        stats=stats)

  def _stats_of_step(count, state, params, new_weights, hp):
    leaves, treedef = jax.tree.flatten(params)
    specs = treedef.flatten_up_to(_layout.resolve_layout(layout, params))
    at = [i for i, (p, spec) in enumerate(zip(leaves, specs))
          if _layout.row_shape(tuple(jnp.shape(p)), spec) is not None]
    weights = treedef.flatten_up_to(state.weights)
    after = treedef.flatten_up_to(new_weights)
    started = state.count > 0
    shapes = [_layout.row_shape(tuple(jnp.shape(leaves[i])), specs[i])
              for i in at]
    lengths = jnp.asarray([n for _, n in shapes], jnp.int32)
    return step_stats(
        count, [jnp.where(started, weights[i], leaves[i]) for i in at],
        [after[i] for i in at], [specs[i] for i in at], at, len(leaves),
        partition_size(hp.lamda, lengths, partition_size_min), hp.alpha,
        hp.lamda)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sgperm(
    alpha0: optax.ScalarOrSchedule = 0.5,
    lamda0: optax.ScalarOrSchedule = 0.1,
    beta1: float = 0.99,
    beta2: float = 1.01,
    alpha_min: float = 0.01,
    lamda_max: float = 1.0,
    momentum_lr: optax.ScalarOrSchedule = 0.01,
    momentum: float = 0.9,
    partition_size_min: int = 10,
    include_partition_remainder: bool = True,
    seed: int = 0,
    *,
    layout: _layout.LayoutSpec = "neurons",
    mu_dtype: Any = None,
    mesh: jax.sharding.Mesh | None = None,
    cycle_search: str = "auto",
    center_recommendations: bool = True,
    track_stats: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""Stochastic Gradient Permutation (Qiu & Suda, "Permute to Train").

  Trains by permuting the values within each weight vector, never changing
  them. Each step: a momentum recommendation
  :math:`r_t = \eta g_t + \mu r_{t-1}` says which way each slot wants to move;
  every row is cut into random subsets of size
  :math:`\max(P_{min}, \lfloor\lambda_t n\rfloor)`; in each subset a slot may
  take a value at most :math:`\epsilon = A(\alpha_t + 1/m)` away in the asked
  direction (the permissibility graph); disjoint cycles of that graph are
  found by depth-first search, sources by decreasing :math:`|r|`, and the
  values rotate along them. :math:`\alpha_t` and :math:`\lambda_t` follow the
  reference's schedules (decayed before the first step) or optax schedules.
  ``lamda`` is the paper's spelling of the partition ratio λ, kept because
  ``lambda`` is a Python keyword.

  ``sgperm(...)`` is ``optax.chain(momentum_recommendation(...),
  permute_by_recommendation(...))``; it must be the last transformation of a
  chain (see :func:`permute_by_recommendation`). Use :func:`exact_params` for
  the exact permuted weights, since ``optax.apply_updates`` rounds.

  Args:
    alpha0: initial aggressiveness, or an optax schedule of it.
    lamda0: initial partition ratio in ``[0, 1]``, or an optax schedule of it.
    beta1: aggressiveness decay per step, ``<= 1``.
    beta2: partition-ratio growth per step, ``>= 1``.
    alpha_min: smallest aggressiveness.
    lamda_max: largest partition ratio, in ``[0, 1]``.
    momentum_lr: scale of the gradient in the recommendation.
    momentum: momentum of the recommendation, in ``[0, 1]``.
    partition_size_min: smallest partition size.
    include_partition_remainder: whether the shorter last chunk of a random
      partition takes part.
    seed: seed of the random partitions.
    layout: per-leaf row layout, see :func:`permute_by_recommendation`.
    mu_dtype: dtype of the momentum buffer; by default the params'.
    mesh: optional device mesh for sharded params, see
      :func:`permute_by_recommendation`.
    cycle_search: ``"auto"``, ``"loop"``, ``"native"`` or ``"pallas"``, see
      :func:`permute_by_recommendation`.
    center_recommendations: center each row's recommendations (ours, on by
      default; ``False`` is the paper's step), see
      :func:`permute_by_recommendation`.
    track_stats: record what each step did to each leaf, see
      :func:`permute_by_recommendation` and :func:`permutation_stats`.

  Returns:
    An optax ``GradientTransformationExtraArgs``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, sgperm_jax
    >>> params = {"w": jnp.linspace(-1., 1., 8)}
    >>> loss = lambda p: jnp.sum((p["w"] - jnp.linspace(1., -1., 8)) ** 2)
    >>> tx = sgperm_jax.sgperm(lamda0=1.0)
    >>> state = tx.init(params)
    >>> for _ in range(5):
    ...   grads = jax.grad(loss)(params)
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> exact = sgperm_jax.exact_params(params, state)
    >>> bool(loss(exact) < loss({"w": jnp.linspace(-1., 1., 8)}))
    True
    >>> sorted(exact["w"].tolist()) == jnp.linspace(-1., 1., 8).tolist()
    True

  References:
    Qiu & Suda, `Permute to Train: A New Dimension to Training Deep Neural
    Networks <https://arxiv.org/abs/2003.02570v4>`_, 2020.
  """
  return optax.chain(
      momentum_recommendation(momentum_lr, momentum, mu_dtype),
      permute_by_recommendation(
          alpha0, lamda0, beta1, beta2, alpha_min, lamda_max,
          partition_size_min, include_partition_remainder, seed,
          layout=layout, mesh=mesh, cycle_search=cycle_search,
          center_recommendations=center_recommendations,
          track_stats=track_stats))
