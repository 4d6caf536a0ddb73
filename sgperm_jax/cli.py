"""The ``sgperm-jax`` command: ``train`` (the main job), ``bench``, ``quality``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
  """Dispatches ``sgperm-jax <command> [options]``."""
  argv = list(sys.argv[1:] if argv is None else argv)
  commands = {"train": "sgperm_jax.train", "bench": "sgperm_jax.bench",
              "quality": "sgperm_jax.quality"}
  if not argv or argv[0] not in commands:
    print("usage: sgperm-jax {train,bench,quality} [options]   (-h for options)",
          file=sys.stderr)
    return 0 if argv[:1] in (["-h"], ["--help"]) else 2
  import importlib  # pylint: disable=import-outside-toplevel
  module = importlib.import_module(commands[argv[0]])
  return module.main(argv[1:])


if __name__ == "__main__":
  sys.exit(main())
