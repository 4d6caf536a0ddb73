"""sgperm_jax: train neural networks by permuting their weights, in JAX.

Stochastic Gradient Permutation (Qiu & Suda, "Permute to Train") as an optax
``GradientTransformation``, with its four stages as pure functions:
:func:`recommend`, :func:`partition` (with :func:`permissibility_graph`),
:func:`find_cycles` and :func:`permute`.
"""

from sgperm_jax import initializers
from sgperm_jax._cycles import auto_cycle_search
from sgperm_jax._cycles import find_cycles
from sgperm_jax._cycles import source_order
from sgperm_jax._exact import exact_params
from sgperm_jax._graph import PermissibilityGraph
from sgperm_jax._graph import permissibility_graph
from sgperm_jax._laperm import LaPermState
from sgperm_jax._laperm import laperm
from sgperm_jax._partition import Partition
from sgperm_jax._partition import partition
from sgperm_jax._partition import partition_size
from sgperm_jax._permute import permute
from sgperm_jax._recommendation import RecommendationState
from sgperm_jax._recommendation import momentum_recommendation
from sgperm_jax._recommendation import recommend
from sgperm_jax._schedules import aggressiveness
from sgperm_jax._schedules import partition_ratio
from sgperm_jax._stats import PermutationStats
from sgperm_jax._stats import SyncStats
from sgperm_jax._stats import permutation_stats
from sgperm_jax._switch import SwitchState
from sgperm_jax._step import permutation_step
from sgperm_jax._switch import switch_after
from sgperm_jax._transform import PermutationState
from sgperm_jax._transform import permute_by_recommendation
from sgperm_jax._transform import sgperm
from sgperm_jax.export import load_permutation
from sgperm_jax.export import save_permutation

__version__ = "0.1.0"

__all__ = (
    "LaPermState",
    "Partition",
    "PermissibilityGraph",
    "PermutationState",
    "PermutationStats",
    "RecommendationState",
    "SwitchState",
    "SyncStats",
    "aggressiveness",
    "auto_cycle_search",
    "exact_params",
    "find_cycles",
    "initializers",
    "laperm",
    "load_permutation",
    "momentum_recommendation",
    "partition",
    "partition_ratio",
    "partition_size",
    "permissibility_graph",
    "permutation_stats",
    "permutation_step",
    "permute",
    "permute_by_recommendation",
    "recommend",
    "save_permutation",
    "sgperm",
    "source_order",
    "switch_after",
)
