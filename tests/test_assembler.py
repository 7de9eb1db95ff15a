"""The assembler: chunks of a byte stream in, whole messages out (sans-io).

Streams are built, and split into messages, by independent reference framers
(plain :mod:`struct` and :meth:`bytes.find`), never by the code under test.
"""

from __future__ import annotations

import errno
import random
import struct
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_kcm import BadMessage, Delimited, LengthPrefixed
from trio_kcm._assembler import Assembler, AssemblyError
from trio_kcm._parsers import Parser, as_parser

STREAM_ERRNOS = {errno.EBADMSG, errno.EPROTO, errno.EMSGSIZE}


# --------------------------------------------------------------------------
# Helpers


def lp_frame(fmt: str, offset: int, adjust: int, payload: bytes) -> bytes:
    """Reference framer for a length field: ``offset`` zeros, the field, the payload."""
    size = struct.calcsize(fmt)
    total = offset + size + len(payload)
    return bytes(offset) + struct.pack(fmt, total - adjust) + payload


def delimited_split(stream: bytes, delimiter: bytes) -> tuple[list[bytes], bytes]:
    """Reference deframer for a delimiter: each message ends at the first delimiter."""
    out = []
    pos = 0
    while True:
        i = stream.find(delimiter, pos)
        if i < 0:
            return out, stream[pos:]
        end = i + len(delimiter)
        out.append(stream[pos:end])
        pos = end


@dataclass
class Call:
    size: int  # len(data)
    head: bytes  # the first bytes of data
    answer: object


@dataclass
class Counting:
    """Wraps a parser; records every call.  Keeps the inner ``header_size``."""

    inner: Callable[[memoryview], object]
    header_size: int | None = None
    calls: list[Call] = field(default_factory=list)

    def message_length(self, data: memoryview, /) -> int:
        answer = self.inner(data)
        self.calls.append(Call(len(data), bytes(data[:16]), answer))
        return answer  # type: ignore[return-value]

    @property
    def zero_answers(self) -> int:
        return sum(1 for c in self.calls if c.answer == 0)

    @property
    def length_answers(self) -> int:
        return sum(1 for c in self.calls if c.answer != 0)


def counting(parser: Parser) -> Counting:
    return Counting(parser.message_length, getattr(parser, "header_size", None))


def parser_with(answer: object, *, header_size: int | None = None, need: int = 0) -> Parser:
    """A parser that needs ``need`` bytes, then answers ``answer``."""

    def message_length(data: memoryview) -> int:
        return 0 if len(data) < need else answer  # type: ignore[return-value]

    if header_size is None:
        return as_parser(message_length)
    return Counting(message_length, header_size)


def chunks_of(data: bytes, sizes: Iterator[int]) -> Iterator[bytes]:
    pos = 0
    while pos < len(data):
        n = next(sizes)
        yield data[pos : pos + n]
        pos += n


def random_sizes(seed: int, lo: int, hi: int) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randint(lo, hi)


