"""The events of :meth:`Mux.events`: what happened to which stream, and when.

ZeroMQ's socket monitor, with the peer's identity it lacks: every event names
the :class:`AttachedStream` it is about (the handle :meth:`Mux.attach`
returned, the one :meth:`KCMSocket.receive_from` gives and
:meth:`KCMSocket.send_to` takes).  Events are frozen dataclasses; match them
by class::

    async for event in mux.events():
        match event:
            case trio_kcm.StreamFailed(stream=s, error=e):
                log.warning("psock-%d failed: %s", s.index, e)
            case trio_kcm.ReconnectScheduled(delay=d):
                log.info("reconnecting in %.1f s", d)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._errors import StreamError
    from ._stream import AttachedStream

__all__ = [
    "MuxEvent",
    "ReconnectScheduled",
    "StreamAttached",
    "StreamFailed",
    "StreamResumed",
    "StreamStalled",
    "StreamUnattached",
]


@dataclass(frozen=True, slots=True)
class MuxEvent:
    """Base class of the events :meth:`Mux.events` yields."""


@dataclass(frozen=True, slots=True)
class StreamAttached(MuxEvent):
    """A stream was attached (by :meth:`Mux.attach`, or by :meth:`Mux.supervise`)."""

    #: Its handle.
    stream: AttachedStream
    #: :func:`trio.current_time` when it happened.
    time: float


@dataclass(frozen=True, slots=True)
class StreamFailed(MuxEvent):
    """A stream failed; the same :class:`StreamError` goes to :meth:`Mux.errors`."""

    #: Its handle.
    stream: AttachedStream
    #: Why, with the messages in doubt or unsent.
    error: StreamError
    #: :func:`trio.current_time` when it happened.
    time: float


@dataclass(frozen=True, slots=True)
class StreamUnattached(MuxEvent):
    """A stream left the mux.

    Explicitly (:meth:`Mux.unattach`, which hands it back open), or closed by
    the mux: a failed stream with ``auto_close=True``, or every stream when
    the mux closes.
    """

    #: Its handle (its state says whether it had failed).
    stream: AttachedStream
    #: Whether the mux closes it (``False``: it was handed back).
    closed: bool
    #: :func:`trio.current_time` when it happened.
    time: float


@dataclass(frozen=True, slots=True)
class StreamStalled(MuxEvent):
    """A write made no progress for ``tx_stall_timeout`` seconds.

    The stream stays attached, but the transmit policy no longer gets it, and
    the messages queued on it that had not started moved to other streams
    (those sent to it with :meth:`KCMSocket.send_to` stay).
    """

    #: Its handle.
    stream: AttachedStream
    #: Messages moved to other streams.
    moved: int
    #: :func:`trio.current_time` when it happened.
    time: float


@dataclass(frozen=True, slots=True)
class StreamResumed(MuxEvent):
    """The write of a stalled stream completed: the policy gets it again."""

    #: Its handle.
    stream: AttachedStream
    #: Seconds since it was reported stalled.
    stalled_for: float
    #: :func:`trio.current_time` when it happened.
    time: float


@dataclass(frozen=True, slots=True)
class ReconnectScheduled(MuxEvent):
    """:meth:`Mux.supervise` will call ``connect()`` again after ``delay`` seconds."""

    #: The stream being replaced, or ``None`` after a failed ``connect()``.
    stream: AttachedStream | None
    #: Failed attempts in a row, this one included (0 when the stream was
    #: unattached by the application, which is replaced at once).
    attempt: int
    #: Seconds until the next ``connect()``, backoff and jitter included.
    delay: float
    #: What failed: the stream's :class:`StreamError`, the exception
    #: ``connect()`` raised, or ``None``.
    cause: BaseException | None
    #: :func:`trio.current_time` when it happened.
    time: float
