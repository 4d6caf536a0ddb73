"""Every notebook in notebooks/ runs headless, on quick settings, cleanly."""

import json
import os
import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob(
    "*.ipynb"))

def _code_cells(nb):
  return [c for c in nb.cells if c.cell_type == "code"]


def test_the_three_notebooks_exist():
  assert {p.name for p in NOTEBOOKS} >= {
      "quickstart_nnx.ipynb", "linen_trainstate.ipynb",
      "one_step_walkthrough.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_with_its_outputs_and_install_cell(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  code = _code_cells(nb)
  # Run in order by notebooks/regenerate.py, every cell, without errors.
  counts = [c.execution_count for c in code]
  assert counts == list(range(1, len(code) + 1)), (
      f"{path.name}: regenerate it with python notebooks/regenerate.py")
  outputs = [o for c in code for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any("image/png" in o.get("data", {}) for o in outputs)
  # The install cell: one line to change, and nothing that does not exist.
  first = code[0].source
  assert 'find_spec("sgperm_jax") is None' in first  # skipped when installed
  assert '%pip install -q "{SOURCE}[train,plot]"' in first
  assert sum(line.startswith("SOURCE = ") for line in first.splitlines()) == 1
  assert "github.com/sgperm-jax" not in json.dumps(nb)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, monkeypatch, tmp_path):
  monkeypatch.setenv("SGPERM_QUICK", "1")
  # The kernel compiles without LLVM's optimisations (faster); the checks
  # here do not depend on them (notebooks/regenerate.py stores the outputs).
  monkeypatch.setenv("XLA_FLAGS", " ".join(
      [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]))
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      nb, timeout=600, kernel_name="python3",
      resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError if a cell fails
  images = [o for c in _code_cells(nb) for o in c.outputs
            if "image/png" in o.get("data", {})]
  assert images, "the notebook draws its figures"
  errors = [o for c in _code_cells(nb) for o in c.outputs
            if o.output_type == "error"]
  assert not errors, json.dumps(errors)[:2000]
