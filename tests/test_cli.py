"""The ``sgperm-jax`` command line: help, defaults, and the core without extras.
"""

import argparse
import os
import subprocess
import sys
import textwrap

import pytest

from sgperm_jax import cli
from sgperm_jax.experiments import bench, quality, train

# Blocks the [train] extra's modules, as in an environment without them.
_BLOCK = textwrap.dedent("""
    import importlib.abc, sys
    class _Block(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("flax", "tqdm", "sklearn"):
          raise ModuleNotFoundError(f"No module named {name!r} (blocked)")
        return None
    sys.meta_path.insert(0, _Block())
""")


def _run_python(code: str) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-c", _BLOCK + textwrap.dedent(code)],
                        capture_output=True, text=True, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def _parsers() -> dict[str, argparse.ArgumentParser]:
  return {"train": train.build_parser(), "quality": quality.build_parser(),
          "bench": bench.build_parser()}


@pytest.mark.parametrize("command", ["train", "bench", "quality"])
def test_every_option_shows_its_default(command):
  parser = _parsers()[command]
  formatter = parser._get_formatter()
  for action in parser._actions:
    if not action.option_strings or action.nargs == 0:
      continue  # -h and flags such as --resume have no default to show
    text = formatter._get_help_string(action) % {"default": action.default,
                                                 "prog": parser.prog}
    assert "default" in text.lower(), (command, action.option_strings, text)


def test_help_formatter_says_none_for_no_default():
  parser = argparse.ArgumentParser(formatter_class=cli.HelpFormatter)
  parser.add_argument("--out", help="where to write")
  parser.add_argument("--names", default=(), help="names")
  parser.add_argument("--steps", type=int, default=5, help="steps")
  text = parser.format_help()
  assert "where to write (default: none)" in text
  assert "names (default: none)" in text
  assert "steps (default: 5)" in text


@pytest.mark.slow  # a fresh interpreter that compiles a step
def test_core_runs_a_step_without_the_train_extra():
  proc = _run_python("""
      import jax.numpy as jnp, optax, sgperm_jax
      params = {"w": jnp.arange(12.0).reshape(3, 4), "b": jnp.zeros(4)}
      grads = {"w": jnp.cos(params["w"]), "b": jnp.ones(4)}
      moved = []
      for tx in (sgperm_jax.sgperm(lamda0=1.0),
                 sgperm_jax.laperm(optax.adam(0.1), sync_period=1)):
        state = tx.init(params)
        updates, state = tx.update(grads, state, params)
        new = sgperm_jax.exact_params(optax.apply_updates(params, updates),
                                      state)
        assert (jnp.sort(new["w"], 0) == jnp.sort(params["w"], 0)).all()
        moved.append(bool((new["w"] != params["w"]).any()))
      assert moved[0], "sgperm's step permuted nothing"
      assert not {"flax", "tqdm", "sklearn"} & set(sys.modules)
      print("ok")
  """)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "ok"


def test_train_command_names_the_missing_extra():
  proc = _run_python("""
      from sgperm_jax import cli
      sys.exit(cli.main(["train"]))
  """)
  assert proc.returncode == 2, proc.stderr
  assert "[train] extra" in proc.stderr
  assert "flax, tqdm, scikit-learn missing" in proc.stderr
  assert "pip install 'sgperm-jax[train]'" in proc.stderr
