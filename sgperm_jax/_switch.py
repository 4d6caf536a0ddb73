"""Switching optimizers: one transformation for some steps, then another.

The reference trainer could run SGPerm for a number of steps and then hand the
network over to another optimizer, whose state it kept warm in the meantime.
:func:`switch_after` does this the optax way.

optax's own ``optax.transforms.conditionally_transform`` does not do it
exactly: chaining ``conditionally_transform(first, lambda t: t < n)`` with
``conditionally_transform(second, lambda t: t >= n)`` switches, but the second
optimizer's state stays cold (it sees no gradients before the switch), the
second optimizer starts from the rounded params rather than the exact permuted
weights, and :func:`exact_params` keeps finding the first optimizer's frozen
permutation state after the switch, so it hands back stale weights.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax import lax

from sgperm_jax._exact import apply_exact_states
from sgperm_jax._stats import tracking_states


def _is_masked(x: Any) -> bool:
  return isinstance(x, optax.MaskedNode)


def _apply_exact(params: Any, opt_state: Any) -> Any:
  """``params`` with every exact-weights state in ``opt_state`` applied."""
  return apply_exact_states(params, opt_state)[0]


def _select(pred: chex.Numeric, on_true: Any, on_false: Any) -> Any:
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


class SwitchState(NamedTuple):
  """State of :func:`switch_after`.

  ``switched`` tells whether the last step was made by the second
  transformation; the first one's state is frozen from then on.
  """
  # shape=(), dtype=jnp.int32: steps taken (the name shadows tuple.count,
  # as in optax's states)
  count: chex.Array
  switched: jax.typing.ArrayLike  # shape=(), dtype=bool
  first_state: Any  # state of the first transformation
  second_state: Any  # state of the second transformation

  def tracked_stats(self) -> list[tuple[Any, Any]]:
    """The tracked statistics of whichever transformation made the last
    step (read on the host, see :func:`permutation_stats`)."""
    active = self.second_state if bool(self.switched) else self.first_state
    return tracking_states(active)

  def exact_params(self, params: Any) -> Any:
    """The exact weights of whichever transformation made the last step.

    Before the switch, the exact weights of the first transformation (e.g.
    SGPerm's); after it, those of the second (``params`` themselves unless the
    second is a permutation too). The first transformation's state is frozen
    at the switch, so its weights are never handed back afterwards.

    Args:
      params: the current parameters.

    Returns:
      A tree like ``params``.
    """
    return _select(self.switched, _apply_exact(params, self.second_state),
                   _apply_exact(params, self.first_state))


def switch_after(
    first: optax.GradientTransformation,
    second: optax.GradientTransformation,
    switch_step: int,
    *,
    warm_second: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """Runs ``first`` for ``switch_step`` steps, then ``second``.

  Steps ``0 .. switch_step - 1`` return the updates of ``first``; from step
  ``switch_step`` on, those of ``second``. Both states are kept; ``first``'s
  is frozen at the switch.

  **Warm second state.** With ``warm_second=True`` (the default, as the
  reference trainer did), ``second`` is also updated with every gradient
  before the switch (its updates are discarded), so, e.g., Adam's moments
  and step count are warm when it takes over. This is right for optimizers
  whose state only summarises gradients (SGD, momentum, Adam). A warm
  :func:`laperm` takes its bank of values from the params at step 0, the
  initial weights (after a permutation phase, the same values row by row); a
  cold one takes them at the switch. A second transformation that keeps its
  own copy of the weights, such as :func:`permute_by_recommendation` (so
  also :func:`sgperm`) or ``optax.lookahead``, would start from weights it
  computed on its own: give it ``warm_second=False``, so that its state
  stays at ``init`` until the switch.

  **Exact handover.** At the switch, the params (after
  ``optax.apply_updates``) are only within rounding of the exact weights of
  ``first`` (see :func:`exact_params`). The first update of ``second`` is
  computed at the exact weights and moves the params onto them:
  ``exact - params + update``. So after a permutation phase the second
  optimizer starts from the bit-exact permuted weights (up to the rounding
  of that single update). The gradient of that step was computed by the user
  at the params, within rounding of the exact weights.

  :func:`exact_params` on the state returns the exact weights of whichever
  transformation made the last step.

  Call ``update`` under ``jax.jit`` (as in the example): the two phases are
  the branches of one ``lax.cond``, traced once per compilation, so a whole
  run needs a single trace; called eagerly, every step traces both again.

  Args:
    first: the transformation used for the first ``switch_step`` steps.
    second: the transformation used from then on.
    switch_step: number of steps made with ``first``, ``>= 0``.
    warm_second: whether ``second`` also sees the gradients before the
      switch, keeping its state warm (see above).

  Returns:
    An optax ``GradientTransformationExtraArgs``; its state is a
    :class:`SwitchState`.

  Example:
    >>> import jax, jax.numpy as jnp, optax, sgperm_jax
    >>> params = {"w": jnp.linspace(-1., 1., 8)}
    >>> target = jnp.linspace(1., -1., 8) * 1.5
    >>> loss = lambda p: jnp.sum((p["w"] - target) ** 2)
    >>> tx = sgperm_jax.switch_after(sgperm_jax.sgperm(lamda0=1.0),
    ...                              optax.adam(0.05), switch_step=5)
    >>> state = tx.init(params)
    >>> @jax.jit
    ... def train_step(params, state):
    ...   updates, state = tx.update(jax.grad(loss)(params), state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> for _ in range(5):
    ...   params, state = train_step(params, state)
    >>> permuted = sgperm_jax.exact_params(params, state)
    >>> sorted(permuted["w"].tolist()) == jnp.linspace(-1., 1., 8).tolist()
    True
    >>> for _ in range(20):  # Adam now changes the values themselves
    ...   params, state = train_step(params, state)
    >>> bool(loss(params) < loss(permuted))
    True
  """
  for name, tx in (("first", first), ("second", second)):
    if not (callable(getattr(tx, "init", None))
            and callable(getattr(tx, "update", None))):
      raise TypeError(f"sgperm_jax: switch_after: {name} must be an optax"
                      f" GradientTransformation, got {tx!r}")
  if isinstance(switch_step, bool) or not (
      isinstance(switch_step, numbers.Integral)
      or hasattr(switch_step, "dtype")):
    raise TypeError("sgperm_jax: switch_step must be an integer, got"
                    f" {switch_step!r}")
  if isinstance(switch_step, numbers.Integral) and switch_step < 0:
    raise ValueError("sgperm_jax: switch_step must be >= 0, got"
                     f" {switch_step!r}")
  if not isinstance(warm_second, bool):
    raise TypeError("sgperm_jax: warm_second must be True or False, got"
                    f" {warm_second!r}")
  first = optax.with_extra_args_support(first)
  second = optax.with_extra_args_support(second)

  def init_fn(params: optax.Params) -> SwitchState:
    return SwitchState(
        count=jnp.zeros([], jnp.int32),
        switched=jnp.zeros([], bool),
        first_state=first.init(params),
        second_state=second.init(params))

  def update_fn(updates: optax.Updates, state: SwitchState,
                params: optax.Params | None = None,
                **extra_args: Any) -> tuple[optax.Updates, SwitchState]:
    if params is None:
      raise ValueError("sgperm_jax: switch_after: update needs params (the"
                       " third argument of tx.update), to hand the exact"
                       " weights over at the switch.")

    def before():
      new_updates, first_state = first.update(updates, state.first_state,
                                              params, **extra_args)
      second_state = state.second_state
      if warm_second:
        _, second_state = second.update(updates, second_state, params,
                                        **extra_args)
      return new_updates, first_state, second_state

    def after():
      handover = state.count == switch_step
      start = lax.cond(handover,
                       lambda: _apply_exact(params, state.first_state),
                       lambda: params)
      new_updates, second_state = second.update(updates, state.second_state,
                                                start, **extra_args)
      new_updates = jax.tree.map(
          lambda u, s, p: jnp.where(handover, u + (s - p), u).astype(u.dtype),
          new_updates, start, params)
      return new_updates, state.first_state, second_state

    # Both branches must return the same dtypes: promote leaf by leaf.
    dtypes = jax.tree.map(lambda a, b: jnp.result_type(a, b),
                          jax.eval_shape(before)[0], jax.eval_shape(after)[0])

    def cast(branch):
      def run():
        new_updates, first_state, second_state = branch()
        return (jax.tree.map(lambda u, d: u.astype(d), new_updates, dtypes),
                first_state, second_state)
      return run

    use_second = state.count >= switch_step
    new_updates, first_state, second_state = lax.cond(
        use_second, cast(after), cast(before))
    return new_updates, SwitchState(
        count=optax.safe_increment(state.count),
        switched=jnp.asarray(use_second),
        first_state=first_state,
        second_state=second_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
