"""Aggressiveness and partition-ratio schedules of the reference.

See docs/algorithm.md §4.

The reference decays *before* the first step: at step ``t = 0, 1, ...``

* aggressiveness ``alpha_t = max(alpha0 * beta1**(t+1), alpha_min)``
* partition ratio ``lamda_t = min(lamda0 * beta2**(t+1), lamda_max)``

Either may instead be any ``optax.Schedule`` (a callable of the step count).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax


def aggressiveness(alpha0: optax.ScalarOrSchedule, beta1: float = 1.0,
                   alpha_min: float = 0.0) -> optax.Schedule:
  """The reference's aggressiveness schedule, or ``alpha0`` if a schedule.

  Args:
    alpha0: initial aggressiveness, or an optax schedule that replaces the rule.
    beta1: per-step decay factor (``<= 1``).
    alpha_min: lower bound.

  Returns:
    A schedule ``count -> alpha_t``.

  Example:
    >>> import sgperm_jax
    >>> sched = sgperm_jax.aggressiveness(0.5, beta1=0.5, alpha_min=0.1)
    >>> [round(float(sched(t)), 6) for t in range(3)]
    [0.25, 0.125, 0.1]
  """
  if callable(alpha0):
    return alpha0

  def schedule(count):
    t = jnp.asarray(count) + 1
    return jnp.maximum(alpha0 * jnp.power(beta1, t), alpha_min)
  return schedule


def partition_ratio(lamda0: optax.ScalarOrSchedule, beta2: float = 1.0,
                    lamda_max: float = 1.0) -> optax.Schedule:
  """The reference's partition-ratio schedule, or ``lamda0`` if a schedule.

  ``lamda`` is the paper's spelling of the partition ratio λ, kept because
  ``lambda`` is a Python keyword.

  Args:
    lamda0: initial partition ratio in ``[0, 1]``, or an optax schedule.
    beta2: per-step growth factor (``>= 1``).
    lamda_max: upper bound, in ``[0, 1]``.

  Returns:
    A schedule ``count -> lamda_t``.

  Example:
    >>> import sgperm_jax
    >>> sched = sgperm_jax.partition_ratio(0.25, beta2=2.0, lamda_max=0.9)
    >>> [round(float(sched(t)), 6) for t in range(3)]
    [0.5, 0.9, 0.9]
  """
  if callable(lamda0):
    return lamda0

  def schedule(count):
    t = jnp.asarray(count) + 1
    return jnp.minimum(lamda0 * jnp.power(beta2, t), lamda_max)
  return schedule
