"""The assembler: arbitrary chunks of bytes in, whole messages out (sans-io).

The rules, in one place (the kernel's strparser, ``net/strparser/strparser.c``):

1. The parser is asked for the length of the next message with a view that
   starts at that message.  While it answers ``0`` (need more), it is asked
   again whenever more bytes arrive; once it gives a length it is not asked
   again until the next message starts.
2. An answer that is not an ``int`` (``bool`` included), is negative, is
   shorter than the parser's ``header_size``, or ends inside the bytes the
   parser already said were too few, is impossible: ``EPROTO``
   (``bad_hdr_len``).  A parser that raises :class:`BadMessage` rejects the
   header: ``EBADMSG``.  Any other exception from the parser is ``EPROTO``.
3. A length above ``max_message_size`` is refused before anything is allocated
   for it: ``EMSGSIZE`` (``msg_too_big``).  So is a message whose header is
   still incomplete after ``max_message_size`` bytes (a delimiter that never
   comes).
4. Bytes past the end of a message start the next one.
5. A message whose length is known is gathered as a list of chunks and joined
   once, so a large message costs linear time however it is chunked.  Small
   chunks are copied into a growing buffer of the assembler's own instead of
   being kept one object each, so it also costs linear *memory*: a peer that
   trickles a message a byte per read would otherwise cost ~40 bytes of object
   overhead per byte (8 MiB announced, 330 MiB held).
6. A parser with ``resume_message_length(data, seen)`` is asked that instead
   when it already answered ``0`` for the first ``seen`` bytes of the message,
   so a delimiter search goes on where it stopped (linear, not quadratic, for a
   long message arriving in many chunks).

After an error the assembler is finished: the stream it served has failed.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Callable
from typing import Any, Final

from ._errors import BadMessage
from ._parsers import LengthPrefixed, Parser

__all__ = ["Assembler", "AssemblyError"]

#: ``struct.Struct.unpack_from``.
_Unpack = Callable[[Any, int], tuple[Any, ...]]

#: Body chunks shorter than this are copied into a buffer (rule 5).
SMALL_CHUNK = 4096


class AssemblyError(Exception):
    """Internal: the byte stream cannot be split into messages any more.

    Carries what the stream's failure needs: the errno, the complete messages
    parsed before the error (they are still delivered) and the discarded bytes.
    """

    def __init__(self, errno: int, message: str, *, messages: list[bytes], partial: bytes) -> None:
        super().__init__(message)
        self.errno = errno
        self.messages = messages
        self.partial = partial


class Assembler:
    """Turns chunks of a byte stream into whole messages, with no I/O.

    Args:
      parser: What delineates messages.
      max_message_size: The largest message accepted, in bytes.

    The counters are public attributes, read by the stream's statistics:
    ``msgs``, ``bytes`` (message bytes assembled), ``need_more_hdr``,
    ``bad_hdr_len``, ``msg_too_big``.
    """

    __slots__ = (
        "_body",
        "_fixed",
        "_have",
        "_head",
        "_max",
        "_min",
        "_need",
        "_parse",
        "_resume",
        "_watermark",
        "bad_hdr_len",
        "bytes",
        "msg_too_big",
        "msgs",
        "need_more_hdr",
    )

    def __init__(self, parser: Parser, max_message_size: int) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be >= 1")
        self._parse: Final = parser.message_length
        self._resume: Final = getattr(parser, "resume_message_length", None)
        header_size = getattr(parser, "header_size", 1)
        if not isinstance(header_size, int) or header_size < 1:
            header_size = 1
        self._min = header_size
        self._max = max_message_size
        # LengthPrefixed itself (not a subclass, which may answer otherwise) is
        # read inline: (unpack_from, offset, adjust).  Same answers, no call.
        self._fixed: tuple[_Unpack, int, int] | None = None
        if type(parser) is LengthPrefixed:
            self._fixed = (parser._struct.unpack_from, parser.offset, parser.adjust)
        # Bytes of a message whose length is not known yet; starts at the message.
        self._head = bytearray()
        # Chunks of a message whose length (_need) is known; _have bytes so far.
        self._body: list[bytes | bytearray] = []
        self._have = 0
        self._need = 0
        # The longest prefix of the current message the parser said was too short.
        self._watermark = 0
        self.msgs = 0
        self.bytes = 0
        self.need_more_hdr = 0
        self.bad_hdr_len = 0
        self.msg_too_big = 0

    @property
    def inline_check(self) -> tuple[_Unpack, int, int, int] | None:
        """For a plain :class:`LengthPrefixed`: ``(unpack_from, offset, adjust, smallest)``.

        What a caller needs to check one message inline, as :meth:`is_whole`
        does; ``None`` for any other parser.
        """
        fixed = self._fixed
        return None if fixed is None else (*fixed, self._min)

    @property
    def partial_size(self) -> int:
        """Bytes received of a message that is not complete yet."""
        return len(self._head) + self._have

    @property
    def announced(self) -> int:
        """The length of the message being assembled, once its header gave it; else 0."""
        return self._need

    def take_partial(self) -> bytes:
        """Remove and return the bytes of the incomplete message."""
        if self._need:
            data = b"".join(self._body)
            self._body = []
            self._have = self._need = 0
        else:
            data = bytes(self._head)
            self._head = bytearray()
        self._watermark = 0
        return data

    def feed(self, data: bytes | bytearray) -> list[bytes]:
        """Add ``data``; return the messages it completes, in order.

        Raises:
          AssemblyError: The stream cannot be split any more (see the rules at
            the top of this module); the assembler must not be used again.

        """
        out: list[bytes] = []
        if not data:
            return out
        start = 0
        if self._need:
            room = self._need - self._have
            if len(data) < room:
                self._add_to_body(data)
                self._have += len(data)
                return out
            self._body.append(data[:room])
            message = b"".join(self._body)
            self._body = []
            self._have = self._need = 0
            out.append(message)
            self.msgs += 1
            self.bytes += len(message)
            if len(data) == room:
                return out
            start = room  # the rest of data: split in place, not copied out
        if self._head:
            # (Never after a body: a message whose length is known leaves no head.)
            self._head += data
            self._split(self._head, out)
        else:
            self._split(data, out, start)
        return out

    def _add_to_body(self, data: bytes | bytearray) -> None:
        body = self._body
        if len(data) < SMALL_CHUNK:
            # Bytearrays in _body are always the assembler's own buffers.
            if type(body[-1]) is bytearray:
                body[-1] += data
            else:
                body.append(bytearray(data))
        else:
            # Keep no reference to a caller's mutable buffer.
            body.append(data if type(data) is bytes else bytes(data))

    def is_whole(self, data: bytes | bytearray) -> bool:
        """True if ``data`` is certainly one or more whole, valid messages.

        A quick check for outgoing messages, without the side effects of
        :meth:`feed`.  ``False`` means "not known" (a parser without a fast
        path, or something wrong): :meth:`feed` then decides and explains.
        """
        fixed = self._fixed
        if fixed is None:
            return False
        unpack_from, offset, adjust = fixed
        n = len(data)
        lowest = self._min
        highest = self._max
        pos = 0
        while n - pos >= lowest:
            length: int = unpack_from(data, pos + offset)[0] + adjust
            if length < lowest or length > highest:
                return False
            pos += length
            if pos >= n:
                return pos == n
        return False

    def _split_fixed(self, buf: bytes | bytearray, out: list[bytes], start: int) -> int:
        """Take the whole, valid messages of ``buf`` from ``start``; return where they end.

        The fast path for :class:`LengthPrefixed`: anything unusual (an
        incomplete header or body, an impossible length) is left to the general
        loop of :meth:`_split`, which reports it.
        """
        assert self._fixed is not None
        unpack_from, offset, adjust = self._fixed
        n = len(buf)
        lowest = self._min
        highest = self._max
        pos = start
        append = out.append
        if type(buf) is bytes:
            while n - pos >= lowest:
                length = unpack_from(buf, pos + offset)[0] + adjust
                end = pos + length
                if length < lowest or length > highest or end > n:
                    break
                append(buf[pos:end])
                pos = end
        else:
            view = memoryview(buf)
            try:
                while n - pos >= lowest:
                    length = unpack_from(buf, pos + offset)[0] + adjust
                    end = pos + length
                    if length < lowest or length > highest or end > n:
                        break
                    append(bytes(view[pos:end]))
                    pos = end
            finally:
                view.release()
        return pos

    def _split(self, buf: bytes | bytearray, out: list[bytes], start: int = 0) -> None:
        """Take the messages of ``buf`` from ``start``; keep what is left for later."""
        parse = self._parse
        resume = self._resume
        n = len(buf)
        pos = start
        if self._fixed is not None and not self._watermark:
            first = len(out)
            pos = self._split_fixed(buf, out, start)
            if pos > start:
                self.msgs += len(out) - first
                self.bytes += pos - start
        view = memoryview(buf)
        is_bytes = type(buf) is bytes
        try:
            while pos < n:
                avail = n - pos
                try:
                    if self._watermark and resume is not None:
                        # The parser already saw the first _watermark bytes of
                        # this message (pos is 0 then): let it go on from there.
                        length = resume(view, self._watermark)
                    else:
                        length = parse(view[pos:] if pos else view)
                except BadMessage as exc:
                    raise self._error(
                        _errno.EBADMSG, f"parser rejected the header: {exc}", out, view, pos
                    ) from exc
                except Exception as exc:
                    raise self._error(
                        _errno.EPROTO, f"parser raised {type(exc).__name__}: {exc}", out, view, pos
                    ) from exc
                if type(length) is not int:
                    self.bad_hdr_len += 1
                    raise self._error(
                        _errno.EPROTO, f"parser returned {length!r}, not an int", out, view, pos
                    )
                if length == 0:
                    self.need_more_hdr += 1
                    if avail >= self._max:
                        self.msg_too_big += 1
                        raise self._error(
                            _errno.EMSGSIZE,
                            f"no complete header in {avail} bytes (max_message_size={self._max})",
                            out,
                            view,
                            pos,
                        )
                    self._watermark = avail
                    break
                if length < self._min or length <= self._watermark:
                    self.bad_hdr_len += 1
                    raise self._error(
                        _errno.EPROTO,
                        f"parser returned an impossible length {length} (after"
                        f" {self._watermark} bytes were not enough; the header is at least"
                        f" {self._min} bytes)",
                        out,
                        view,
                        pos,
                    )
                if length > self._max:
                    self.msg_too_big += 1
                    raise self._error(
                        _errno.EMSGSIZE,
                        f"message of {length} bytes announced (max_message_size={self._max})",
                        out,
                        view,
                        pos,
                    )
                self._watermark = 0
                end = pos + length
                if end > n:
                    # Known length, not all here: gather the rest chunk by chunk.
                    self._need = length
                    self._have = avail
                    self._body = [bytes(view[pos:])]
                    pos = n
                    break
                out.append(buf[pos:end] if is_bytes else bytes(view[pos:end]))  # type: ignore[arg-type]
                self.msgs += 1
                self.bytes += length
                pos = end
        finally:
            view.release()
        if pos == n:
            if self._head:
                self._head = bytearray()
        elif buf is self._head:
            del self._head[:pos]
        else:
            self._head = bytearray(buf[pos:]) if pos else bytearray(buf)

    def _error(
        self, errno: int, message: str, out: list[bytes], view: memoryview, pos: int
    ) -> AssemblyError:
        # Errors happen only while a header is parsed, never while a body is gathered.
        partial = bytes(view[pos:])
        self._head = bytearray()
        self._body = []
        self._have = self._need = self._watermark = 0
        return AssemblyError(errno, message, messages=out, partial=partial)
