"""Policies by name, with options: ``round-robin,p2c(seed=7),...``.

Pure apart from :meth:`PolicySpec.build`, which loads the policy's plugin.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any

from .._errors import PolicyLoadError
from .._policy import Policy, load_policy

__all__ = ["PolicySpec", "parse_policies"]


@dataclass(frozen=True)
class PolicySpec:
    """A policy to run: its registered name and the options to build it with.

    ``PolicySpec("p2c", (("seed", 7),))`` is what ``p2c(seed=7)`` parses to
    (:func:`parse_policies`).
    """

    #: The name it is registered under (see :func:`trio_kcm.available_policies`).
    name: str
    #: Keyword options for its factory, as ``(key, value)`` pairs, in order.
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """How the reports name it, ``name`` or ``name(key=value, ...)``."""
        if not self.options:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v!r}' for k, v in self.options)})"

    def build(self, *, seed: int | None = None) -> Policy:
        """Build the policy, with :func:`trio_kcm.load_policy`.

        Args:
          seed: Passed to the factory as ``seed=`` if it takes that keyword
            and :attr:`options` has neither ``seed`` nor ``rng``.  Whether it
            takes it is found by trying: a factory that raises
            :exc:`TypeError` is called again without it.

        Returns:
          A new policy object.

        Raises:
          trio_kcm.PolicyLoadError: No policy has that name, or its plugin
            failed to import or to build with these options.

        """
        options = dict(self.options)
        if seed is not None and "seed" not in options and "rng" not in options:
            try:
                return load_policy(self.name, seed=seed, **options)
            except PolicyLoadError as exc:
                if not isinstance(exc.__cause__, TypeError):
                    raise
        return load_policy(self.name, **options)


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on ``sep`` outside brackets and quotes."""
    parts: list[str] = []
    depth = 0
    quote = ""
    start = 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote and text[i - 1] != "\\":
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced {ch!r} in {text!r}")
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise ValueError(f"unbalanced brackets or quotes in {text!r}")
    parts.append(text[start:])
    return parts


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _parse_one(item: str) -> PolicySpec:
    name, paren, rest = item.partition("(")
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise ValueError(f"{item!r} is not a policy name (or name(key=value, ...))")
    options: dict[str, Any] = {}
    if paren:
        if not rest.rstrip().endswith(")"):
            raise ValueError(f"{item!r}: the options need a closing ')'")
        for opt in _split_top(rest.rstrip()[:-1]):
            if not opt.strip():
                continue
            key, eq, value = opt.partition("=")
            key = key.strip()
            if not eq or not key.isidentifier():
                raise ValueError(f"{item!r}: options are key=value, not {opt.strip()!r}")
            value = value.strip()
            try:
                options[key] = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                if not _NAME.fullmatch(value):
                    raise ValueError(
                        f"{item!r}: {key}={value} is neither a Python literal nor a word"
                    ) from None
                options[key] = value
    return PolicySpec(name, tuple(options.items()))


def parse_policies(text: str) -> list[PolicySpec]:
    """Parse a list of policies: ``a,b(key=value, ...),...``.

    Each is a registered name, optionally with options for its factory as
    Python literals (a bare word is a string):
    ``round-robin,p2c(seed=7),weighted-round-robin(socket_weights={0: 0.1})``.
    Nothing is loaded: whether the names are installed is not checked.

    Args:
      text: The list.

    Returns:
      The policies, in order, each once.

    Raises:
      ValueError: ``text`` is malformed, or names no policy.

    """
    specs: list[PolicySpec] = []
    for raw in _split_top(text):
        item = raw.strip()
        if not item:
            continue
        spec = _parse_one(item)
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise ValueError("name at least one policy, e.g. round-robin,least-queued")
    return specs
