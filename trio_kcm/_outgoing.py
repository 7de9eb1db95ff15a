"""The outgoing check: what a socket may hand to the transmit scheduler.

Every message is checked before it is accepted, so that nothing a peer would
refuse is ever written: its size (``EMSGSIZE``), that it is not empty, and,
with ``validate=True``, that the mux's parser reads it as one or more whole
messages -- the same assembler rules as for incoming bytes.  No I/O, no
policy: a refusal raises in the sending task and nothing else happens.
"""

from __future__ import annotations

import errno as _errno
from collections.abc import Iterable
from typing import final

from ._assembler import Assembler, AssemblyError
from ._errors import BadMessage
from ._parsers import Parser

__all__ = ["OutgoingCheck"]


@final
class OutgoingCheck:
    """Checks and normalises outgoing messages (to :class:`bytes`)."""

    __slots__ = ("_one", "max_message_size", "validate", "validator")

    def __init__(self, parser: Parser, max_message_size: int, validate: bool) -> None:
        self.validator = Assembler(parser, max_message_size)
        self.max_message_size = max_message_size
        self.validate = validate
        # The check of one LengthPrefixed message, inline in prepare():
        # (unpack_from, offset, adjust, smallest message), or None.
        self._one = self.validator.inline_check if validate else None

    def prepare(self, message: bytes) -> bytes:
        """Return ``message`` as :class:`bytes` once it passed the check.

        Raises:
          TypeError: ``message`` is a :class:`str`, or not bytes-like.
          OSError: ``EMSGSIZE``: above ``max_message_size``.
          ValueError: ``message`` is empty.
          BadMessage: The parser does not read it as whole messages.

        """
        one = self._one
        if one is not None and type(message) is bytes:
            # The common case inline: one LengthPrefixed message, as bytes.
            n = len(message)
            if one[3] <= n <= self.max_message_size and one[0](message, one[1])[0] + one[2] == n:
                return message
        return self._prepare_any(message)

    def _prepare_any(self, message: bytes) -> bytes:
        if type(message) is bytes:
            n = len(message)
        else:
            if isinstance(message, str):
                raise TypeError("messages are bytes, not str")
            # memoryview: only the buffer protocol (bytes(12) would be 12 zeros).
            view = memoryview(message)
            n = view.nbytes
            if n <= self.max_message_size:
                message = view.tobytes()
        if n > self.max_message_size:
            raise OSError(
                _errno.EMSGSIZE,
                f"message of {n} bytes is larger than max_message_size={self.max_message_size}",
            )
        if not n:
            raise ValueError("KCM cannot send an empty message")
        if self.validate and not self.validator.is_whole(message):
            self._check(message)
        return message

    def prepare_many(self, messages: Iterable[bytes]) -> tuple[list[bytes], int]:
        """:meth:`prepare` each message; return them and their total size."""
        if isinstance(messages, (bytes, bytearray, memoryview, str)):
            raise TypeError("send_many takes an iterable of messages, not one message")
        one = self._one
        if one is None:
            prepared = [self.prepare(m) for m in messages]
            return prepared, sum(map(len, prepared))
        # The common case inline (LengthPrefixed, bytes, one message each);
        # anything else goes through prepare, which checks and explains.
        unpack_from, offset, adjust, lowest = one
        highest = self.max_message_size
        prepare = self.prepare
        prepared = []
        append = prepared.append
        nbytes = 0
        for m in messages:
            n = len(m) if type(m) is bytes else -1
            if not (lowest <= n <= highest and unpack_from(m, offset)[0] + adjust == n):
                m = prepare(m)
                n = len(m)
            append(m)
            nbytes += n
        return prepared, nbytes

    def _check(self, message: bytes) -> None:
        """Refuse a message that is not a sequence of complete messages."""
        validator = self.validator
        try:
            validator.feed(message)
        except AssemblyError as exc:
            raise BadMessage(f"not a valid message: {exc}") from (exc.__cause__ or exc)
        if validator.partial_size:
            left = validator.take_partial()
            raise BadMessage(
                f"incomplete message: {len(left)} bytes at offset {len(message) - len(left)}"
                " do not make a whole message"
            )
