"""``trio-kcm policies``: the installed load-balancing policies, plugins included.

Each entry point of the ``trio_kcm.policies`` group is loaded and built with no
options, exactly as ``open_mux(policy=NAME)`` and ``trio-kcm demo --policy
NAME`` build it, so that a policy listed without an error is one those accept.
A plugin that fails (its module does not import, its factory raises or builds
something that is not a policy) is listed with its error; the others are
listed all the same.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import json
from dataclasses import asdict, dataclass
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from .._mux import open_mux
from .._policy import ENTRY_POINT_GROUP
from ._common import make_console

__all__ = ["PolicyInfo", "add_parser", "find_policies", "run"]

DESCRIPTION = """\
List every policy registered under the trio_kcm.policies entry-point group:
its name, the distribution it comes from, and the first line of its
docstring.  Each is loaded and built with no options, as open_mux(policy=NAME)
and 'trio-kcm demo --policy NAME' build it; a plugin that fails is listed
with its error, and the others all the same.
"""

EPILOG = f"""\
exit status:
  0  every policy loads
  1  some plugin is broken (it is listed, with its error)

Policies are found under the {ENTRY_POINT_GROUP!r} entry-point group; a
distribution registers its own as trio-kcm does (see docs/policies.md).
"""


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    """One registered policy, as listed (and as ``--json`` prints it)."""

    #: The name it is registered (and chosen) under.
    name: str
    #: The distribution that registers it, and its version (``None`` if unknown).
    distribution: str | None
    version: str | None
    #: The entry point's object reference, ``module:attribute``.
    entry_point: str
    #: The first line of the factory's docstring ("" if it has none).
    description: str
    #: Why it does not load or build, or ``None`` if it does.
    error: str | None
    #: Another distribution registering the same name, whose policy is the
    #: one loaded by that name; ``None`` if this one is.
    shadowed_by: str | None

    @property
    def ok(self) -> bool:
        """Whether it loads and builds."""
        return self.error is None


def _first_line(doc: str | None) -> str:
    """The first line of a docstring, or ``""``."""
    lines = inspect.cleandoc(doc or "").strip().splitlines()
    return lines[0].strip() if lines else ""


def _check(ep: importlib.metadata.EntryPoint) -> tuple[str, str | None]:
    """Load and build ``ep``'s policy as ``load_policy`` does: (description, error)."""
    try:
        factory = ep.load()
    except Exception as exc:  # a plugin's import may raise anything
        return "", f"failed to import: {type(exc).__name__}: {exc}"
    # The factory's own docstring (a class without one does not inherit
    # Policy's); not the docstring of the type of whatever else it is.
    doc = factory.__doc__ if inspect.isclass(factory) or inspect.isroutine(factory) else None
    description = _first_line(doc)
    if not callable(factory):
        return description, f"{ep.value} is {factory!r}, not a policy factory"
    try:
        policy = factory()
    except Exception as exc:  # a plugin's factory may raise anything
        return description, f"failed to build: {type(exc).__name__}: {exc}"
    if not (
        callable(getattr(policy, "pick_socket", None))
        and callable(getattr(policy, "pick_stream", None))
    ):
        return description, f"built {policy!r}, which is not a policy"
    if not description:
        description = _first_line(type(policy).__doc__)
    return description, None


def find_policies() -> list[PolicyInfo]:
    """Every entry point of the policies group, checked, sorted by name.

    A name registered twice is listed twice; the one that comes first is the
    one :func:`trio_kcm.load_policy` loads, the other says so in
    ``shadowed_by``.
    """
    found: list[PolicyInfo] = []
    first: dict[str, str | None] = {}  # name -> the distribution whose entry point wins
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        dist_name = dist.name if dist is not None else None
        shadowed_by = None
        if ep.name in first:
            shadowed_by = first[ep.name] or "?"
        else:
            first[ep.name] = dist_name
        description, error = _check(ep)
        found.append(
            PolicyInfo(
                name=ep.name,
                distribution=dist_name,
                version=dist.version if dist is not None else None,
                entry_point=ep.value,
                description=description,
                error=error,
                shadowed_by=shadowed_by,
            )
        )
    found.sort(key=lambda info: (info.name, info.shadowed_by is not None))
    return found


def _default_policy() -> str:
    """The policy ``open_mux`` uses when none is named."""
    default = inspect.signature(open_mux).parameters["policy"].default
    return str(default)


def add_parser(subparsers: Any) -> None:
    """Declare ``trio-kcm policies`` and its options."""
    p = subparsers.add_parser(
        "policies",
        help="list the installed load-balancing policies, plugins included",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print a JSON list of objects (name, distribution, version, entry_point,"
        " description, ok, error, shadowed_by) instead of a table",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``trio-kcm policies``; return its exit status."""
    policies = find_policies()
    status = 0 if all(info.ok for info in policies) else 1
    if args.json:
        print(json.dumps([{**asdict(info), "ok": info.ok} for info in policies], indent=2))
        return status

    console = make_console()
    terminal = console.is_terminal
    if not terminal:
        console.width = max(console.width, 1000)  # one line per policy, for grep
    default = _default_policy()
    table = Table(box=box.ROUNDED if terminal else None, pad_edge=terminal)
    table.add_column("name", no_wrap=True, style="bold")
    table.add_column("distribution", no_wrap=True)
    table.add_column("description")
    for info in policies:
        dist = f"{info.distribution or '?'} {info.version or ''}".rstrip()
        text = Text(info.description)
        if info.error is not None:
            text = Text(f"error: {info.error}", style="bold red")
        if info.shadowed_by is not None:
            text.append(f" (shadowed by {info.shadowed_by}'s, not loaded)", style="yellow")
        name = f"{info.name} (default)" if info.name == default else info.name
        table.add_row(name, dist, text)
    if terminal:
        console.print(table)
    else:
        with console.capture() as capture:
            console.print(table)
        print("\n".join(line.rstrip() for line in capture.get().splitlines()))
    if not policies:
        console.print(f"no policies are installed under {ENTRY_POINT_GROUP!r}")
    broken = sum(not info.ok for info in policies)
    if broken:
        them = "it" if broken == 1 else "one of them"
        console.print(
            f"{broken} broken: choosing {them} by name raises the error shown", style="red"
        )
    console.print("choose one with 'trio-kcm demo --policy NAME' or trio_kcm.open_mux(policy=NAME)")
    return status
