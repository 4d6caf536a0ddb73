"""The ``sgperm-jax`` command: ``train`` (the main job), ``bench``,
``quality``, ``pictures``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# name: (module, one line of help, whether it needs the [train] extra)
COMMANDS = {
    "train": ("sgperm_jax.experiments.train",
              "train a Flax model with SGPerm or another optimizer, report",
              True),
    "bench": ("sgperm_jax.experiments.bench",
              "time one step against the sort floor and Adam, per model",
              False),
    "quality": ("sgperm_jax.experiments.quality",
                "learning quality of every optimizer on every task, by seed",
                True),
    "pictures": ("sgperm_jax.experiments.pictures",
                 "draw what permutation training did (the README's figures)",
                 True),
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
  """Every option's help ends with its default (``none`` when it has none).

  Help that already says its default (``"default: ..."``) is left as it is;
  flags (``--resume``) have none to show.
  """

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    if ("default" in text.lower() or action.default is argparse.SUPPRESS
        or not action.option_strings or action.nargs == 0):
      return text
    empty = action.default is None or action.default in ((), [], "")
    shown = "none" if empty else "%(default)s"
    return f"{text} (default: {shown})" if text else f"default: {shown}"


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None
          ) -> argparse.Namespace | int:
  """The parsed options, or the exit status when argparse exits (``-h``:
  0, a bad option: 2, after printing why)."""
  try:
    return parser.parse_args(argv)
  except SystemExit as e:
    return int(e.code or 0)


def usage() -> str:
  """The top-level help: the commands, a line each."""
  lines = ["usage: sgperm-jax COMMAND [options]   (sgperm-jax COMMAND -h for"
           " a command's options)", "", "commands:"]
  lines += [f"  {name:<9}{text}" for name, (_, text, _) in COMMANDS.items()]
  lines += ["", "  --version  print the version and exit"]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """Dispatches ``sgperm-jax <command> [options]``."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv[:1] == ["--version"]:
    from sgperm_jax import __version__  # noqa: PLC0415 (lazy import)
    print(f"sgperm-jax {__version__}")
    return 0
  if not argv or argv[0] not in COMMANDS:
    helped = argv[:1] in (["-h"], ["--help"])
    print(usage(), file=sys.stdout if helped else sys.stderr)
    if argv and not helped:
      print(f"sgperm-jax: unknown command {argv[0]!r}", file=sys.stderr)
    return 0 if helped else 2
  module_name, _, needs_train_extra = COMMANDS[argv[0]]
  if needs_train_extra:
    from sgperm_jax import experiments  # noqa: PLC0415 (lazy import)
    try:
      experiments.require_train_extra(f"sgperm-jax {argv[0]}")
    except ImportError as e:
      print(e, file=sys.stderr)
      return 2
  import importlib  # noqa: PLC0415 (lazy import)
  return importlib.import_module(module_name).main(argv[1:])


if __name__ == "__main__":
  sys.exit(main())
