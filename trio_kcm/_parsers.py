"""Message delineation: the parser protocol and the two built-in parsers.

A parser plays the part of the kernel's BPF program.  Given the bytes received
so far for the next message -- always a view that *starts* at that message --
it answers with the message's full length (header included), ``0`` when it
needs more bytes to tell, or raises :class:`BadMessage` for a header it
rejects.  It must be pure: the same bytes always give the same answer.
"""

from __future__ import annotations

import operator
import struct
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ._errors import BadMessage

__all__ = ["Delimited", "LengthPrefixed", "Parser", "ParserLike", "as_parser"]


@runtime_checkable
class Parser(Protocol):
    """What a parser implements: one method, :meth:`message_length`.

    A parser may also have an integer attribute ``header_size``: the number of
    bytes it needs before it can answer.  The assembler then treats a length
    shorter than that as impossible (``EPROTO``), as it does a negative length or
    one that is not an integer.  Without it, the assembler still refuses a
    length that ends inside bytes the parser already said were not enough.

    And it may have ``resume_message_length(data, seen)``: the same answer,
    given that it already answered ``0`` for the first ``seen`` bytes of
    ``data``, so that a search can go on where it stopped (see
    :class:`Delimited`).
    """

    def message_length(self, data: memoryview, /) -> int:
        """Return the full length of the message that starts ``data``.

        Args:
          data: The bytes received so far, starting at the first byte of the
            message.  It may hold more than one message; look only at the
            header.  Do not keep a reference to it.

        Returns:
          The message's length in bytes, header included (``> 0``), or ``0``
          when ``data`` is too short to tell.

        Raises:
          BadMessage: The header is not valid.

        """
        ...


#: A parser object, or a plain callable ``(memoryview) -> int`` with the
#: semantics of :meth:`Parser.message_length`.
ParserLike = Parser | Callable[[memoryview], int]


class _CallableParser:
    __slots__ = ("_func", "header_size", "message_length")

    def __init__(self, func: Callable[[memoryview], int]) -> None:
        self._func = func
        self.message_length = func
        # A plain callable may carry ``header_size`` as a parser object does
        # (a function attribute, or a callable object's): it means the same.
        header_size = getattr(func, "header_size", None)
        if header_size is not None:
            self.header_size = header_size

    def __repr__(self) -> str:
        return f"<parser {self._func!r}>"


def as_parser(parser: ParserLike) -> Parser:
    """Return ``parser`` as an object with a ``message_length`` method.

    Raises:
      TypeError: ``parser`` is neither a :class:`Parser` nor a callable.

    """
    if isinstance(parser, Parser):
        return parser
    if callable(parser):
        return _CallableParser(parser)
    raise TypeError(f"a parser must have message_length() or be callable, not {parser!r}")


