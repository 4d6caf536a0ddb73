"""The exact permuted weights, wherever the state sits in a chain.

``optax.apply_updates`` computes ``p + (q - p)``, which is not exactly ``q`` in
floating point; the permutation stage keeps the exact weights in its state.
"""

from __future__ import annotations

import sys
from typing import Any

import jax


def _owns_exact_params(x: Any) -> bool:
  return isinstance(x, tuple) and callable(getattr(type(x), "exact_params",
                                                   None))


def _pure(tree: Any) -> Any:
  """Unwraps Flax NNX variables (as ``nnx.Optimizer`` keeps them)."""
  nnx = sys.modules.get("flax.nnx")  # NNX variables exist only if it is loaded
  return tree if nnx is None else nnx.as_pure(tree)


def apply_exact_states(params: Any, opt_state: Any) -> tuple[Any, bool]:
  """``params`` with every sgperm_jax state in ``opt_state`` applied.

  Returns the tree and whether any such state was found (if none, ``params``
  comes back unchanged).
  """
  states = [s for s in jax.tree.leaves(opt_state, is_leaf=_owns_exact_params)
            if _owns_exact_params(s)]
  for state in states:
    params = state.exact_params(params)
  return params, bool(states)


def exact_params(params: Any, opt_state: Any) -> Any:
  """Returns the exact weights: every row a bit-exact permutation.

  Finds every sgperm_jax state in ``opt_state`` (inside ``optax.chain``,
  ``optax.partition``, ``optax.inject_hyperparams``, ...) and replaces the
  leaves it owns with the weights the algorithm chose; other leaves come from
  ``params`` unchanged. Before the first update the params are returned.

  Args:
    params: the current parameters (as updated with ``optax.apply_updates``).
      Flax NNX states of variables are accepted too.
    opt_state: the optimizer state.

  Returns:
    A tree like ``params`` with the exact weights.

  Raises:
    ValueError: if ``opt_state`` holds no sgperm_jax state.

  Example:
    >>> import jax.numpy as jnp, optax, sgperm_jax
    >>> tx = sgperm_jax.sgperm(alpha0=1.0, lamda0=1.0)
    >>> params = jnp.array([1e8, 1.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([1., -1.]), state, params)
    >>> optax.apply_updates(params, updates).tolist()
    [0.0, 100000000.0]
    >>> params = optax.apply_updates(params, updates)
    >>> sgperm_jax.exact_params(params, state).tolist()
    [1.0, 100000000.0]
  """
  params, found = apply_exact_states(_pure(params), _pure(opt_state))
  if not found:
    raise ValueError("sgperm_jax: exact_params: opt_state holds no sgperm_jax"
                     " state (was"
                     " it made by sgperm, permute_by_recommendation or"
                     " laperm?)")
  return params
