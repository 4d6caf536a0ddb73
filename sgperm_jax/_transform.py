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
from jax import lax
from jax.sharding import PartitionSpec as P

from sgperm_jax import _checks
from sgperm_jax import _layout
from sgperm_jax._cycles import check_method, find_cycles
from sgperm_jax._graph import permissibility_graph
from sgperm_jax._partition import partition, partition_size
from sgperm_jax._permute import permute
from sgperm_jax._recommendation import momentum_recommendation
from sgperm_jax._schedules import aggressiveness, partition_ratio


def _permute_rows(key, leaf_ids, rows_w, rows_r, row_offset, alpha, lamda,
                  partition_size_min, include_remainder, cycle_search):
  """The four stages on lists of ``(rows, n)`` batches, one cycle search."""
  parts, graphs = [], []
  for i, w, r in zip(leaf_ids, rows_w, rows_r):
    size = partition_size(lamda, w.shape[1], partition_size_min)
    row_ids = row_offset + jnp.arange(w.shape[0], dtype=jnp.int32)
    part = partition(jax.random.fold_in(key, i), w, r, size,
                     include_remainder, row_ids=row_ids)
    parts.append(part)
    graphs.append(permissibility_graph(part, alpha))
  cycles = find_cycles(parts, graphs, method=cycle_search)
  return [permute(p, s) for p, s in zip(parts, cycles)]


def _permute_rows_sharded(mesh, key, leaf_ids, rows_w, rows_r, alpha, lamda,
                          partition_size_min, include_remainder, cycle_search):
  """Like :func:`_permute_rows`, each device on its own rows, no collectives.

  Batches whose row count divides the device count are split by rows over
  every axis of ``mesh``; the others are computed whole on every device.
  Rows are independent and draw their randomness from their global index, so
  the result equals the single-device one bit for bit.
  """
  axes = tuple(mesh.axis_names)
  split = [w.shape[0] % mesh.size == 0 for w in rows_w]
  row_spec = [P(axes, None) if sp else P() for sp in split]
  scalars = [jnp.asarray(x) for x in (alpha, lamda, partition_size_min,
                                      include_remainder)]

  def local(key, rows_w, rows_r, scalars):
    device = lax.axis_index(axes)
    out = []
    for sp, w, r, i in zip(split, rows_w, rows_r, leaf_ids):
      offset = device * w.shape[0] if sp else 0
      out.extend(_permute_rows(key, [i], [w], [r], offset, *scalars,
                               cycle_search))
    return out

  return jax.shard_map(
      local, mesh=mesh, in_specs=(P(), row_spec, row_spec, [P()] * 4),
      out_specs=row_spec, check_vma=False)(key, rows_w, rows_r, scalars)


def permutation_step(key: jax.Array, weights: Any, recommendations: Any, *,
                     alpha: chex.Numeric, lamda: chex.Numeric,
                     layout: _layout.LayoutSpec = "neurons",
                     partition_size_min: chex.Numeric = 10,
                     include_partition_remainder: chex.Numeric = True,
                     mesh: jax.sharding.Mesh | None = None,
                     cycle_search: str = "auto") -> Any:
  """One SGPerm permutation of every row of every leaf (SPEC §3).

  Composes :func:`partition`, :func:`permissibility_graph`,
  :func:`find_cycles` (one search for all leaves) and :func:`permute`.

  Args:
    key: PRNG key for the random partitions (folded in per leaf and row).
    weights: tree of the current, exact weights.
    recommendations: tree like ``weights``; ``r > 0`` asks for a smaller value.
    alpha: aggressiveness ``alpha_t``.
    lamda: partition ratio ``lamda_t``.
    layout: row layout per leaf (see :func:`sgperm`).
    partition_size_min: smallest partition size.
    include_partition_remainder: whether a shorter last chunk takes part.
    mesh: optional device mesh; each device then permutes its own share of
      the rows with no communication (see :func:`sgperm`).
    cycle_search: how cycles are searched (see :func:`find_cycles`):
      ``"auto"``, ``"loop"``, ``"native"`` or ``"pallas"``; all give the
      same result.

  Returns:
    The permuted weights, a tree like ``weights``; every row holds exactly
    the values it held before.

  Example:
    >>> import jax, jax.numpy as jnp, sgperm_jax
    >>> w = {"b": jnp.array([0., 1., 2., 3.])}
    >>> r = {"b": jnp.array([-1., 1., -1., 1.])}
    >>> sgperm_jax.permutation_step(jax.random.key(0), w, r, alpha=0.5,
    ...                             lamda=1.0)["b"].tolist()
    [1.0, 0.0, 3.0, 2.0]
  """
  check_method(cycle_search)
  specs = _layout.resolve_layout(layout, weights)
  leaves, treedef = jax.tree.flatten(weights)
  paths = _layout.leaf_paths(weights)
  try:
    recs = treedef.flatten_up_to(recommendations)
  except (ValueError, TypeError) as e:
    raise ValueError("recommendations must have the structure of the weights"
                     f" ({treedef})") from e
  spec_leaves = treedef.flatten_up_to(specs)
  moving, rows_w, rows_r = [], [], []
  for i, (w, r, spec, path) in enumerate(zip(leaves, recs, spec_leaves, paths)):
    if _layout.row_shape(jnp.shape(w), spec) is None:
      continue
    _layout.check_float_leaf(w, path)
    if jnp.shape(r) != jnp.shape(w):
      raise ValueError(f"recommendation for leaf {path} has shape"
                       f" {jnp.shape(r)}, the leaf has {jnp.shape(w)}")
    moving.append(i)
    rows_w.append(_layout.to_rows(w, spec))
    rows_r.append(_layout.to_rows(r, spec))
  if not moving:
    return weights
  if mesh is None:
    new_rows = _permute_rows(key, moving, rows_w, rows_r, 0, alpha, lamda,
                             partition_size_min, include_partition_remainder,
                             cycle_search)
  else:
    new_rows = _permute_rows_sharded(
        mesh, key, moving, rows_w, rows_r, alpha, lamda, partition_size_min,
        include_partition_remainder, cycle_search)
  out = list(leaves)
  for i, rows in zip(moving, new_rows):
    out[i] = _layout.from_rows(rows, spec_leaves[i], jnp.shape(leaves[i]))
  return jax.tree.unflatten(treedef, out)


