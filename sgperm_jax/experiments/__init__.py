"""The application around the optimizer: trainer, data, models, suites.

Everything here is optional. ``pip install "sgperm-jax[train]"`` adds what it
needs (flax, tqdm, scikit-learn); the optimizer itself (``import
sgperm_jax``) needs none of it.

- :mod:`~sgperm_jax.experiments.train`: ``sgperm-jax train``, the main job.
- :mod:`~sgperm_jax.experiments.data`: digits, IDX and CSV loaders.
- :mod:`~sgperm_jax.experiments.cifar`: CIFAR-10 (python batches, loaded
  safely, never downloaded) and its augmentation in JAX.
- :mod:`~sgperm_jax.experiments.models`: the Flax NNX MLP, the convnets
  (Train-by-Reconnect's Conv2, Conv4, Conv13) and ResNet-20.
- :mod:`~sgperm_jax.experiments.quality`: ``sgperm-jax quality``, the suite.
- :mod:`~sgperm_jax.experiments.pictures`: ``sgperm-jax pictures``, the
  README's figures of what permutation training did.
- :mod:`~sgperm_jax.experiments.diagnostics`: what a permutation step did.
- :mod:`~sgperm_jax.experiments.bench`: ``sgperm-jax bench``, speed.
"""

from __future__ import annotations

import importlib

# The distribution that provides each module the trainer imports.
TRAIN_REQUIREMENTS = {"flax": "flax", "tqdm": "tqdm", "sklearn": "scikit-learn"}


def missing_requirements() -> list[str]:
  """The ``[train]`` extra's distributions that cannot be imported."""
  missing = []
  for module, dist in TRAIN_REQUIREMENTS.items():
    try:
      importlib.import_module(module)
    except ImportError:
      missing.append(dist)
  return missing


def require_train_extra(what: str) -> None:
  """Raises ImportError naming the ``[train]`` extra if any of it is missing.

  Args:
    what: what needs it, for the message (e.g. ``"sgperm-jax train"``).
  """
  missing = missing_requirements()
  if missing:
    raise ImportError(
        f"sgperm_jax: {what} needs the [train] extra ({', '.join(missing)}"
        " missing); install it with pip install 'sgperm-jax[train]' (from a"
        " checkout: pip install -e '.[train]')")
