"""The exceptions of trio-kcm.

Errors by blame, as in h11:

* :class:`BadMessage` -- bytes that are not a valid message under the parser: a
  peer's header the parser rejects, or an outgoing message the application got
  wrong (then it is raised by ``send`` before a byte is written).
* :class:`StreamError` -- one attached stream failed (transport error, EOF,
  hostile or broken framing).  It is posted to :meth:`Mux.errors`, never raised
  into the tasks that use the KCM sockets.
* :class:`PolicyLoadError` -- a policy name that is not installed, or a plugin
  that is broken.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._stream import AttachedStream

__all__ = ["BadMessage", "PolicyLoadError", "StreamError"]


class BadMessage(ValueError):
    """Bytes that are not a valid message under the parser.

    A parser raises it from ``message_length`` for a header it rejects; a peer
    that sends such a header fails its stream with ``EBADMSG``.  ``send`` raises
    it for an outgoing message that the mux's parser does not accept as one or
    more complete messages, before any byte of it is written.
    """


class StreamError(OSError):
    """An attached stream failed; posted to :meth:`Mux.errors`.

    It is an :class:`OSError` whose ``errno`` says why, like the error the
    kernel posts on a TCP socket attached to a KCM mux:

    ========== ==============================================================
    errno      cause
    ========== ==============================================================
    EPIPE      the transport raised, or reached end of file (the original
               exception, if any, is ``__cause__``); a write failed
    EBADMSG    the parser rejected a header (raised :class:`BadMessage`)
    EPROTO     the parser's answer is impossible: negative, not an integer,
               shorter than its own header, or the parser raised something
               other than :class:`BadMessage`
    EMSGSIZE   a message was announced larger than ``max_message_size``
    ETIMEDOUT  a message took longer than ``assembly_timeout`` to arrive
               (time held back by ``receive_memory_limit`` included)
    ENOBUFS    a message's announced length is larger than the three
               quarters of ``receive_memory_limit`` that messages may
               hold: it could never be held
    ========== ==============================================================

    Attributes:
      stream (AttachedStream): The handle of the stream that failed.
      partial_bytes (bytes): The bytes of a half-received message that were
        discarded.
      in_doubt (tuple[bytes, ...]): The messages whose write was under way when
        the stream failed: the peer may have received some of them whole.  With
        ``retry_in_doubt=True`` (the default) they were also resent on another
        stream; with ``False`` they were not, and what to do is up to you.
        Messages sent with :meth:`KCMSocket.send_to` are never resent elsewhere.
      unsent (tuple[bytes, ...]): Messages sent to this stream with
        :meth:`KCMSocket.send_to`, accepted, and not started when it failed:
        they were not sent anywhere (a reply to a peer that is gone).
      peer_closed (bool): The peer closed the stream cleanly: end of file at a
        message boundary (``errno`` is ``EPIPE``, as in the kernel, and
        ``__cause__`` is None).  False for every other failure, an end of
        file in the middle of a message included.  The mux logs a clean close
        at INFO, a failure at WARNING.

    """

    stream: AttachedStream
    partial_bytes: bytes
    in_doubt: tuple[bytes, ...]
    unsent: tuple[bytes, ...]
    peer_closed: bool

    def __init__(
        self,
        errno: int,
        strerror: str,
        *,
        stream: AttachedStream,
        partial_bytes: bytes = b"",
        in_doubt: tuple[bytes, ...] = (),
        unsent: tuple[bytes, ...] = (),
        peer_closed: bool = False,
    ) -> None:
        super().__init__(errno, strerror)
        self.stream = stream
        self.partial_bytes = partial_bytes
        self.in_doubt = in_doubt
        self.unsent = unsent
        self.peer_closed = peer_closed

    def __reduce__(self) -> str | tuple[object, ...]:  # pragma: no cover - pickling is rare
        return (OSError, (self.errno, self.strerror))


class PolicyLoadError(LookupError):
    """A load-balancing policy could not be loaded.

    Raised by :func:`load_policy` (and so by :func:`open_mux`) when no policy of
    that name is registered under the ``trio_kcm.policies`` entry-point group,
    or when the plugin that registers it fails to import or to build.  In the
    second case the plugin's own exception is ``__cause__``.

    Attributes:
      name (str): The policy name that was asked for.

    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name