def _delta(weights: jax.Array, params: Any) -> jax.Array:
  """The update that moves ``params`` onto ``weights``, in the params' dtype.

  Where ``weights - params`` overflows (values near the dtype's max with
  opposite signs), the update sends the slot to 0 instead of to infinity; the
  next step, which starts from the exact weights again, lands it.
  """
  params = jnp.asarray(params)
  delta = (weights - params).astype(params.dtype)
  return jnp.where(jnp.isfinite(delta) | ~jnp.isfinite(params), delta,
                   -params)


class PermutationState(NamedTuple):
  """State of :func:`permute_by_recommendation`."""
  count: jax.typing.ArrayLike  # shape=(), dtype=jnp.int32: steps taken
  rng_key: jax.Array  # raw uint32 PRNG key, split every step
  weights: Any  # tree like params: the exact weights (zeros before step 0)

  def exact_params(self, params: Any) -> Any:
    """The exact weights: ``weights`` after the first step, else ``params``."""
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
    mesh: optional ``jax.sharding.Mesh``. With it, the rows of every leaf
      whose row count divides the device count are split over all devices
      of the mesh (matching parameters sharded along their last axis), and
      each device permutes its own rows in its own search loop: the step
      needs no communication, and gives the same result as without a mesh.
      List it in ``static_args`` of ``optax.inject_hyperparams``.
    cycle_search: how the cycles are searched: ``"auto"`` (by platform: a
      native kernel on CPU, Pallas on GPU), ``"loop"`` (portable
      JAX), ``"native"`` or ``"pallas"``; see :func:`find_cycles`. Every
      choice gives the same result, bit for bit.

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
  check_method(cycle_search)

  def init_fn(params):
    specs = _layout.resolve_layout(layout, params)
    for path, leaf, spec in zip(_layout.leaf_paths(params),
                                jax.tree.leaves(params),
                                jax.tree.leaves(specs, is_leaf=lambda x: x
                                                is None)):
      if spec is not None and jnp.ndim(leaf) > 0:
        _layout.check_float_leaf(leaf, path)
    return PermutationState(
        count=jnp.zeros([], jnp.int32),
        rng_key=jax.random.PRNGKey(seed),
        weights=optax.tree.zeros_like(params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError("sgperm_jax: update needs params (the third argument"
                       " of tx.update); permutation starts from them.")
    weights = jax.tree.map(
        lambda w, p: jnp.where(state.count == 0, p, w), state.weights, params)
    key, step_key = jax.random.split(state.rng_key)
    new_weights = permutation_step(
        step_key, weights, updates, alpha=alpha_fn(state.count),
        lamda=lamda_fn(state.count), layout=layout,
        partition_size_min=partition_size_min,
        include_partition_remainder=include_partition_remainder, mesh=mesh,
        cycle_search=cycle_search)
    new_updates = jax.tree.map(_delta, new_weights, params)
    return new_updates, PermutationState(
        count=optax.safe_increment(state.count), rng_key=key,
        weights=new_weights)

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
          layout=layout, mesh=mesh, cycle_search=cycle_search))
