"""A trio-kcm policy in a few lines: a random candidate, in both directions."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Generic, TypeVar

import trio_kcm

T = TypeVar("T")


class Candidates(Generic[T]):
    """A set with O(1) add, remove and random choice."""

    def __init__(self) -> None:
        self.items: list[T] = []
        self.where: dict[T, int] = {}

    def add(self, item: T) -> None:
        self.where[item] = len(self.items)
        self.items.append(item)

    def remove(self, item: T) -> None:
        i = self.where.pop(item)
        last = self.items.pop()
        if last is not item:  # move the last one into the hole
            self.items[i] = last
            self.where[last] = i

    def choose(self, rng: random.Random) -> T | None:
        return rng.choice(self.items) if self.items else None


class RandomPolicy(trio_kcm.Policy):
    """A random socket for each message, a random stream for each group."""

    def __init__(self, *, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.sockets: Candidates[trio_kcm.KCMSocket] = Candidates()
        self.streams: Candidates[trio_kcm.AttachedStream] = Candidates()

    # The mux tells us exactly who the candidates are...
    def socket_added(self, sock: trio_kcm.KCMSocket, /) -> None:
        self.sockets.add(sock)

    def socket_removed(self, sock: trio_kcm.KCMSocket, /) -> None:
        self.sockets.remove(sock)

    def stream_added(self, stream: trio_kcm.AttachedStream, /) -> None:
        self.streams.add(stream)

    def stream_removed(self, stream: trio_kcm.AttachedStream, /) -> None:
        self.streams.remove(stream)

    # ...so a pick is one O(1) call: no scanning, no checking.
    def pick_socket(
        self, stream: trio_kcm.AttachedStream | None, message: bytes, /
    ) -> trio_kcm.KCMSocket | None:
        return self.sockets.choose(self.rng)

    def pick_stream(
        self, sock: trio_kcm.KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> trio_kcm.AttachedStream | None:
        return self.streams.choose(self.rng)
