"""Serving: attach one accepted connection and wait until the mux is done with it.

``Mux.serve_stream`` is a handler in Trio's idiom (``trio.serve_tcp``,
``trio.serve_listeners``): Trio closes the stream when the handler returns,
so the handler must stay until the mux no longer needs the stream.

    [handshake(stream) -> read-ahead bytes] -> attach(stream, unread_data=...)
      -> wait until the stream left the mux (failed, unattached, mux closed)
      -> return (Trio closes the stream)

A handshake that raises (or outlasts its timeout) drops that connection
alone: the error is logged and the handler returns, so the server goes on.
A handler cancelled while its stream is attached fails that stream (its
messages go elsewhere, as for any failure) before Trio closes it.
"""

from __future__ import annotations

import errno as _errno
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from ._stream import life_of

if TYPE_CHECKING:
    from ._lifecycle import Lifecycle
    from ._mux import Mux
    from ._parsers import ParserLike

__all__ = ["Handshake", "serve_stream"]

logger = logging.getLogger("trio_kcm")

#: Reads a connection's preamble; returns the bytes it read past it (or None).
Handshake = Callable[[trio.abc.Stream], Awaitable["bytes | bytearray | None"]]


async def serve_stream(
    mux: Mux,
    lifecycle: Lifecycle,
    stream: trio.abc.Stream,
    *,
    handshake: Handshake | None,
    handshake_timeout: float | None,
    parser: ParserLike | None,
    max_message_size: int | None,
    assembly_timeout: float | None,
) -> None:
    """:meth:`Mux.serve_stream` (see its docstring)."""
    unread: bytes | bytearray | None = b""
    if handshake is not None:
        limit = float("inf") if handshake_timeout is None else handshake_timeout
        try:
            with trio.fail_after(limit):
                unread = await handshake(stream)
        except Exception as exc:  # the peer's doing: this connection alone goes
            logger.warning("handshake failed, connection dropped: %r", exc)
            await trio.aclose_forcefully(stream)
            return
    try:
        handle = mux.attach(
            stream,
            unread_data=unread or b"",
            parser=parser,
            max_message_size=max_message_size,
            assembly_timeout=assembly_timeout,
        )
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    try:
        await lifecycle.wait_ended(handle)
    except BaseException:
        # Cancelled (the server is stopping): Trio closes the stream next, so
        # it leaves the mux now, as a failure, and its messages go elsewhere.
        lifecycle.fail(life_of(handle), _errno.EPIPE, "its serve_stream() handler was cancelled")
        raise
