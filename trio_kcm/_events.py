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
    """A stream was attached (by :meth:`Mux.attach`, or by :meth:`Mux.supervise`).

    Attributes:
      stream (AttachedStream): Its handle.
      time (float): :func:`trio.current_time` when it happened.

    """

    stream: AttachedStream
    time: float


@dataclass(frozen=True, slots=True)
class StreamFailed(MuxEvent):
    """A stream failed; the same :class:`StreamError` goes to :meth:`Mux.errors`.

    Attributes:
      stream (AttachedStream): Its handle.
      error (StreamError): Why, with the messages in doubt or unsent.
      time (float): :func:`trio.current_time` when it happened.

    """

    stream: AttachedStream
    error: StreamError
    time: float


@dataclass(frozen=True, slots=True)
class StreamUnattached(MuxEvent):
    """A stream left the mux.

    Explicitly (:meth:`Mux.unattach`, which hands it back open), or closed by
    the mux: a failed stream with ``auto_close=True``, or every stream when
    the mux closes.

    Attributes:
      stream (AttachedStream): Its handle (its state says whether it had failed).
      closed (bool): Whether the mux closes it (``False``: it was handed back).
      time (float): :func:`trio.current_time` when it happened.

    """

    stream: AttachedStream
    closed: bool
    time: float


@dataclass(frozen=True, slots=True)
class StreamStalled(MuxEvent):
    """A write made no progress for ``tx_stall_timeout`` seconds.

    The stream stays attached, but the transmit policy no longer gets it, and
    the messages queued on it that had not started moved to other streams
    (those sent to it with :meth:`KCMSocket.send_to` stay).

    Attributes:
      stream (AttachedStream): Its handle.
      moved (int): Messages moved to other streams.
      time (float): :func:`trio.current_time` when it happened.

    """

    stream: AttachedStream
    moved: int
    time: float


@dataclass(frozen=True, slots=True)
class StreamResumed(MuxEvent):
    """The write of a stalled stream completed: the policy gets it again.

    Attributes:
      stream (AttachedStream): Its handle.
      stalled_for (float): Seconds since it was reported stalled.
      time (float): :func:`trio.current_time` when it happened.

    """

    stream: AttachedStream
    stalled_for: float
    time: float


@dataclass(frozen=True, slots=True)
class ReconnectScheduled(MuxEvent):
    """:meth:`Mux.supervise` will call ``connect()`` again after ``delay`` seconds.

    Attributes:
      stream (AttachedStream | None): The stream being replaced, or ``None`` after a failed
        ``connect()``.
      attempt (int): Failed attempts in a row, this one included (0 when the stream was unattached
        by the application, which is replaced at once).
      delay (float): Seconds until the next ``connect()``, backoff and jitter included.
      cause (BaseException | None): What failed: the stream's :class:`StreamError`, the exception
        ``connect()`` raised, or ``None``.
      time (float): :func:`trio.current_time` when it happened.

    """

    stream: AttachedStream | None
    attempt: int
    delay: float
    cause: BaseException | None
    time: float
