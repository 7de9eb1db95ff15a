"""The built-in parsers and the parser protocol (the BPF program's part).

Expected headers are built with plain :mod:`struct`, never with the code under
test.
"""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import trio_kcm
from trio_kcm import BadMessage, Delimited, LengthPrefixed
from trio_kcm._assembler import Assembler, AssemblyError
from trio_kcm._parsers import Parser, as_parser


def ml(parser: Parser, data: bytes | bytearray) -> int:
    return parser.message_length(memoryview(data))


def test_public_names() -> None:
    from trio_kcm import _errors, _parsers

    assert trio_kcm.LengthPrefixed is _parsers.LengthPrefixed
    assert trio_kcm.Delimited is _parsers.Delimited
    assert trio_kcm.BadMessage is _errors.BadMessage
    assert issubclass(BadMessage, ValueError)


# --------------------------------------------------------------------------
# LengthPrefixed


# (format, offset, adjust): a field that counts the payload only, the whole
# message, with bytes before it, signed, one byte, eight bytes.
LP_CONFIGS = [
    (">I", 0, 4),
    (">I", 0, 0),
    ("<H", 0, 0),
    ("<H", 0, 2),
    ("!Q", 0, 0),
    ("!Q", 3, 11),
    (">i", 0, 4),
    (">i", 2, -10),
    (">b", 0, 100),
    (">B", 1, 2),
    ("=H", 5, 7),
]


@pytest.mark.parametrize(("fmt", "offset", "adjust"), LP_CONFIGS)
@pytest.mark.parametrize("size", [0, 1, 7, 100])
def test_length_prefixed_frame_round_trips(fmt: str, offset: int, adjust: int, size: int) -> None:
    p = LengthPrefixed(fmt, offset=offset, adjust=adjust)
    field = struct.Struct(fmt)
    assert p.header_size == offset + field.size
    payload = bytes(range(size))
    total = offset + field.size + size
    framed = p.frame(payload)
    # The header the reference framer writes: zeros, then the field.
    assert framed == bytes(offset) + field.pack(total - adjust) + payload
    assert ml(p, framed) == len(framed) == total
    # More data after the message does not change the answer.
    assert ml(p, framed + b"\xff" * 50) == total
    assert ml(p, bytearray(framed + framed)) == total


@pytest.mark.parametrize(("fmt", "offset", "adjust"), LP_CONFIGS)
def test_length_prefixed_needs_whole_header(fmt: str, offset: int, adjust: int) -> None:
    p = LengthPrefixed(fmt, offset=offset, adjust=adjust)
    framed = p.frame(b"payload")
    for k in range(p.header_size):
        assert ml(p, framed[:k]) == 0, k
    assert ml(p, framed[: p.header_size]) == len(framed)


def test_length_prefixed_reads_the_field() -> None:
    # Thrift framed: payload length, header not counted.
    assert ml(LengthPrefixed(">I", adjust=4), struct.pack(">I", 10)) == 14
    # The field counts the whole message.
    assert ml(LengthPrefixed(">I"), struct.pack(">I", 10)) == 10
    # Little-endian, and not the same answer as big-endian for the same bytes.
    assert ml(LengthPrefixed("<H"), b"\x01\x02") == 0x0201
    assert ml(LengthPrefixed(">H"), b"\x01\x02") == 0x0102
    assert ml(LengthPrefixed("!Q"), struct.pack(">Q", 2**40)) == 2**40
    # The field at an offset: the bytes before it are not read.
    assert ml(LengthPrefixed(">H", offset=3), b"\xff\xff\xff\x00\x09") == 9
    assert ml(LengthPrefixed(">H", offset=3, adjust=-2), b"abc\x00\x09") == 7
    # A signed field.
    assert ml(LengthPrefixed(">i", adjust=4), struct.pack(">i", 6)) == 10
    assert ml(LengthPrefixed(">b", adjust=100), struct.pack(">b", -90)) == 10


def test_length_prefixed_view_not_at_start_of_buffer() -> None:
    p = LengthPrefixed(">H", offset=1)
    buf = b"junkjunk" + b"\x00" + struct.pack(">H", 5) + b"zz" + b"tail"
    view = memoryview(buf)[8:]
    assert p.message_length(view) == 5
    view = memoryview(bytearray(buf))[8:10]  # only part of the header
    assert p.message_length(view) == 0


def test_length_prefixed_signed_negative_is_not_a_length() -> None:
    # A negative field gives no positive length: the assembler then refuses it.
    answer = ml(LengthPrefixed(">i"), struct.pack(">i", -5))
    assert answer < 0


