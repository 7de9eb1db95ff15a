"""The ``trio-kcm`` command: ``demo``, ``policies``, ``lab``.

Each subcommand lives in its own module with two functions:
``add_parser(subparsers)`` declares its arguments, and ``run(args) -> int``
does the work and returns the exit status.  ``rich`` (the ``cli`` extra) is
imported only by the subcommands, so ``import trio_kcm`` never needs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .._version import __version__

__all__ = ["main"]

#: Subcommand name -> module (relative to this package).
COMMANDS = {
    "demo": "._demo",
    "policies": "._policies",
    "lab": "._lab",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-kcm",
        description="trio-kcm: whole messages over many byte streams, on Trio.",
    )
    parser.add_argument("--version", action="version", version=f"trio-kcm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands", required=False)
    for module in COMMANDS.values():
        importlib.import_module(module, __name__).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trio-kcm`` command; return its exit status.

    With no command, print the usage (the commands, a line on each) and
    return 0.
    """
    try:
        import rich  # noqa: F401
    except ImportError:
        print(
            "trio-kcm: the command needs the 'cli' extra: python -m pip install 'trio-kcm[cli]'",
            file=sys.stderr,
        )
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        # No command: say what there is to run, like ``pip`` or ``nox`` do.
        parser.print_help()
        return 0
    module = importlib.import_module(COMMANDS[args.command], __name__)
    status: int = module.run(args)
    return status
