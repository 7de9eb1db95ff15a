"""Reading Linux ``TCP_INFO`` from a socket stream."""

from __future__ import annotations

import socket as _stdlib_socket
import struct
from dataclasses import dataclass

import trio

__all__ = ["TCPInfo", "tcp_info_of"]

# struct tcp_info (include/uapi/linux/tcp.h): 8 u8 fields, then u32 fields.
_TCP_INFO = struct.Struct("=8B24I")
_TCP_INFO_OPT = getattr(_stdlib_socket, "TCP_INFO", 11)


@dataclass(frozen=True, slots=True)
class TCPInfo:
    """Part of the kernel's ``struct tcp_info`` for one TCP connection.

    Times are in microseconds, as the kernel gives them.
    """

    #: TCP state (``1`` = ESTABLISHED; see ``include/net/tcp_states.h``).
    state: int
    #: Retransmits of the current unacknowledged segment (``tcpi_retransmits``).
    retransmits: int
    #: Retransmission timeout.
    rto: int
    #: Segments sent and not acknowledged.
    unacked: int
    #: Segments believed lost.
    lost: int
    #: Segments retransmitted and not acknowledged yet (``tcpi_retrans``).
    retrans: int
    #: Smoothed round-trip time.
    rtt: int
    #: Round-trip time variation.
    rttvar: int
    #: Congestion window, in segments.
    snd_cwnd: int
    #: Retransmits over the connection's life (``tcpi_total_retrans``).
    total_retrans: int


def _socket_of(stream: object) -> trio.socket.SocketType | None:
    """Follow ``transport_stream`` links (TLS) down to a SocketStream's socket."""
    seen = 0
    while seen < 16:
        if isinstance(stream, trio.SocketStream):
            return stream.socket
        inner = getattr(stream, "transport_stream", None)
        if inner is None:
            return None
        stream = inner
        seen += 1
    return None  # pragma: no cover - a cycle of wrappers


def tcp_info_of(stream: object) -> TCPInfo | None:
    """``TCP_INFO`` of the TCP socket under ``stream``, or ``None`` if there is none."""
    sock = _socket_of(stream)
    if sock is None or sock.type != _stdlib_socket.SOCK_STREAM:
        return None
    if sock.family not in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6):
        return None
    try:
        raw = sock.getsockopt(_stdlib_socket.IPPROTO_TCP, _TCP_INFO_OPT, _TCP_INFO.size)
    except OSError:
        return None
    if len(raw) < _TCP_INFO.size:  # pragma: no cover - very old kernels
        raw = raw.ljust(_TCP_INFO.size, b"\0")
    f = _TCP_INFO.unpack_from(raw)
    # u8: state ca_state retransmits probes backoff options wscale app_limited
    # u32: rto ato snd_mss rcv_mss unacked sacked lost retrans fackets
    #      last_data_sent last_ack_sent last_data_recv last_ack_recv
    #      pmtu rcv_ssthresh rtt rttvar snd_ssthresh snd_cwnd advmss reordering
    #      rcv_rtt rcv_space total_retrans
    return TCPInfo(
        state=f[0],
        retransmits=f[2],
        rto=f[8],
        unacked=f[12],
        lost=f[14],
        retrans=f[15],
        rtt=f[23],
        rttvar=f[24],
        snd_cwnd=f[26],
        total_retrans=f[31],
    )