@pytest.mark.parametrize(
    ("fmt", "offset", "adjust", "size"),
    [
        (">B", 0, 0, 300),  # 301 does not fit one byte
        (">B", 0, 0, 255),  # 256: one too many
        (">B", 0, 1, 256),  # 256: one too many, even with the header not counted
        (">H", 0, 2, 65536),
        ("<h", 0, 0, 40000),  # signed: 32767 is the largest
        (">I", 0, 100, 1),  # the field would be negative
        (">b", 0, 0, 127),  # 128 > 127
    ],
)
def test_length_prefixed_frame_too_big(fmt: str, offset: int, adjust: int, size: int) -> None:
    p = LengthPrefixed(fmt, offset=offset, adjust=adjust)
    with pytest.raises(BadMessage):
        p.frame(b"x" * size)


def test_length_prefixed_frame_largest_that_fits() -> None:
    p = LengthPrefixed(">B")
    framed = p.frame(b"x" * 254)
    assert framed[0] == 255
    assert ml(p, framed) == 255
    p = LengthPrefixed(">B", adjust=1)
    framed = p.frame(b"x" * 255)
    assert framed[0] == 255
    assert ml(p, framed) == 256


@pytest.mark.parametrize(
    "fmt",
    [
        "I",  # no byte order
        "@I",  # native: alignment
        "H",
        "",
        ">II",  # two fields
        ">HH",
        ">2I",
        ">Z",  # not a struct format
        ">f",  # not an integer
        ">d",
        ">?",  # a bool is not a length
        ">4s",
        ">x",  # no field at all
    ],
)
def test_length_prefixed_bad_format(fmt: str) -> None:
    with pytest.raises(ValueError):
        LengthPrefixed(fmt)


def test_length_prefixed_negative_offset() -> None:
    with pytest.raises(ValueError):
        LengthPrefixed(">I", offset=-1)
    # Zero is fine.
    assert LengthPrefixed(">I", offset=0).header_size == 4


@given(
    cfg=st.sampled_from(LP_CONFIGS),
    payload=st.binary(max_size=300),
)
@settings(max_examples=200, deadline=None)
def test_length_prefixed_frame_property(
    cfg: tuple[str, int, int],
    payload: bytes,
) -> None:
    """frame() either raises BadMessage or gives bytes the parser measures exactly."""
    fmt, offset, adjust = cfg
    p = LengthPrefixed(fmt, offset=offset, adjust=adjust)
    try:
        framed = p.frame(payload)
    except BadMessage:
        # Only when the reference framer cannot write the field either.
        with pytest.raises(struct.error):
            struct.pack(fmt, offset + struct.calcsize(fmt) + len(payload) - adjust)
        return
    assert framed.endswith(payload)
    assert ml(p, framed) == len(framed) == p.header_size + len(payload)


# --------------------------------------------------------------------------
# Delimited


def test_delimited_finds_the_first_delimiter() -> None:
    p = Delimited(b"\r\n")
    assert p.header_size == 2
    assert ml(p, b"hello\r\n") == 7
    assert ml(p, b"hello\r\nworld\r\n") == 7
    assert ml(p, b"\r\n") == 2
    assert ml(p, b"\r\nmore") == 2
    assert ml(Delimited(b"\n"), b"a\nb\n") == 2
    assert ml(Delimited(b"END"), b"xxENENDyyEND") == 7


def test_delimited_without_delimiter_needs_more() -> None:
    p = Delimited(b"\r\n")
    assert ml(p, b"") == 0
    assert ml(p, b"hello") == 0
    assert ml(p, b"hello\r") == 0  # half a delimiter
    assert ml(p, b"\n\r") == 0
    assert ml(p, bytearray(b"x" * 10000)) == 0


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_delimited_on_bytes_and_bytearray(kind: type) -> None:
    p = Delimited(b"\n")
    assert ml(p, kind(b"abc\ndef")) == 4
    assert ml(p, kind(b"abc")) == 0


@pytest.mark.parametrize("kind", [bytes, bytearray])
@pytest.mark.parametrize("delimiter", [b"\n", b"\r\n", b"\r\n\r\n", b"<end>"])
@pytest.mark.parametrize("at", [0, 1, 200, 253, 254, 255, 256, 1021, 1022, 1023, 1024, 5000])
@pytest.mark.parametrize("start", [0, 1, 300])
def test_delimited_view_not_at_start_of_buffer(
    kind: type, delimiter: bytes, at: int, start: int
) -> None:
    """The view may begin anywhere in its buffer, and hold much more after it."""
    p = Delimited(delimiter)
    # Bytes before the view hold delimiters that must not be seen.
    before = (delimiter + b"-") * start
    before = before[:start]
    body = b"x" * at + delimiter + b"y" * 3000 + delimiter
    buf = kind(before + body)
    view = memoryview(buf)[len(before) :]
    assert p.message_length(view) == at + len(delimiter)
    # A view that ends before the delimiter is complete.
    short = memoryview(buf)[len(before) : len(before) + at + len(delimiter) - 1]
    assert p.message_length(short) == 0


