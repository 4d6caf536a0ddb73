"""Shared test setup: 64-bit mode on demand, rank promotion as an error,
the slow doctests marked."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


# Doctests that take seconds (an interpreted Pallas kernel, orbax, the
# README's walk through): left out of the quick subset (-m "not slow") like
# the slow tests.
SLOW_DOCTESTS = ("README.md", "sgperm_jax._cycles_pallas.find_cycles_pallas",
                 "sgperm_jax.checkpoint",
                 "sgperm_jax.checkpoint.restore_checkpoint")


def pytest_collection_modifyitems(items):
  for item in items:
    if item.name in SLOW_DOCTESTS:
      item.add_marker(pytest.mark.slow)


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
