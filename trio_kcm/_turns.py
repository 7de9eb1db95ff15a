"""When a socket call that did not have to wait gives other tasks their turn.

Trio's convention is that every async call is a checkpoint: a *cancel point*
(it raises :exc:`trio.Cancelled` if the task is cancelled) and a *schedule
point* (other tasks run before it returns).  The schedule point costs a trip
through the scheduler, several microseconds, which on a one-message-at-a-time
path is most of the cost of a message.  Trio's own issue #1757 ("Skip
schedule points if we've done one recently enough") proposes the way out
that this module takes for the mux's sockets:

* ``send``, ``send_many``, ``send_to``, ``receive`` and the other receive
  calls are always cancel points;
* a call that completes without waiting is also a schedule point unless the
  mux's calls yielded less than :data:`MAX_RUN_SECONDS` ago and fewer than
  :data:`MAX_RUN_CALLS` such calls ago.

So a task that sends (or receives) in a loop yields at least once every
:data:`MAX_RUN_CALLS` calls and at least once every half millisecond of its own
running (plus one iteration of its loop); a lone call after a pause yields as
before.  "Yielded" is what this mux saw: its own schedule points and waits,
and any step of a stream's writer task (which runs only after the sending
task yielded).  A yield elsewhere that the mux did not see only makes it
yield sooner than needed.  One record serves every socket of the mux: a task
alternating between two sockets of one mux shares one budget.
"""

from __future__ import annotations

from time import perf_counter

__all__ = ["MAX_RUN_CALLS", "MAX_RUN_SECONDS", "Turns"]

#: Calls that may skip their schedule point in a row.
MAX_RUN_CALLS = 64
#: How long after the last yield calls may skip their schedule point.
MAX_RUN_SECONDS = 0.0005


class Turns:
    """One mux's record of its last yield; decides whether a call may skip one."""

    __slots__ = ("calls", "last")

    def __init__(self) -> None:
        self.calls = 0  # calls since the last yield that skipped their schedule point
        self.last = perf_counter()  # when the mux last saw a yield

    def skip(self) -> bool:
        """May the call that is completing now skip its schedule point?

        True counts it as skipped.  False means it must yield, and then call
        :meth:`yielded`.
        """
        calls = self.calls
        if calls < MAX_RUN_CALLS and perf_counter() - self.last < MAX_RUN_SECONDS:
            self.calls = calls + 1
            return True
        return False

    def yielded(self) -> None:
        """Other tasks just had their turn (a schedule point or a wait returned)."""
        self.calls = 0
        self.last = perf_counter()
