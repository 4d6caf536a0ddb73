"""The docs ship: the Sphinx build passes with warnings as errors, the API
reference covers the public API, and the code cites docs/algorithm.md."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

import sgperm_jax

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Built at run time (no constant folding), so that neither this file nor its
# bytecode matches a search for the old citation.
OLD_CITATION = "".join(("SP", "EC", " §"))
SEARCHED = ("sgperm_jax", "tests", "csrc", "notebooks", "docs", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".rst", ".txt", ".cc", ".h", ".ipynb",
                 ".toml", ".cfg"}
MODULES = ("sgperm_jax.checkpoint", "sgperm_jax.plotting",
           "sgperm_jax.initializers", "sgperm_jax.export",
           "sgperm_jax.experiments", "sgperm_jax.experiments.train",
           "sgperm_jax.experiments.data", "sgperm_jax.experiments.cifar",
           "sgperm_jax.experiments.models",
           "sgperm_jax.experiments.quality",
           "sgperm_jax.experiments.pictures",
           "sgperm_jax.experiments.diagnostics",
           "sgperm_jax.experiments.bench")


@pytest.fixture(scope="module")
def built_html(tmp_path_factory) -> pathlib.Path:
  """The HTML docs, built once with ``-W --keep-going``."""
  pytest.importorskip("sphinx")
  pytest.importorskip("myst_parser")
  out = tmp_path_factory.mktemp("docs")
  proc = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html",
       "-d", str(out / "doctrees"), str(DOCS), str(out / "html")],
      capture_output=True, text=True, check=False, timeout=600, cwd=ROOT)
  if proc.returncode != 0:
    print(proc.stdout)
    print(proc.stderr)
  assert proc.returncode == 0, (
      f"sphinx failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
      f"{proc.stderr[-8000:]}")
  return out / "html"


@pytest.mark.slow
def test_docs_build_without_warnings(built_html):
  assert (built_html / "index.html").is_file()
  assert (built_html / "algorithm.html").is_file()


@pytest.mark.slow
def test_api_reference_documents_every_public_name(built_html):
  html = "\n".join(p.read_text(encoding="utf-8")
                   for p in (built_html / "api").glob("*.html"))
  ids = set(re.findall(r'id="([^"]+)"', html))
  missing = [name for name in sgperm_jax.__all__
             if f"sgperm_jax.{name}" not in ids  # a module: its own page
             and f"module-sgperm_jax.{name}" not in ids]
  assert not missing, f"not in the API reference: {missing}"
  missing = [m for m in MODULES if f"module-{m}" not in ids]
  assert not missing, f"modules not in the API reference: {missing}"


def test_algorithm_sections_are_numbered_and_stable():
  text = (DOCS / "algorithm.md").read_text(encoding="utf-8")
  numbers = [int(n) for n in re.findall(r"^## (\d+)\. ", text, re.M)]
  assert numbers == list(range(1, 15)), numbers


def test_no_citation_of_the_old_spec():
  hits = []
  for top in SEARCHED:
    base = ROOT / top
    files = [base] if base.is_file() else sorted(base.rglob("*"))
    for path in files:
      if (not path.is_file() or path.suffix not in TEXT_SUFFIXES
          or "_build" in path.parts):
        continue
      for number, line in enumerate(
          path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if OLD_CITATION in line:
          hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
  assert not hits, "cite docs/algorithm.md instead:\n" + "\n".join(hits)