def feed_all(asm: Assembler, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(asm.feed(chunk))
    return out


P = LengthPrefixed(">I", adjust=4)


def frame(payload: bytes) -> bytes:
    return lp_frame(">I", 0, 4, payload)


# --------------------------------------------------------------------------
# Any chunking gives the same messages


LP_CONFIGS = [
    (">I", 0, 4),
    (">I", 0, 0),
    ("<H", 0, 0),
    ("!Q", 3, 11),
    (">i", 0, -3),
    (">b", 0, 100),  # signed, with negative fields for short messages
    (">B", 1, 2),
]
DELIMITERS = [b"\n", b"\r\n", b"\r\n\r\n", b"aba"]


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[Parser, list[bytes], bytes]:
    """A parser, the messages of a valid stream under it, and the stream."""
    payloads = draw(
        st.lists(
            st.lists(st.sampled_from([b"a", b"b", b"\r", b"\n", b"x", b"\x00"]), max_size=40).map(
                b"".join
            ),
            min_size=1,
            max_size=12,
        )
    )
    if draw(st.booleans()):
        fmt, offset, adjust = draw(st.sampled_from(LP_CONFIGS))
        parser: Parser = LengthPrefixed(fmt, offset=offset, adjust=adjust)
        messages = [lp_frame(fmt, offset, adjust, p) for p in payloads]
        stream = b"".join(messages)
    else:
        delimiter = draw(st.sampled_from(DELIMITERS))
        parser = Delimited(delimiter)
        stream = b"".join(p + delimiter for p in payloads)
        # The payloads may hold delimiters: the reference deframer says where
        # the messages really end.  A self-overlapping delimiter (b"aba") may
        # leave a tail that is not a message: drop it.
        messages, rest = delimited_split(stream, delimiter)
        stream = stream[: len(stream) - len(rest)]
    return parser, messages, stream


@given(case=valid_streams(), data=st.data())
@settings(max_examples=300, deadline=None)
def test_any_chunking_gives_the_same_messages(
    case: tuple[Parser, list[bytes], bytes], data: st.DataObject
) -> None:
    parser, messages, stream = case
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=30), label="cuts")
    bounds = [0, *sorted(set(cuts)), len(stream)]
    kinds = data.draw(st.lists(st.sampled_from([bytes, bytearray]), min_size=len(bounds)))
    chunks = [kinds[i](stream[a:b]) for i, (a, b) in enumerate(pairwise(bounds))]

    spy = counting(parser)
    # The largest message exactly fits.
    asm = Assembler(spy, max(len(m) for m in messages))
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(asm.feed(chunk))
        assert asm.msgs == len(out)
        assert asm.bytes == sum(map(len, out))

    assert out == messages
    assert all(type(m) is bytes for m in out)
    assert asm.msgs == len(messages)
    assert asm.bytes == len(stream)
    assert asm.partial_size == 0
    assert asm.take_partial() == b""
    assert (asm.bad_hdr_len, asm.msg_too_big) == (0, 0)
    assert asm.need_more_hdr == spy.zero_answers

    # One length answer per message; every call sees a view that starts at the
    # message being parsed, and the parser is not asked again once it answered.
    assert spy.length_answers == len(messages)
    starts = [0]
    for m in messages:
        starts.append(starts[-1] + len(m))
    i = 0
    for call in spy.calls:
        start = starts[i]
        assert 0 < call.size <= len(stream) - start
        assert call.head == stream[start : start + min(16, call.size)]
        if call.answer:
            assert call.answer == len(messages[i])
            i += 1
        else:
            assert call.size < len(messages[i])


# --------------------------------------------------------------------------
# Random bytes never break the assembler


def first_byte_parser(data: memoryview) -> int:
    """No header_size: 0xFF is rejected, 0xFE raises something else, else the value."""
    if data[0] == 0xFF:
        raise BadMessage("0xff")
    if data[0] == 0xFE:
        raise KeyError("0xfe")
    if data[0] == 0xFD:
        return -1
    if data[0] == 0xFC:
        return 0 if len(data) < 4 else 2  # ends inside bytes that were too few
    return data[0]


RANDOM_PARSERS: list[Parser] = [
    LengthPrefixed(">B"),
    LengthPrefixed(">b", adjust=3),
    LengthPrefixed(">H", adjust=-5),
    LengthPrefixed("<i", offset=1),
    LengthPrefixed(">I", adjust=4),
    Delimited(b"\n"),
    Delimited(b"\r\n"),
    as_parser(first_byte_parser),
]


@given(
    parser=st.sampled_from(RANDOM_PARSERS),
    chunks=st.lists(
        st.binary(max_size=64) | st.binary(max_size=64).map(bytearray), min_size=1, max_size=20
    ),
    max_size=st.integers(1, 300),
)
@settings(max_examples=400, deadline=None)
def test_random_bytes_raise_only_assembly_errors(
    parser: Parser, chunks: list[bytes], max_size: int
) -> None:
    asm = Assembler(parser, max_size)
    out: list[bytes] = []
    fed = b""
    for chunk in chunks:
        fed += chunk
        try:
            out.extend(asm.feed(chunk))
        except AssemblyError as exc:
            assert exc.errno in STREAM_ERRNOS
            # Nothing is lost or duplicated: the messages, then the discarded bytes.
            assert b"".join(out + exc.messages) + exc.partial == fed
            assert all(type(m) is bytes and 0 < len(m) <= max_size for m in exc.messages)
            if exc.errno == errno.EMSGSIZE:
                assert asm.msg_too_big == 1
            return
        # Without an error, the messages and the partial message are all the bytes.
        assert sum(map(len, out)) + asm.partial_size == len(fed)
    assert all(type(m) is bytes and 0 < len(m) <= max_size for m in out)
    assert b"".join(out) + asm.take_partial() == fed
    assert asm.partial_size == 0


# --------------------------------------------------------------------------
# The parser is asked once per message, not once per chunk


