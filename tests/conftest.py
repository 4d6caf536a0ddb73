"""Shared test setup: 64-bit mode on demand, rank promotion as an error."""

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
