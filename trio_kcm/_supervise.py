"""Supervised streams: keep M streams attached, reconnecting with backoff.

The supervisor is a task of the application's (``await mux.supervise(...)``,
run in a nursery, ideally with ``nursery.start``), not of the mux: cancelling
it stops the reconnecting and nothing else.  It runs one loop per slot:

    connect() -> attach -> wait until the stream has ended (left the mux, or
                           failed with its tasks done)
      -> failed: (unattach and) close it, back off, connect again
      -> unattached by the application: connect again at once
      -> the mux closes: return

A ``connect()`` that raises :exc:`OSError` (refused, unreachable, a TLS
error), :exc:`trio.BrokenResourceError` (e.g. a failed TLS handshake) or
times out is retried after a backoff; anything else is a bug and propagates.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from ._events import ReconnectScheduled
from ._stats import StreamState

if TYPE_CHECKING:
    from ._lifecycle import Lifecycle
    from ._mux import Mux
    from ._stream import AttachedStream

__all__ = ["Backoff"]

logger = logging.getLogger("trio_kcm")

#: What a failed ``connect()`` may raise; anything else propagates.
CONNECT_ERRORS = (OSError, trio.BrokenResourceError, trio.TooSlowError)


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long :meth:`Mux.supervise` waits before it reconnects.

    Exponential backoff with jitter, like ZeroMQ's ``ZMQ_RECONNECT_IVL`` and
    ``ZMQ_RECONNECT_IVL_MAX`` or gRPC's connection backoff: after the *n*-th
    failure in a row the delay is ``initial * multiplier ** (n - 1)``, at
    most ``maximum``, scaled by a random factor between ``1 - jitter`` and
    ``1 + jitter`` (so that many clients do not reconnect in step), and
    never above ``maximum``.

    A failure is a ``connect()`` that raised or timed out, or a stream that
    failed less than ``reset_after`` seconds after it was attached.  A stream
    that lived longer starts a new run: its replacement waits ``initial``
    (jittered).

    Attributes:
      initial (float): The first delay, in seconds.
      maximum (float): The largest delay, in seconds.
      multiplier (float): Each failure in a row multiplies the delay by this.
      jitter (float): The random spread, as a fraction of the delay (0: none).
      reset_after (float): Seconds a stream must stay attached for its failure
        to start a new run.

    Raises:
      ValueError: A delay is negative, ``maximum < initial``,
        ``multiplier < 1``, or ``jitter`` is not in [0, 1].

    """

    initial: float = 0.1
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2
    reset_after: float = 10.0

    def __post_init__(self) -> None:
        if not (self.initial >= 0 and self.maximum >= self.initial):
            raise ValueError("backoff delays must satisfy 0 <= initial <= maximum")
        if not self.multiplier >= 1:
            raise ValueError("backoff multiplier must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff jitter must be between 0 and 1")
        if not self.reset_after >= 0:
            raise ValueError("backoff reset_after must be >= 0")

    def delay(self, failures: int, /) -> float:
        """The delay, in seconds, after ``failures`` failures in a row (>= 1)."""
        try:
            base = min(self.maximum, self.initial * self.multiplier ** max(failures - 1, 0))
        except OverflowError:
            base = self.maximum
        spread = 1.0 + self.jitter * (2.0 * random.random() - 1.0)
        return min(self.maximum, base * spread)


#: The backoff supervise() uses when given none.
DEFAULT_BACKOFF = Backoff()


async def supervise(
    mux: Mux,
    lifecycle: Lifecycle,
    connect: Callable[[], Awaitable[trio.abc.Stream]],
    *,
    count: int,
    backoff: Backoff,
    connect_timeout: float | None,
    task_status: trio.TaskStatus[None],
) -> None:
    if count < 1:
        raise ValueError("count must be >= 1")
    if connect_timeout is not None and not connect_timeout > 0:
        raise ValueError(f"connect_timeout must be None or > 0, not {connect_timeout!r}")
    if lifecycle.closing:
        raise trio.ClosedResourceError("the mux is closed")
    waiting = set(range(count))  # slots that have not attached a stream yet

    def attached(slot: int) -> None:
        if slot in waiting:
            waiting.discard(slot)
            if not waiting:
                task_status.started()

    async with trio.open_nursery() as nursery:

        async def stop_when_the_mux_closes() -> None:
            await lifecycle.closing_event.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(stop_when_the_mux_closes)
        for slot in range(count):
            nursery.start_soon(
                _keep_one, mux, lifecycle, connect, slot, backoff, connect_timeout, attached
            )


async def _keep_one(
    mux: Mux,
    lifecycle: Lifecycle,
    connect: Callable[[], Awaitable[trio.abc.Stream]],
    slot: int,
    backoff: Backoff,
    connect_timeout: float | None,
    attached: Callable[[int], None],
) -> None:
    """One slot: connect, attach, wait for the end, back off, again."""
    failures = 0
    while True:
        try:
            with trio.fail_after(connect_timeout) if connect_timeout else contextlib.nullcontext():
                stream = await connect()
        except CONNECT_ERRORS as exc:
            failures += 1
            delay = backoff.delay(failures)
            logger.info("supervise: connect() failed: %r; retrying in %.3g s", exc, delay)
            _schedule(lifecycle, None, failures, delay, exc)
            await trio.sleep(delay)
            continue
        try:
            handle = mux.attach(stream)
        except trio.ClosedResourceError:
            await trio.aclose_forcefully(stream)
            return
        attached(slot)
        since = trio.current_time()
        await lifecycle.wait_ended(handle)
        if lifecycle.closing:
            return
        if handle.state is StreamState.FAILED:
            if handle in lifecycle.streams:
                # auto_close=False: closing is the application's job, i.e. ours.
                await trio.aclose_forcefully(await mux.unattach(handle))
            if trio.current_time() - since >= backoff.reset_after:
                failures = 0
            failures += 1
            delay = backoff.delay(failures)
            _schedule(lifecycle, handle, failures, delay, lifecycle.error_of(handle))
            await trio.sleep(delay)
        else:
            # The application unattached it: replace it at once.
            failures = 0
            _schedule(lifecycle, handle, 0, 0.0, None)
            await trio.lowlevel.checkpoint()


def _schedule(
    lifecycle: Lifecycle,
    stream: AttachedStream | None,
    failures: int,
    delay: float,
    cause: BaseException | None,
) -> None:
    lifecycle.events.put(ReconnectScheduled(stream, failures, delay, cause, trio.current_time()))