@pytest.mark.parametrize("seed", [1, 2])
def test_parser_called_once_per_message_start(seed: int) -> None:
    messages = [frame(b"a" * (1 << 20)), frame(b"small"), frame(b""), frame(b"b" * (1 << 20))]
    stream = b"".join(messages)
    chunks = list(chunks_of(stream, random_sizes(seed, 1, 4096)))
    assert len(chunks) > 500
    spy = counting(P)
    asm = Assembler(spy, 2 << 20)
    assert feed_all(asm, chunks) == messages
    assert spy.length_answers == len(messages)
    # At most header_size - 1 "need more" answers per message, however many chunks.
    assert spy.zero_answers <= len(messages) * (P.header_size - 1)
    assert len(spy.calls) <= len(messages) * P.header_size


def test_parser_not_called_again_for_one_byte_chunks() -> None:
    message = frame(bytes(range(256)) * 256)  # 64 KiB
    spy = counting(P)
    asm = Assembler(spy, 1 << 20)
    out = feed_all(asm, [message[i : i + 1] for i in range(len(message))])
    assert out == [message]
    # Three answers of "need more" while the header arrives, then one length.
    assert [c.answer for c in spy.calls] == [0, 0, 0, len(message)]
    assert asm.need_more_hdr == 3


# --------------------------------------------------------------------------
# A large message costs linear time and memory


