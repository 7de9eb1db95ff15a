"""The lab's messages on the wire: requests, replies and their framing.

Every message starts with a 4-byte big-endian length of what follows (the
mux's :class:`~trio_kcm.LengthPrefixed` parser reads it, ``adjust=4``), then
its fields, then zeros up to the workload's size.  A request carries its id
and its *cost* (its service time on a nominal worker); a reply, the id it
answers and the worker that served it.
"""

from __future__ import annotations

import struct

__all__ = ["MIN_SIZE", "frames", "reply", "reply_id", "request", "request_fields"]

#: Request: 4-byte length, request id, cost (seconds, nominal).
_REQUEST = struct.Struct(">IQd")
#: Reply: 4-byte length, request id, worker index.
_REPLY = struct.Struct(">IQH")
_HEADER = struct.Struct(">I")

#: The smallest request or reply size, in bytes: a request's header and fields.
MIN_SIZE = _REQUEST.size


def request(size: int, rid: int, cost: float) -> bytes:
    """A request of ``size`` bytes."""
    return _REQUEST.pack(size - 4, rid, cost) + bytes(size - _REQUEST.size)


def request_fields(message: bytes) -> tuple[int, float]:
    """A request's id and cost."""
    _, rid, cost = _REQUEST.unpack_from(message)
    return int(rid), float(cost)


def reply(size: int, rid: int, worker: int) -> bytes:
    """A reply of ``size`` bytes to request ``rid``, from ``worker``."""
    return _REPLY.pack(size - 4, rid, worker) + bytes(size - _REPLY.size)


def reply_id(message: bytes) -> int:
    """The id of the request a reply answers."""
    return int(_REPLY.unpack_from(message)[1])


def frames(buffer: bytearray) -> list[bytes]:
    """Take the whole messages off the front of ``buffer`` (the peer's own deframer)."""
    out: list[bytes] = []
    pos = 0
    n = len(buffer)
    while n - pos >= 4:
        (length,) = _HEADER.unpack_from(buffer, pos)
        end = pos + 4 + length
        if end > n:
            break
        out.append(bytes(buffer[pos:end]))
        pos = end
    del buffer[:pos]
    return out
