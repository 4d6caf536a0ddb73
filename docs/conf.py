"""Sphinx configuration: the algorithm page and the API reference.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(needs the ``docs`` extra: ``pip install -e ".[docs]"``; the API pages of
``sgperm_jax.plotting`` and ``sgperm_jax.experiments`` also import matplotlib
and flax, from the ``plot`` and ``train`` extras).
"""

from __future__ import annotations

import os
import pathlib
import sys

# Document the checkout, on CPU, without opening windows.
ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")

import sgperm_jax  # noqa: E402

project = "sgperm_jax"
author = "sgperm_jax developers"
copyright = "sgperm_jax developers, MIT License"
release = version = sgperm_jax.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "images"]  # figures and tables for the README

# Google style docstrings, as the code writes them.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": False}
nitpicky = False

myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"sgperm_jax {release}"

# Show the aliases the signatures are written with, not their expansions.
autodoc_type_aliases = {
    "optax.ScalarOrSchedule": "optax.ScalarOrSchedule",
    "optax.Schedule": "optax.Schedule",
    "chex.Numeric": "chex.Numeric",
    "chex.Array": "chex.Array",
    "jax.typing.ArrayLike": "jax.typing.ArrayLike",
    "_layout.LayoutSpec": "LayoutSpec",
    "_layout.RowLayout": "RowLayout",
}
