"""The ``sgperm-jax`` command: ``train`` (the main job), ``bench``, ``quality``."""

from __future__ import annotations

import sys

COMMANDS = {
    "train": ("sgperm_jax.train",
              "train a Flax model with SGPerm or another optimizer, report"),
    "bench": ("sgperm_jax.bench",
              "time one step against the sort floor and Adam, per model"),
    "quality": ("sgperm_jax.quality",
                "learning quality of every optimizer on every task, by seed"),
}


def usage() -> str:
  """The top-level help: the commands, a line each."""
  lines = ["usage: sgperm-jax COMMAND [options]   (sgperm-jax COMMAND -h for"
           " a command's options)", "", "commands:"]
  lines += [f"  {name:<9}{text}" for name, (_, text) in COMMANDS.items()]
  lines += ["", "  --version  print the version and exit"]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """Dispatches ``sgperm-jax <command> [options]``."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["--version"]:
    from sgperm_jax import __version__  # pylint: disable=import-outside-toplevel
    print(f"sgperm-jax {__version__}")
    return 0
  if not argv or argv[0] not in COMMANDS:
    helped = argv[:1] in (["-h"], ["--help"])
    print(usage(), file=sys.stdout if helped else sys.stderr)
    if argv and not helped:
      print(f"sgperm-jax: unknown command {argv[0]!r}", file=sys.stderr)
    return 0 if helped else 2
  import importlib  # pylint: disable=import-outside-toplevel
  module = importlib.import_module(COMMANDS[argv[0]][0])
  return module.main(argv[1:])


if __name__ == "__main__":
  sys.exit(main())