def test_16_mib_message_in_1_kib_chunks_is_linear() -> None:
    size = 16 << 20
    message = frame(bytes(range(256)) * (size // 256 - 1) + b"x" * 252)
    assert len(message) == size
    chunks = [message[i : i + 1024] for i in range(0, size, 1024)]
    spy = counting(P)
    asm = Assembler(spy, size)
    out: list[bytes] = []
    # What each feed allocates beyond what was there before it.  A copy of the
    # message so far per chunk would add up to ~size**2 / 2048 bytes.
    allocated = 0
    fed = 0
    tracemalloc.start()
    try:
        for chunk in chunks:
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            out.extend(asm.feed(chunk))
            _, peak = tracemalloc.get_traced_memory()
            allocated += peak - before
            fed += len(chunk)
            if not out:
                assert asm.partial_size == fed
    finally:
        tracemalloc.stop()
    assert len(out) == 1
    assert out[0] == message
    assert allocated < 3 * size
    assert len(spy.calls) == 1  # the header came whole in the first chunk
    assert (asm.msgs, asm.bytes, asm.partial_size) == (1, size, 0)


# --------------------------------------------------------------------------
# max_message_size


def test_announced_4_gib_fails_before_allocating() -> None:
    parser = LengthPrefixed(">Q")
    header = struct.pack(">Q", 4 << 30)
    first = lp_frame(">Q", 0, 0, b"ok")
    asm = Assembler(parser, 8 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(AssemblyError) as info:
            asm.feed(first + header + b"abc")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.errno == errno.EMSGSIZE
    assert peak < 256 * 1024
    assert asm.msg_too_big == 1
    assert asm.bad_hdr_len == 0
    assert info.value.messages == [first]
    assert info.value.partial == header + b"abc"


def test_announced_length_is_not_preallocated() -> None:
    # Allowed, but still nothing is allocated for the announced 4 GiB.
    parser = LengthPrefixed(">Q")
    asm = Assembler(parser, 1 << 40)
    tracemalloc.start()
    try:
        assert asm.feed(struct.pack(">Q", 4 << 30) + b"x" * 1000) == []
        assert asm.feed(b"y" * 1000) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    assert asm.partial_size == 2008
    assert asm.take_partial() == struct.pack(">Q", 4 << 30) + b"x" * 1000 + b"y" * 1000


@pytest.mark.parametrize("extra", [0, 1])
def test_length_prefixed_max_message_size_boundary(extra: int) -> None:
    asm = Assembler(P, 100)
    message = frame(b"z" * (96 + extra))
    if extra:
        with pytest.raises(AssemblyError) as info:
            asm.feed(message)
        assert info.value.errno == errno.EMSGSIZE
        assert asm.msg_too_big == 1
    else:
        assert asm.feed(message) == [message]
        assert asm.msg_too_big == 0


def test_delimited_without_delimiter_fails_at_max_message_size() -> None:
    asm = Assembler(Delimited(b"\n"), 16)
    assert asm.feed(b"one\n" + b"a" * 10) == [b"one\n"]
    assert asm.feed(b"a" * 5) == []  # 15 bytes: still room for the delimiter
    assert asm.partial_size == 15
    with pytest.raises(AssemblyError) as info:
        asm.feed(b"a")
    assert info.value.errno == errno.EMSGSIZE
    assert asm.msg_too_big == 1
    assert info.value.partial == b"a" * 16
    assert info.value.messages == []


def test_delimited_long_chunk_without_delimiter_fails_at_once() -> None:
    asm = Assembler(Delimited(b"\n"), 16)
    with pytest.raises(AssemblyError) as info:
        asm.feed(b"x\n" + b"y" * 1000)
    assert info.value.errno == errno.EMSGSIZE
    assert info.value.messages == [b"x\n"]
    assert info.value.partial == b"y" * 1000


def test_delimited_message_of_exactly_max_size() -> None:
    asm = Assembler(Delimited(b"\r\n"), 16)
    message = b"a" * 14 + b"\r\n"
    assert asm.feed(message[:15]) == []
    assert asm.feed(message[15:] + message) == [message, message]
    assert asm.msg_too_big == 0


def test_max_message_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Assembler(P, 0)


# --------------------------------------------------------------------------
# Impossible answers: EPROTO, counted as bad_hdr_len


@pytest.mark.parametrize("answer", [-1, -(2**40), 5.0, 8.0, "8", b"8", True, False, None])
def test_impossible_answer_is_eproto(answer: object) -> None:
    parser = parser_with(answer, header_size=4, need=4)
    asm = Assembler(parser, 1000)
    assert asm.feed(b"ab") == []
    with pytest.raises(AssemblyError) as info:
        asm.feed(b"cdefgh")
    assert info.value.errno == errno.EPROTO
    assert asm.bad_hdr_len == 1
    assert asm.msgs == 0
    assert info.value.partial == b"abcdefgh"


@pytest.mark.parametrize("answer", [1, 3])
def test_answer_shorter_than_header_size_is_eproto(answer: int) -> None:
    asm = Assembler(parser_with(answer, header_size=4), 1000)
    with pytest.raises(AssemblyError) as info:
        asm.feed(b"abcdefgh")
    assert info.value.errno == errno.EPROTO
    assert asm.bad_hdr_len == 1
    # The same answer is fine for a parser whose header is that short.
    asm = Assembler(parser_with(answer, header_size=answer), 1000)
    stream = b"abcdef"[: answer * 2]
    assert asm.feed(stream) == [stream[:answer], stream[answer:]]


@pytest.mark.parametrize("field", [1, 2, 3])
def test_length_field_shorter_than_header_is_eproto(field: int) -> None:
    asm = Assembler(LengthPrefixed(">I"), 1000)
    with pytest.raises(AssemblyError) as info:
        asm.feed(struct.pack(">I", field) + b"rest")
    assert info.value.errno == errno.EPROTO
    assert asm.bad_hdr_len == 1


def test_length_field_of_zero_fails_at_once() -> None:
    """A complete header whose length is 0 is shorter than the header itself.

    LengthPrefixed(">I") answers value + adjust, and 0 is also the answer for
    "need more bytes": the stream must still fail as soon as the header is in,
    not wait for max_message_size bytes (or forever).
    """
    asm = Assembler(LengthPrefixed(">I"), 1 << 20)
    with pytest.raises(AssemblyError) as info:
        asm.feed(struct.pack(">I", 0) + b"more bytes after the header")
    assert info.value.errno in (errno.EPROTO, errno.EBADMSG)


def test_negative_signed_field_is_eproto() -> None:
    asm = Assembler(LengthPrefixed(">i", adjust=4), 1000)
    good = lp_frame(">i", 0, 4, b"fine")
    with pytest.raises(AssemblyError) as info:
        asm.feed(good + struct.pack(">i", -100) + b"junk")
    assert info.value.errno == errno.EPROTO
    assert asm.bad_hdr_len == 1
    assert info.value.messages == [good]
    assert info.value.partial == struct.pack(">i", -100) + b"junk"


@pytest.mark.parametrize(("answer", "ok"), [(5, False), (7, False), (8, True), (9, True)])
def test_length_ending_inside_bytes_said_too_few(answer: int, ok: bool) -> None:
    """The parser said 7 bytes were too few: a length of 7 or less is a contradiction."""
    spy = Counting(lambda data: 0 if len(data) < 8 else answer)  # no header_size
    asm = Assembler(spy, 1000)
    stream = bytes(range(20))
    out: list[bytes] = []
    if ok:
        for i in range(answer):
            out.extend(asm.feed(stream[i : i + 1]))
        assert out == [stream[:answer]]
        assert asm.bad_hdr_len == 0
    else:
        for i in range(7):
            assert asm.feed(stream[i : i + 1]) == []
        with pytest.raises(AssemblyError) as info:
            asm.feed(stream[7:8])
        assert info.value.errno == errno.EPROTO
        assert asm.bad_hdr_len == 1
        assert info.value.partial == stream[:8]
    assert asm.need_more_hdr == 7


def test_short_length_is_fine_when_not_contradicted() -> None:
    # The same parser, given 8 bytes at once, never said "too few": 5 is a length.
    asm = Assembler(as_parser(lambda data: 0 if len(data) < 8 else 5), 1000)
    assert asm.feed(b"abcdefgh") == [b"abcde"]
    assert asm.bad_hdr_len == 0


# --------------------------------------------------------------------------
# A parser that raises


def test_parser_bad_message_is_ebadmsg() -> None:
    error = BadMessage("bad magic")

    def parse(data: memoryview) -> int:
        if data[0] == 0xFF:
            raise error
        return 2

    asm = Assembler(as_parser(parse), 1000)
    assert asm.feed(b"a") == []
    with pytest.raises(AssemblyError) as info:
        asm.feed(b"abc\xffdef")
    assert info.value.errno == errno.EBADMSG
    assert info.value.__cause__ is error
    assert info.value.messages == [b"aa", b"bc"]
    assert info.value.partial == b"\xffdef"
    assert asm.msgs == 2


@pytest.mark.parametrize("exc_type", [KeyError, IndexError, ValueError, ZeroDivisionError])
def test_parser_other_exception_is_eproto(exc_type: type[Exception]) -> None:
    def parse(data: memoryview) -> int:
        raise exc_type("oops")

    asm = Assembler(as_parser(parse), 1000)
    with pytest.raises(AssemblyError) as info:
        asm.feed(b"abc")
    assert info.value.errno == errno.EPROTO
    assert type(info.value.__cause__) is exc_type
    assert info.value.partial == b"abc"


def test_error_after_a_message_completed_in_the_same_chunk() -> None:
    # The first message's body arrives in pieces; its last piece carries a bad header.
    asm = Assembler(LengthPrefixed(">i", adjust=4), 1000)
    good = lp_frame(">i", 0, 4, b"x" * 50)
    bad = struct.pack(">i", -1) + b"zz"
    assert asm.feed(good[:10]) == []
    assert asm.feed(good[10:30]) == []
    with pytest.raises(AssemblyError) as info:
        asm.feed(good[30:] + bad)
    assert info.value.messages == [good]
    assert info.value.partial == bad
    assert asm.msgs == 1


def test_error_partial_includes_bytes_of_earlier_chunks() -> None:
    asm = Assembler(LengthPrefixed(">H", offset=2), 1000)
    assert asm.feed(b"\x00") == []
    assert asm.feed(b"\x00\x00") == []
    with pytest.raises(AssemblyError) as info:
        asm.feed(b"\x01tail")  # length 1 < header_size 4
    assert info.value.errno == errno.EPROTO
    assert info.value.partial == b"\x00\x00\x00\x01tail"
    assert info.value.messages == []


# --------------------------------------------------------------------------
# need_more_hdr


def test_need_more_hdr_counts_zero_answers() -> None:
    spy = counting(Delimited(b"\n"))
    asm = Assembler(spy, 1000)
    assert asm.feed(b"ab") == []
    assert asm.feed(b"cd") == []
    assert asm.need_more_hdr == 2
    assert asm.feed(b"\nxy\n") == [b"abcd\n", b"xy\n"]
    assert asm.need_more_hdr == 2
    assert asm.feed(b"z") == []
    assert asm.need_more_hdr == 3 == spy.zero_answers


def test_need_more_hdr_zero_when_headers_arrive_whole() -> None:
    asm = Assembler(P, 1000)
    messages = [frame(b"a" * n) for n in range(10)]
    assert asm.feed(b"".join(messages)) == messages
    assert asm.need_more_hdr == 0
    assert (asm.msgs, asm.bytes) == (10, sum(map(len, messages)))


# --------------------------------------------------------------------------
# partial_size and take_partial


def test_take_partial_header_incomplete() -> None:
    asm = Assembler(P, 1000)
    assert asm.feed(frame(b"one") + b"\x00\x00") == [frame(b"one")]
    assert asm.partial_size == 2
    assert asm.take_partial() == b"\x00\x00"
    assert asm.partial_size == 0
    assert asm.take_partial() == b""


def test_take_partial_body_incomplete() -> None:
    asm = Assembler(P, 1000)
    message = frame(b"0123456789" * 5)
    assert asm.feed(frame(b"one") + message[:7]) == [frame(b"one")]
    assert asm.partial_size == 7
    assert asm.feed(bytearray(message[7:20])) == []
    assert asm.feed(message[20:33]) == []
    assert asm.partial_size == 33
    taken = asm.take_partial()
    assert taken == message[:33]
    assert type(taken) is bytes
    assert asm.partial_size == 0
    # The assembler is empty: the next bytes start a new message.
    assert asm.feed(frame(b"next")) == [frame(b"next")]
    assert (asm.msgs, asm.bytes) == (2, len(frame(b"one")) + len(frame(b"next")))


def test_take_partial_at_a_boundary() -> None:
    asm = Assembler(Delimited(b"\n"), 1000)
    assert asm.feed(b"a\nb\n") == [b"a\n", b"b\n"]
    assert asm.partial_size == 0
    assert asm.take_partial() == b""
    assert asm.feed(b"c\n") == [b"c\n"]


def test_take_partial_forgets_what_the_parser_said() -> None:
    # After take_partial a new message starts: "7 bytes were too few" no longer holds.
    asm = Assembler(as_parser(lambda data: 0 if len(data) < 8 else 5), 1000)
    for b in b"abcdefg":
        assert asm.feed(bytes([b])) == []
    assert asm.partial_size == 7
    assert asm.take_partial() == b"abcdefg"
    assert asm.feed(b"ABCDEFGH") == [b"ABCDE"]


@given(case=valid_streams(), cut=st.integers(0, 10**6), data=st.data())
@settings(max_examples=100, deadline=None)
def test_partial_size_and_take_partial_property(
    case: tuple[Parser, list[bytes], bytes], cut: int, data: st.DataObject
) -> None:
    parser, messages, stream = case
    cut %= len(stream) + 1
    head = stream[:cut]
    sizes = data.draw(st.lists(st.integers(1, 20), min_size=1))
    asm = Assembler(parser, max(len(m) for m in messages))
    out = feed_all(asm, list(chunks_of(head, iter(sizes * (len(head) + 1)))))
    done = sum(map(len, out))
    assert out == messages[: len(out)]
    assert asm.partial_size == cut - done
    assert asm.take_partial() == head[done:]
    assert asm.partial_size == 0


# --------------------------------------------------------------------------
# Ownership of the bytes fed


def test_feed_does_not_keep_callers_bytearray() -> None:
    """A caller may reuse its receive buffer once feed() returns."""
    asm = Assembler(P, 1000)
    message = frame(b"abcdefghij")
    buf = bytearray(message[:6])
    assert asm.feed(buf) == []
    buf[:] = b"!!!!!!"
    buf = bytearray(message[6:10])
    assert asm.feed(buf) == []
    buf[:] = b"????"
    assert asm.feed(bytearray(message[10:])) == [message]


def test_delimited_search_resumes_where_it_stopped() -> None:
    """A long line arriving in pieces is scanned once, not once per piece."""
    scanned = [0]

    class Counting(Delimited):
        __slots__ = ()

        def message_length(self, data: memoryview, /) -> int:
            scanned[0] += len(data)
            return super().message_length(data)

        def resume_message_length(self, data: memoryview, seen: int, /) -> int:
            scanned[0] += len(data) - seen
            return super().resume_message_length(data, seen)

    asm = Assembler(Counting(b"\r\n"), 4 << 20)
    chunk = b"y" * 1024
    for _ in range(1024):  # 1 MiB with no delimiter yet
        assert asm.feed(chunk) == []
    assert asm.feed(b"\r\nnext\r\n") == [chunk * 1024 + b"\r\n", b"next\r\n"]
    assert scanned[0] < 3 * (1 << 20)  # linear: quadratic would be ~512 MiB


def test_delimited_resume_matches_a_fresh_search() -> None:
    d = Delimited(b"\r\n")
    data = memoryview(b"abc\r\ndef")
    for seen in range(0, 5):
        assert d.resume_message_length(data, seen) == 5
    view = memoryview(b"zzabc\r\n")[2:]  # not the whole buffer
    assert d.resume_message_length(view, 3) == 5
    assert d.resume_message_length(memoryview(b"abcd"), 2) == 0
