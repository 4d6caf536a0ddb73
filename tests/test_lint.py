"""Lint (ruff) and types (mypy) of the package, as configured in pyproject."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _run(args: list[str], tmp_path: pathlib.Path
         ) -> subprocess.CompletedProcess:
  env = dict(os.environ, MYPY_CACHE_DIR=str(tmp_path / "mypy"),
             RUFF_CACHE_DIR=str(tmp_path / "ruff"))
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                        env=env, check=False)


def test_ruff_is_clean(tmp_path):
  if importlib.util.find_spec("ruff") is None:
    pytest.skip("ruff is not installed (pip install -e '.[test]')")
  proc = _run([sys.executable, "-m", "ruff", "check", "sgperm_jax", "tests"],
              tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.slow
def test_mypy_is_clean(tmp_path):
  pytest.importorskip("mypy")
  proc = _run([sys.executable, "-m", "mypy"], tmp_path)
  assert proc.returncode == 0, proc.stdout + proc.stderr

