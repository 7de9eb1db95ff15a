"""What one measurement is: shared by the runner and the worker processes."""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass

#: The wire format of every Trio-based configuration: a 4-byte big-endian
#: payload length, then the payload (Thrift framed;
#: ``trio_kcm.LengthPrefixed(">I", adjust=4)``).  pyzmq frames by itself.
HEADER = struct.Struct(">I")
#: Bytes asked of a stream per read, as trio-kcm's reader does.
READ_SIZE = 65536
#: The size that batched senders aim at per write (raw Trio) or per group
#: (trio-kcm ``send_many`` / ``batch()``).
WRITE_SIZE = 65536
#: ``receive_many``'s limit in the trio-kcm receivers.
RECEIVE_MANY = 4096

#: Throughput kinds: a sender process and a receiver process, the receiver times.
THROUGHPUT_KINDS = (
    "raw-naive",  # one send_all per message; bytearray + struct.unpack_from receiver
    "raw-batched",  # frames joined into ~64 KiB writes; the same receiver
    "kcm-send",  # trio-kcm send / receive, one message per call
    "kcm-send-many",  # trio-kcm send_many (~64 KiB groups) / receive_many
    "kcm-batch",  # trio-kcm batch() around per-message sends / receive_many
    "zmq",  # pyzmq PUSH/PULL, per-message send / recv
)
#: Latency kinds: a client process (it times) and an echo server process.
PING_KINDS = ("ping-raw", "ping-kcm", "ping-zmq")
#: The floors, measured together by one ``floor`` worker (one process, no I/O):
#: Trio's own per-await rate through a memory channel.
FLOOR_KEYS = ("floor-pair", "floor-send", "floor-receive")


@dataclass(frozen=True)
class Spec:
    """One configuration at one payload size."""

    kind: str
    payload: int
    #: Messages in total (throughput), or timed round trips (ping-pong).
    count: int
    #: Attached TCP streams (trio-kcm kinds; the others use one connection).
    m: int = 1
    #: KCM sockets on each side (trio-kcm kinds).
    n: int = 1
    #: Sending tasks per socket (kcm-send).
    tx_tasks: int = 1
    #: Receiving tasks per socket (kcm-send).
    rx_tasks: int = 1
    #: Untimed round trips before the timed ones (ping-pong).
    warmup: int = 0
    #: trio-kcm sender: count the mux's writes (a thin wrapper around each
    #: stream; used by the profile runs only).
    count_writes: bool = False

    @property
    def frame_size(self) -> int:
        return HEADER.size + self.payload

    @property
    def group(self) -> int:
        """Frames per batched write or ``send_many`` group: about WRITE_SIZE bytes."""
        return max(1, round(WRITE_SIZE / self.frame_size))

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        return cls(**json.loads(text))


def split(total: int, parts: int) -> list[int]:
    """``total`` spread over ``parts`` as evenly as possible."""
    q, r = divmod(total, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]
