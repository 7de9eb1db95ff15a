"""trio-kcm: the Linux Kernel Connection Multiplexor (KCM), rebuilt on Trio.

Attach several byte streams to one :class:`Mux`, open several message
endpoints (:class:`KCMSocket`) on it, and get whole messages in and out: each
message is written atomically on one stream, each complete message read from a
stream is delivered whole to one socket, and a pluggable load-balancing policy
decides where.
"""

from ._errors import BadMessage, PolicyLoadError, StreamError
from ._events import (
    MuxEvent,
    ReconnectScheduled,
    StreamAttached,
    StreamFailed,
    StreamResumed,
    StreamStalled,
    StreamUnattached,
)
from ._format import format_kcm_stats, format_stats
from ._mux import Mux, open_mux
from ._parsers import Delimited, LengthPrefixed, Parser, ParserLike
from ._policy import ENTRY_POINT_GROUP, Policy, available_policies, load_policy
from ._request import KeyFunction, Requester, RequesterStatistics
from ._serve import Handshake
from ._socket import KCMSocket, SocketType
from ._stats import MuxStatistics, SocketStatistics, StreamState, StreamStatistics, StreamTotals
from ._stream import AttachedStream
from ._supervise import Backoff
from ._tcpinfo import TCPInfo
from ._version import __version__

__all__ = [
    "ENTRY_POINT_GROUP",
    "AttachedStream",
    "Backoff",
    "BadMessage",
    "Delimited",
    "Handshake",
    "KCMSocket",
    "KeyFunction",
    "LengthPrefixed",
    "Mux",
    "MuxEvent",
    "MuxStatistics",
    "Parser",
    "ParserLike",
    "Policy",
    "PolicyLoadError",
    "ReconnectScheduled",
    "Requester",
    "RequesterStatistics",
    "SocketStatistics",
    "SocketType",
    "StreamAttached",
    "StreamError",
    "StreamFailed",
    "StreamResumed",
    "StreamStalled",
    "StreamState",
    "StreamStatistics",
    "StreamTotals",
    "StreamUnattached",
    "TCPInfo",
    "__version__",
    "available_policies",
    "format_kcm_stats",
    "format_stats",
    "load_policy",
    "open_mux",
]

# Public classes say they live in trio_kcm, as Trio's do.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("trio_kcm._"):
        try:
            _obj.__module__ = "trio_kcm"
        except (AttributeError, TypeError):  # pragma: no cover
            pass
del _name, _obj
