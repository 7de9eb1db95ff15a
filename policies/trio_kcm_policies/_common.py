"""What the policies here share: candidate lists, option checks, fullness.

Nothing here is public; each policy module imports what it needs.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from trio_kcm import KCMSocket

T = TypeVar("T")


class Candidates(Generic[T]):
    """A set with O(1) add, discard and uniform sampling.

    The members live in a list, and a dict maps each to its position; a
    discard moves the last member into the hole (swap-remove), so the list
    never has gaps and a random position is a random member.
    """

    __slots__ = ("_where", "items")

    def __init__(self) -> None:
        #: The members, in no meaningful order (read-only outside this class).
        self.items: list[T] = []
        self._where: dict[T, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item: object) -> bool:
        return item in self._where

    def add(self, item: T) -> None:
        if item not in self._where:
            self._where[item] = len(self.items)
            self.items.append(item)

    def discard(self, item: T) -> None:
        pos = self._where.pop(item, None)
        if pos is None:
            return
        last = self.items.pop()
        if pos < len(self.items):
            self.items[pos] = last
            self._where[last] = pos

    def two(self, rng: random.Random) -> tuple[T, T] | None:
        """Two members drawn at random without replacement; ``None`` if empty.

        With one member, it is returned twice (and ``rng`` is not used).
        Otherwise ``rng.randrange`` is called twice, with ``n`` then ``n - 1``:
        the first position is uniform, the second uniform among the others.
        """
        items = self.items
        n = len(items)
        if n < 2:
            return (items[0], items[0]) if n else None
        i = rng.randrange(n)
        j = rng.randrange(n - 1)
        if j >= i:
            j += 1
        return items[i], items[j]


def make_rng(policy: str, seed: object, rng: object) -> random.Random:
    """The ``seed=`` / ``rng=`` options of a randomised policy, checked."""
    if seed is not None and rng is not None:
        raise TypeError(f"{policy}: give seed= or rng=, not both")
    if rng is not None:
        if not isinstance(rng, random.Random):
            raise TypeError(
                f"{policy}: rng= must be a random.Random instance, not {type(rng).__name__}"
            )
        return rng
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, str, bytes))):
        raise TypeError(f"{policy}: seed= must be an int, str or bytes, not {type(seed).__name__}")
    return random.Random(seed)


def positive_number(policy: str, option: str, value: object) -> float:
    """A finite number > 0 (not a bool), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{policy}: {option}= must be a number, not {type(value).__name__}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{policy}: {option}= must be finite and > 0, not {value!r}")
    return float(value)


def check_choice(policy: str, option: str, value: object, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        allowed = " or ".join(repr(c) for c in choices)
        raise ValueError(f"{policy}: {option}= must be {allowed}, not {value!r}")
    return value


class HasIndex(Protocol):
    @property
    def index(self) -> int: ...


def is_full(sock: KCMSocket) -> bool:
    """Whether ``sock`` stopped being a receive candidate only because it is full.

    The mux removes a socket from the candidates when its queue reaches its
    buffer size, when receiving is disabled, and when it closes; only the
    first keeps it receive-enabled with a full queue.  (A socket that closes
    while full has its queue moved away, so it does not look full after.)
    """
    return sock.receive_enabled and sock.rx_queued_bytes >= sock.receive_buffer_size