class LengthPrefixed:
    """Messages with a fixed-size binary length field.

    The field is a :mod:`struct` format holding one unsigned or signed integer,
    at byte ``offset`` of the message.  The message's total length is the
    field's value plus ``adjust``.  The kernel document's Thrift framed example,
    a 4-byte big-endian payload length, is ``LengthPrefixed(">I", adjust=4)``;
    a field that already counts the whole message is ``LengthPrefixed(">I")``.

    Args:
      format: A :mod:`struct` format for exactly one integer, e.g. ``">I"``,
        ``"<H"``, ``"!Q"``.  Give a byte order (``>``, ``<``, ``!``, ``=``):
        native alignment makes no sense on the wire.
      offset: Where the field starts in the message.
      adjust: Added to the field's value to give the message's total length.

    Attributes:
      header_size (int): ``offset`` plus the field's size: the bytes needed to
        answer, and the shortest possible message.

    """

    __slots__ = ("_struct", "adjust", "format", "header_size", "offset")

    def __init__(self, format: str, offset: int = 0, adjust: int = 0) -> None:
        try:
            s = struct.Struct(format)
        except struct.error as exc:
            raise ValueError(f"bad struct format {format!r}: {exc}") from None
        if format[:1] not in ("<", ">", "!", "="):
            raise ValueError(f"give the length field a byte order, e.g. '>{format}'")
        try:
            fields = s.unpack(bytes(s.size))
        except struct.error:  # pragma: no cover - unpack of zeros cannot fail
            fields = ()
        if len(fields) != 1 or not isinstance(fields[0], int) or isinstance(fields[0], bool):
            raise ValueError(f"format {format!r} must describe exactly one integer field")
        offset = operator.index(offset)
        adjust = operator.index(adjust)
        if offset < 0:
            raise ValueError("offset must be >= 0")
        self.format = format
        self.offset = offset
        self.adjust = adjust
        self._struct = s
        self.header_size = offset + s.size

    def message_length(self, data: memoryview, /) -> int:
        """The field's value plus ``adjust``; ``0`` until the field is complete.

        A complete field that announces ``0`` or less gives ``-1``: an impossible
        length, never "need more".
        """
        if len(data) < self.header_size:
            return 0
        length: int = self._struct.unpack_from(data, self.offset)[0] + self.adjust
        # A complete header announcing 0 (or less) must not read as "need more".
        return length if length > 0 else -1

    def frame(self, payload: bytes, /) -> bytes:
        """Return ``payload`` with this parser's header in front of it.

        Bytes before the field (``offset`` of them) are zero.

        Raises:
          BadMessage: The length does not fit the field.

        """
        value = self.header_size + len(payload) - self.adjust
        try:
            header = self._struct.pack(value)
        except struct.error as exc:
            raise BadMessage(
                f"a payload of {len(payload)} bytes does not fit {self.format!r}: {exc}"
            ) from None
        return bytes(self.offset) + header + payload if self.offset else header + payload

    def __repr__(self) -> str:
        return f"LengthPrefixed({self.format!r}, offset={self.offset}, adjust={self.adjust})"


class Delimited:
    """Messages that end with a delimiter, e.g. ``b"\\r\\n"`` for a line protocol.

    The delimiter is part of the message (the kernel delivers the header too).
    A message with no delimiter can grow only to ``max_message_size``: then its
    stream fails with ``EMSGSIZE``.

    Args:
      delimiter: The non-empty byte string that ends every message.

    Attributes:
      header_size (int): The delimiter's length: the shortest possible message.

    """

    __slots__ = ("delimiter", "header_size")

    def __init__(self, delimiter: bytes) -> None:
        if not isinstance(delimiter, bytes) or not delimiter:
            raise ValueError("the delimiter must be a non-empty bytes object")
        self.delimiter = delimiter
        self.header_size = len(delimiter)

    def message_length(self, data: memoryview, /) -> int:
        """The offset just past the first delimiter; ``0`` if there is none yet."""
        delimiter = self.delimiter
        obj = data.obj
        n = len(data)
        if isinstance(obj, (bytes, bytearray)) and len(obj) == n:
            # The view is the whole buffer: search it in place.
            i = obj.find(delimiter)
            return 0 if i < 0 else i + len(delimiter)
        # Search growing windows, so finding a delimiter costs O(message length)
        # however much data follows the message.
        k = 256
        while True:
            i = bytes(data[:k]).find(delimiter)
            if i >= 0:
                return i + len(delimiter)
            if k >= n:
                return 0
            k *= 4

    def resume_message_length(self, data: memoryview, seen: int, /) -> int:
        """:meth:`message_length`, knowing the first ``seen`` bytes hold no delimiter.

        The assembler calls this while a long message arrives in pieces, so the
        search does not start again from the message's first byte each time.
        """
        delimiter = self.delimiter
        start = max(0, seen - len(delimiter) + 1)
        obj = data.obj
        if isinstance(obj, (bytes, bytearray)) and len(obj) == len(data):
            i = obj.find(delimiter, start)
        else:
            i = bytes(data[start:]).find(delimiter)
            i = i if i < 0 else i + start
        return 0 if i < 0 else i + len(delimiter)

    def frame(self, payload: bytes, /) -> bytes:
        """Return ``payload`` followed by the delimiter.

        Raises:
          BadMessage: The payload contains the delimiter (or would, joined to it).

        """
        message = payload + self.delimiter
        # Also refuses a payload whose end, with the start of the delimiter,
        # forms an earlier delimiter (b"x\r\n" + b"\r\n\r\n").
        if message.find(self.delimiter) != len(payload):
            raise BadMessage("the payload contains the delimiter")
        return message

    def __repr__(self) -> str:
        return f"Delimited({self.delimiter!r})"
