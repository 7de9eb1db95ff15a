"""Helpers the ``trio-kcm`` subcommands share: consoles, errors, argument types."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rich.console import Console

from .._policy import available_policies

__all__ = [
    "fail",
    "format_bytes",
    "make_console",
    "number",
    "policy_name",
]


def make_console(*, force_terminal: bool | None = None) -> Console:
    """A console on standard output.

    Rich decides from the file whether it is a terminal (colours, cursor
    movement, its width); ``force_terminal`` overrides that.  Nothing is
    highlighted unless asked for: numbers in plain output stay plain.
    """
    return Console(force_terminal=force_terminal, highlight=False)


def fail(command: str, message: str) -> int:
    """Print ``trio-kcm COMMAND: error: MESSAGE`` on standard error; return 2.

    The same shape and exit status as argparse's own errors, for the errors
    found after parsing (a policy that does not load, ...).
    """
    print(f"trio-kcm {command}: error: {message}", file=sys.stderr)
    return 2


def number(
    kind: Callable[[str], int] | Callable[[str], float],
    *,
    minimum: float,
    maximum: float | None = None,
    exclusive: bool = False,
) -> Callable[[str], float]:
    """An argparse ``type=`` for a number in a range.

    ``exclusive`` makes ``minimum`` a bound the value must exceed.  Errors read
    like argparse's own: ``argument --size: must be at least 8, not 3``.
    """
    name = "an integer" if kind is int else "a number"

    def convert(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {name}, not {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):  # nan, inf
            raise argparse.ArgumentTypeError(f"expected a finite number, not {text!r}")
        if exclusive and value <= minimum:
            raise argparse.ArgumentTypeError(f"must be more than {_plain(minimum)}, not {text}")
        if not exclusive and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {_plain(minimum)}, not {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {_plain(maximum)}, not {text}")
        return value

    convert.__name__ = kind.__name__  # argparse names the type in some messages
    return convert


def _plain(value: float) -> str:
    """``8`` and ``1048576`` as such, ``0.5`` as such: a bound in an error message."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def policy_name(text: str) -> str:
    """An argparse ``type=`` for a policy name: one that is installed.

    Only the names are checked (nothing is imported): a plugin that is
    installed but broken fails later, when it is loaded.
    """
    names = available_policies()
    if text not in names:
        known = ", ".join(names) or "none"
        raise argparse.ArgumentTypeError(f"no policy named {text!r} (installed: {known})")
    return text


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: a byte count for people (powers of 1024)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
