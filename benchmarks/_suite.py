"""The configurations measured, and how many messages each one moves."""

from __future__ import annotations

from dataclasses import dataclass

from ._spec import Spec

PAYLOADS = (64, 1024, 16384)
#: Streams (M) and sockets (N) of the trio-kcm scale grid.
GRID = (1, 4, 64)
#: The ping-pong payload.
PING_PAYLOAD = 64


@dataclass(frozen=True)
class Config:
    """A row of the table, at every payload size (or only at PING_PAYLOAD)."""

    key: str
    label: str
    kind: str
    m: int = 1
    n: int = 1
    tx_tasks: int = 1
    rx_tasks: int = 1
    #: Which calibration its message count comes from (configurations that must
    #: move the same total traffic share one).
    rate_class: str = ""

    def spec(
        self, payload: int, count: int, warmup: int = 0, *, count_writes: bool = False
    ) -> Spec:
        return Spec(
            kind=self.kind,
            payload=payload,
            count=count,
            m=self.m,
            n=self.n,
            tx_tasks=self.tx_tasks,
            rx_tasks=self.rx_tasks,
            warmup=warmup,
            count_writes=count_writes,
        )

    @property
    def uses_zmq(self) -> bool:
        return "zmq" in self.kind


RAW_NAIVE = Config("raw-naive", "raw Trio, naive (send_all per message)", "raw-naive")
RAW_BATCHED = Config("raw-batched", "raw Trio, batched (~64 KiB writes)", "raw-batched")
ZMQ = Config("zmq", "pyzmq PUSH/PULL (send/recv per message)", "zmq")
KCM_SEND = Config("kcm-send", "trio-kcm send / receive, 1x1", "kcm-send")
KCM_SEND_16_4 = Config(
    "kcm-send-16-4",
    "trio-kcm send x16 tasks / receive x4 tasks, 1x1",
    "kcm-send",
    tx_tasks=16,
    rx_tasks=4,
)
KCM_BATCH = Config("kcm-batch", "trio-kcm batch() / receive_many, 1x1", "kcm-batch")


def kcm_grid(m: int, n: int) -> Config:
    key = "kcm-send-many" if (m, n) == (1, 1) else f"kcm-send-many-{m}x{n}"
    return Config(
        key,
        f"trio-kcm send_many / receive_many, {m}x{n}",
        "kcm-send-many",
        m=m,
        n=n,
        rate_class="kcm-send-many",
    )


KCM_SEND_MANY = kcm_grid(1, 1)

THROUGHPUT = (
    RAW_NAIVE,
    RAW_BATCHED,
    ZMQ,
    KCM_SEND,
    KCM_SEND_16_4,
    KCM_SEND_MANY,
    KCM_BATCH,
    *(kcm_grid(m, n) for m in GRID for n in GRID if (m, n) != (1, 1)),
)

PING = (
    Config("ping-raw", "raw Trio", "ping-raw"),
    Config("ping-kcm", "trio-kcm send / receive", "ping-kcm"),
    Config("ping-zmq", "pyzmq DEALER/ROUTER", "ping-zmq"),
)

#: --quick: every kind of configuration once, with a 4x4 grid point.
QUICK_THROUGHPUT = (
    RAW_NAIVE,
    RAW_BATCHED,
    ZMQ,
    KCM_SEND,
    KCM_SEND_16_4,
    KCM_SEND_MANY,
    KCM_BATCH,
    kcm_grid(4, 4),
)
QUICK_PAYLOADS = (1024,)
QUICK_COUNT = 2000
QUICK_PING = 200

#: The configurations whose measured rate sets the message counts (full mode).
CALIBRATE = {
    "raw-naive": RAW_NAIVE,
    "raw-batched": RAW_BATCHED,
    "zmq": ZMQ,
    "kcm-send": KCM_SEND,
    "kcm-send-16-4": KCM_SEND_16_4,
    "kcm-send-many": KCM_SEND_MANY,
    "kcm-batch": KCM_BATCH,
}


def rate_class(config: Config) -> str:
    return config.rate_class or config.key


#: The floors (see ``benchmarks.worker._floor``): key -> label.
FLOORS = {
    "floor-pair": "one task `await send()`, another `await receive()`",
    "floor-send": "`await send()` alone (nothing takes the items)",
    "floor-receive": "`await receive()` alone (items ready)",
}
#: Items moved per floor measurement, --quick (full mode: calibrated).
QUICK_FLOOR = 2000
