"""A line of candidates taken in turn: the shared core of the rotating policies."""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

T = TypeVar("T")


class Rotation(Generic[T]):
    """Candidates in line; :meth:`take` returns the one taken longest ago.

    Adding, removing and taking are O(1).  A newcomer joins the end of the line.
    """

    __slots__ = ("_line",)

    def __init__(self) -> None:
        self._line: OrderedDict[T, None] = OrderedDict()

    def add(self, item: T) -> None:
        self._line[item] = None

    def discard(self, item: T) -> None:
        self._line.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._line

    def head(self) -> T | None:
        """The next in line, left in place; ``None`` if the line is empty."""
        return next(iter(self._line)) if self._line else None

    def take(self) -> T | None:
        """The next in line, moved to the end; ``None`` if the line is empty."""
        line = self._line
        if not line:
            return None
        item = next(iter(line))
        line.move_to_end(item)
        return item
