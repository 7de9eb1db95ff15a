"""``format_stats``: a mux's counters in the layout of the kernel's /proc/net/kcm."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._stats import StreamState

if TYPE_CHECKING:
    from ._mux import Mux

__all__ = ["format_stats"]

_ROW = "{:<10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>10} {:>8} {:>10} {}"


def format_stats(mux: Mux) -> str:
    """Return ``mux``'s statistics laid out like the kernel's ``/proc/net/kcm``.

    One ``mux`` line, one ``kcm-N`` line per open socket and one ``psock-N``
    line per attached stream, with the kernel's columns (``Recv-Q`` and
    ``Send-Q`` count messages, ``Rmem`` and ``Smem`` bytes) and status flags:
    ``RxWait`` (the socket can take messages), ``TxWait`` (it waits for a
    stream), ``WMore`` (a batch is open), ``Rsvd-<k>`` (sockets with a burst
    on the stream), ``TxStop``/``RxStop`` (failed), ``RxPause`` (the reader is
    stopped for backpressure), ``RdyRx`` (complete messages wait for a socket).
    Unlike the kernel's, every counter is right (no swapped columns, a real
    ``TX-Retries``), and the mux's totals include streams that left.
    """
    m = mux.statistics()
    lines = [
        "*** KCM statistics (1 MUX) ****",
        _ROW.format(
            "Object",
            "RX-Msgs",
            "RX-Bytes",
            "TX-Msgs",
            "TX-Bytes",
            "Recv-Q",
            "Rmem",
            "Send-Q",
            "Smem",
            "Status",
        ),
        _ROW.format(
            "mux",
            m.rx_msgs,
            m.rx_bytes,
            m.tx_msgs,
            m.tx_bytes,
            "",
            "",
            "",
            "",
            f"KCMs: {m.sockets}, Psocks {m.streams}, TX-Retries {m.tx_retries},"
            f" Attach {m.psock_attach}, Unattach {m.psock_unattach},"
            f" RX-RdyDrops {m.rx_ready_drops}",
        ),
    ]
    for sock in mux.sockets:
        s = sock.statistics()
        flags = []
        if s.receive_ready:
            flags.append("RxWait")
        if s.tx_waiting:
            flags.append("TxWait")
        if s.tx_batched_msgs:
            flags.append("WMore")
        if not s.receive_enabled:
            flags.append("RxDisabled")
        lines.append(
            _ROW.format(
                f"   kcm-{sock.index}",
                s.rx_msgs,
                s.rx_bytes,
                s.tx_msgs,
                s.tx_bytes,
                s.rx_queued_msgs,
                s.rx_queued_bytes,
                s.tx_queued_msgs,
                s.tx_queued_bytes,
                " ".join(flags),
            )
        )
    for stream in mux.streams:
        t = stream.statistics()
        flags = []
        if t.state is StreamState.FAILED:
            flags += ["TxStop", "RxStop"]
        flags += [f"Rsvd-{index}" for index in t.reserved_by]
        if t.reading_paused:
            flags.append("RxPause")
        if t.rx_ready_msgs:
            flags.append("RdyRx")
        lines.append(
            _ROW.format(
                f"   psock-{stream.index}",
                t.rx_msgs,
                t.rx_bytes,
                t.tx_msgs,
                t.tx_bytes,
                "-",
                "-",
                t.tx_queued_msgs,
                t.tx_queued_bytes,
                " ".join(flags),
            )
        )
    return "\n".join(lines) + "\n"
