"""SEQPACKET sockets: messages built from parts, and read in pieces, per task.

A task of a SEQPACKET socket may build a message over several
``send(part, more=True)`` calls (:class:`Building`), and read a message in
pieces with ``receive_some(max_bytes)`` (:class:`Reading`).  Each task has
its own message in each direction, so tasks sharing a socket never mix their
parts; what a task leaves unfinished is forgotten with the task (the tables
are keyed weakly by task).
"""

from __future__ import annotations

import errno as _errno
import weakref
from typing import final

import trio

__all__ = ["Building", "Reading"]


def _as_bytes(part: bytes) -> bytes:
    if type(part) is bytes:
        return part
    if isinstance(part, str):
        raise TypeError("messages are bytes, not str")
    return memoryview(part).tobytes()


class _Parts:
    __slots__ = ("nbytes", "parts")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.nbytes = 0


@final
class Building:
    """The messages tasks are building with ``send(part, more=True)``."""

    __slots__ = ("max_message_size", "tasks")

    def __init__(self, max_message_size: int) -> None:
        self.max_message_size = max_message_size
        self.tasks: weakref.WeakKeyDictionary[trio.lowlevel.Task, _Parts] = (
            weakref.WeakKeyDictionary()
        )

    def __len__(self) -> int:
        return len(self.tasks)

    def add(self, part: bytes) -> None:
        """The current task adds ``part`` to its message.

        Raises:
          OSError: ``EMSGSIZE``: the message would be above
            ``max_message_size``; it is dropped, parts and all.
          TypeError: ``part`` is a :class:`str`.

        """
        part = _as_bytes(part)
        task = trio.lowlevel.current_task()
        building = self.tasks.get(task)
        if building is None:
            building = self.tasks[task] = _Parts()
        nbytes = building.nbytes + len(part)
        if nbytes > self.max_message_size:
            del self.tasks[task]
            raise OSError(
                _errno.EMSGSIZE,
                f"the message being built would be {nbytes} bytes, larger than"
                f" max_message_size={self.max_message_size}; it was dropped",
            )
        building.parts.append(part)
        building.nbytes = nbytes

    def take(self, last: bytes) -> bytes:
        """The whole message: the current task's parts, then ``last``; they are taken."""
        building = self.tasks.pop(trio.lowlevel.current_task(), None)
        if building is None:
            return last
        last = _as_bytes(last)
        if building.nbytes + len(last) > self.max_message_size:
            raise OSError(
                _errno.EMSGSIZE,
                f"the message built would be {building.nbytes + len(last)} bytes, larger than"
                f" max_message_size={self.max_message_size}; it was dropped",
            )
        building.parts.append(last)
        return b"".join(building.parts)

    def abandon(self, task: trio.lowlevel.Task) -> None:
        """Forget what ``task`` was building."""
        self.tasks.pop(task, None)


@final
class Reading:
    """The rest of the messages tasks are reading with ``receive_some``."""

    __slots__ = ("tasks",)

    def __init__(self) -> None:
        self.tasks: weakref.WeakKeyDictionary[trio.lowlevel.Task, tuple[bytes, int]] = (
            weakref.WeakKeyDictionary()
        )

    def rest(self) -> tuple[bytes, int] | None:
        """The current task's message and where its unread rest starts, if any."""
        return self.tasks.get(trio.lowlevel.current_task())

    def piece(self, rest: tuple[bytes, int], max_bytes: int) -> tuple[bytes, bool]:
        """The next piece of ``rest`` (at most ``max_bytes``), and whether it ends it."""
        message, start = rest
        end = start + max_bytes
        task = trio.lowlevel.current_task()
        if end >= len(message):
            if start:
                del self.tasks[task]
                return message[start:], True
            return message, True
        self.tasks[task] = (message, end)
        return message[start:end], False

    def abandon(self, task: trio.lowlevel.Task) -> None:
        """Forget the rest ``task`` was reading."""
        self.tasks.pop(task, None)
