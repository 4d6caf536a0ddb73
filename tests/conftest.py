"""Shared fixtures: 64-bit mode on demand, and strict dtype promotion."""

import jax
import pytest


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield
