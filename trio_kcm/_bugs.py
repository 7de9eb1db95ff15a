"""Policy bugs: an exception a policy raises in a user's task crashes the mux too.

A policy is consulted synchronously, from whatever task makes the decision
necessary: a sender (pick a stream), a receiver (its socket has room again),
the application (attach, unattach, open or close a socket), or one of the
mux's own tasks.  In the mux's tasks an exception propagates out of
:func:`open_mux` by itself.  In a user's task it propagates there -- and,
through :meth:`BugReport.report`, out of :func:`open_mux` as well, so that a
broken policy is never silently survived by the mux.

The guard is written once per *entry point* (a scheduler or lifecycle method
that a user task calls), never in the methods they call in turn, so one
exception is reported once.
"""

from __future__ import annotations

from typing import final

import trio

__all__ = ["BugReport"]


async def _reraise(exc: BaseException) -> None:
    raise exc


@final
class BugReport:
    """Re-raises a policy's exception in the mux's nursery, once."""

    __slots__ = ("finished", "nursery", "reported")

    def __init__(self) -> None:
        self.nursery: trio.Nursery | None = None
        self.finished = False
        self.reported: list[BaseException] = []

    def report(self, exc: BaseException) -> None:
        """``exc`` escapes a policy call in a user's task: crash the mux with it too."""
        if isinstance(exc, (trio.Cancelled, KeyboardInterrupt)):
            return
        if any(seen is exc for seen in self.reported):
            return
        self.reported.append(exc)
        if self.nursery is not None and not self.finished:
            try:
                self.nursery.start_soon(_reraise, exc)
            except RuntimeError:  # pragma: no cover - the nursery is closing
                pass
