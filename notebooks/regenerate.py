"""Runs every notebook here in place, so they are stored with their outputs.

Usage, from a checkout with the test extra installed
(``pip install -e ".[test]"``)::

  python notebooks/regenerate.py            # all notebooks, full settings
  python notebooks/regenerate.py quickstart_nnx

Each notebook runs top to bottom in a fresh ``python3`` kernel, in this
folder, and is written back with its outputs (tables and figures), so they
show on the repository page. A cell that fails stops the run and leaves the
notebook unchanged.
"""

from __future__ import annotations

import pathlib
import sys

import nbclient
import nbformat

HERE = pathlib.Path(__file__).resolve().parent


def regenerate(path: pathlib.Path) -> None:
  """Executes the notebook at ``path`` and writes it back with its outputs."""
  nb = nbformat.read(path, as_version=4)
  nbclient.NotebookClient(
      nb, timeout=1800, kernel_name="python3",
      resources={"metadata": {"path": str(HERE)}}).execute()
  nbformat.validate(nb)
  nbformat.write(nb, path)


def main(argv: list[str]) -> int:
  names = argv or sorted(p.stem for p in HERE.glob("*.ipynb"))
  for name in names:
    path = HERE / f"{pathlib.Path(name).stem}.ipynb"
    if not path.exists():
      print(f"regenerate: no notebook {path}", file=sys.stderr)
      return 2
    print(f"running {path.name} ...", flush=True)
    regenerate(path)
    print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