def test_delimited_frame() -> None:
    p = Delimited(b"\r\n")
    assert p.frame(b"hello") == b"hello\r\n"
    assert p.frame(b"") == b"\r\n"
    framed = p.frame(b"a\rb\nc")  # parts of the delimiter are fine
    assert ml(p, framed) == len(framed)


@pytest.mark.parametrize("payload", [b"a\r\nb", b"\r\n", b"abc\r\n", b"\r\nabc"])
def test_delimited_frame_refuses_payload_with_delimiter(payload: bytes) -> None:
    with pytest.raises(BadMessage):
        Delimited(b"\r\n").frame(payload)


@given(
    delimiter=st.sampled_from([b"\n", b"\r\n", b"\r\n\r\n", b"aa", b"aba", b"abab"]),
    payload=st.lists(st.sampled_from([b"a", b"b", b"\r", b"\n", b"x"]), max_size=12).map(b"".join),
)
@example(delimiter=b"\r\n\r\n", payload=b"header\r\n")
@example(delimiter=b"aa", payload=b"xa")
@settings(max_examples=300, deadline=None)
def test_delimited_frame_property(delimiter: bytes, payload: bytes) -> None:
    """frame() either raises BadMessage or gives exactly one message, the whole frame.

    A payload that ends with the start of a self-overlapping delimiter (e.g.
    ``b"x\\r\\n"`` with ``b"\\r\\n\\r\\n"``) makes the delimiter appear early in
    the framed bytes: the receiver would cut the message short.
    """
    p = Delimited(delimiter)
    try:
        framed = p.frame(payload)
    except BadMessage:
        # Refused only if the payload cannot be framed: the delimiter would
        # appear before the end.
        assert (payload + delimiter).find(delimiter) < len(payload)
        return
    assert framed == payload + delimiter
    assert ml(p, framed) == len(framed)


@pytest.mark.parametrize("delimiter", [b"", "\n", None, 10])
def test_delimited_bad_delimiter(delimiter: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        Delimited(delimiter)  # type: ignore[arg-type]


def test_delimited_empty_delimiter_is_value_error() -> None:
    with pytest.raises(ValueError):
        Delimited(b"")


# --------------------------------------------------------------------------
# The protocol and as_parser


def test_builtins_are_parsers() -> None:
    assert isinstance(LengthPrefixed(">I"), Parser)
    assert isinstance(Delimited(b"\n"), Parser)
    assert isinstance(LengthPrefixed(">I"), trio_kcm.Parser)


def test_as_parser_keeps_parser_objects() -> None:
    lp = LengthPrefixed(">I", adjust=4)
    assert as_parser(lp) is lp
    d = Delimited(b"\n")
    assert as_parser(d) is d

    class Custom:
        def message_length(self, data: memoryview, /) -> int:
            return 3

    c = Custom()
    assert as_parser(c) is c


def test_as_parser_wraps_callables() -> None:
    seen: list[bytes] = []

    def first_byte(data: memoryview) -> int:
        seen.append(bytes(data))
        return data[0] if len(data) else 0

    p = as_parser(first_byte)
    assert isinstance(p, Parser)
    assert p.message_length(memoryview(b"\x05abcdef")) == 5
    assert p.message_length(memoryview(b"")) == 0
    assert seen == [b"\x05abcdef", b""]

    p = as_parser(lambda data: len(data) // 2)
    assert p.message_length(memoryview(b"abcd")) == 2


def test_as_parser_callable_propagates_bad_message() -> None:
    def reject(data: memoryview) -> int:
        raise BadMessage("no")

    p = as_parser(reject)
    with pytest.raises(BadMessage, match="no"):
        p.message_length(memoryview(b"x"))


@pytest.mark.parametrize("thing", [42, None, "abc", b"abc", [1, 2], object()])
def test_as_parser_rejects_non_parsers(thing: object) -> None:
    with pytest.raises(TypeError):
        as_parser(thing)  # type: ignore[arg-type]


@pytest.mark.parametrize("chunks", [[b"\x00"], [b"\x00", b""], [b"\x00\x00\x00"]])
def test_a_plain_callables_header_size_is_honoured(chunks: list[bytes]) -> None:
    """A callable with ``header_size`` means what a parser object with it means.

    The parser answers a length of 2 for any header; with ``header_size = 4``
    that is impossible (EPROTO) whether the first read brought one byte or
    three, as it is for an object parser (before, the callable's attribute was
    ignored, so a short first read merely waited for more: the outcome hung on
    how reads were chunked).
    """

    def two(data: memoryview) -> int:
        return 2

    two.header_size = 4  # type: ignore[attr-defined]

    class Two:
        header_size = 4

        def message_length(self, data: memoryview) -> int:
            return 2

    for parser in (two, Two()):
        assembler = Assembler(as_parser(parser), 1024)
        with pytest.raises(AssemblyError) as info:
            for chunk in chunks:
                assembler.feed(chunk)
        assert info.value.errno == errno.EPROTO, parser
