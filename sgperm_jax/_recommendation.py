"""Stage 1, recommendation: which way each slot wants its value to move.

``r_t = m_t = momentum_lr * g_t + momentum * m_{t-1}`` (docs/algorithm.md
§3). ``r > 0`` asks for a smaller value, ``r < 0`` for a larger one,
``r == 0`` for none. A slot whose gradient is not finite counts as 0 in the
momentum and its recommendation is NaN, which the permutation stage treats
as inactive.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sgperm_jax import _checks


def recommend(gradient: jax.Array, momentum_buffer: jax.Array,
              momentum_lr: chex.Numeric, momentum: chex.Numeric
              ) -> tuple[jax.Array, jax.Array]:
  """Momentum recommendation for one array.

  Args:
    gradient: the gradient ``g_t``.
    momentum_buffer: ``m_{t-1}`` (zeros before the first step).
    momentum_lr: scale of the gradient.
    momentum: decay of the previous momentum.

  Returns:
    ``(recommendation, m_t)``: the recommendation is ``m_t`` where the
    gradient is finite and NaN (inactive) where it is not; ``m_t`` treats a
    non-finite gradient as 0.

  Example:
    >>> import jax.numpy as jnp, sgperm_jax
    >>> r, m = sgperm_jax.recommend(jnp.array([1., jnp.inf]),
    ...                             jnp.array([0.5, 2.]), 1.0, 0.5)
    >>> r.tolist(), m.tolist()
    ([1.25, nan], [1.25, 1.0])
  """
  finite = jnp.isfinite(gradient)
  g = jnp.where(finite, gradient, 0).astype(momentum_buffer.dtype)
  m = (momentum_lr * g + momentum * momentum_buffer).astype(
      momentum_buffer.dtype)
  return jnp.where(finite, m, jnp.nan).astype(m.dtype), m


class RecommendationState(NamedTuple):
  """State of :func:`momentum_recommendation`."""
  # shape=(), dtype=jnp.int32: steps taken (the name shadows tuple.count,
  # as in optax's states)
  count: chex.Array
  momentum: Any  # tree like params: m_{t-1}, dtype mu_dtype or the params'


def momentum_recommendation(momentum_lr: optax.ScalarOrSchedule = 0.01,
                            momentum: float = 0.9,
                            mu_dtype: Any = None
                            ) -> optax.GradientTransformationExtraArgs:
  """Turns gradients into SGPerm's momentum recommendations.

  Chain it before :func:`permute_by_recommendation` (that is what
  :func:`sgperm` does); any other gradient-signed direction, such as
  ``optax.scale_by_adam()``, may take its place.

  Args:
    momentum_lr: scale of the gradient in the momentum (float or schedule).
    momentum: decay of the momentum, in ``[0, 1]``.
    mu_dtype: dtype of the momentum buffer; by default the params' dtype.

  Returns:
    An optax transformation whose updates are the recommendations.

  Example:
    >>> import jax.numpy as jnp, sgperm_jax
    >>> tx = sgperm_jax.momentum_recommendation(momentum_lr=1.0, momentum=0.5)
    >>> state = tx.init(jnp.zeros(2))
    >>> r, state = tx.update(jnp.array([1., -2.]), state)
    >>> r.tolist()
    [1.0, -2.0]
  """
  _checks.positive_or_schedule("momentum_lr", momentum_lr)
  _checks.in_range("momentum", momentum, 0.0, 1.0)
  _checks.float_dtype("mu_dtype", mu_dtype)
  mu_dtype = None if mu_dtype is None else jnp.dtype(mu_dtype)

  def init_fn(params: optax.Params) -> RecommendationState:
    return RecommendationState(
        count=jnp.zeros([], jnp.int32),
        momentum=optax.tree.zeros_like(params, dtype=mu_dtype))

  def update_fn(updates: optax.Updates, state: RecommendationState,
                params: optax.Params | None = None,
                **extra_args: Any) -> tuple[optax.Updates, RecommendationState]:
    del params, extra_args
    lr = momentum_lr(state.count) if callable(momentum_lr) else momentum_lr
    pairs = jax.tree.map(lambda g, m: recommend(g, m, lr, momentum),
                         updates, state.momentum)
    recs = jax.tree.map(lambda _, p: p[0], updates, pairs)
    new_m = jax.tree.map(lambda _, p: p[1], updates, pairs)
    return recs, RecommendationState(
        count=optax.safe_increment(state.count), momentum=new_m)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

