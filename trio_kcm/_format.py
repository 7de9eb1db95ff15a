"""A mux's counters in the layouts of the kernel's /proc/net/kcm and /proc/net/kcm_stats."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._stats import StreamState

if TYPE_CHECKING:
    from ._mux import Mux

__all__ = ["format_kcm_stats", "format_stats"]

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


def _columns(widths: tuple[int, ...], cells: list[object]) -> str:
    return " ".join(
        f"{cell!s:<{width}}" for width, cell in zip(widths, cells, strict=True)
    ).rstrip()


_MUX_WIDTHS = (8, 10, 16, 10, 16, 10, 10, 10, 11, 10)
_PSOCK_WIDTHS = (8, 10, 16, 10, 16, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10)


def format_kcm_stats(mux: Mux) -> str:
    """Return ``mux``'s totals laid out like the kernel's ``/proc/net/kcm_stats``.

    Two header-and-values pairs: ``MUX`` (:meth:`Mux.statistics`) and
    ``Psock`` (:meth:`Mux.stream_totals`, every stream the mux ever had).
    The kernel's file covers every mux of a network namespace since boot;
    this covers one mux since it opened.  Unlike the kernel's, ``Unattach``
    and ``UnattchRsvd`` are not swapped, ``TX-Retries`` is counted, and
    ``RX-Aborts`` is real (streams whose reader failed them); ``RX-MemFail``
    counts the streams failed for want of memory, by ``receive_memory_limit``
    (``ENOBUFS``; the kernel counts allocations it will retry).
    """
    m = mux.statistics()
    t = mux.stream_totals()
    mux_head: list[object] = ["MUX", "RX-Msgs", "RX-Bytes", "TX-Msgs", "TX-Bytes"]
    mux_head += ["TX-Retries", "Attach", "Unattach", "UnattchRsvd", "RX-RdyDrops"]
    mux_row: list[object] = ["", m.rx_msgs, m.rx_bytes, m.tx_msgs, m.tx_bytes, m.tx_retries]
    mux_row += [m.psock_attach, m.psock_unattach, t.unattached_reserved, m.rx_ready_drops]
    psock_head: list[object] = ["Psock", "RX-Msgs", "RX-Bytes", "TX-Msgs", "TX-Bytes"]
    psock_head += ["Reserved", "Unreserved", "RX-Aborts", "RX-Intr", "RX-Unrecov"]
    psock_head += ["RX-MemFail", "RX-NeedMor", "RX-BadLen", "RX-TooBig", "RX-Timeout"]
    psock_head += ["TX-Aborts"]
    psock_row: list[object] = ["", t.rx_msgs, t.rx_bytes, t.tx_msgs, t.tx_bytes, t.reserved]
    psock_row += [t.unreserved, t.rx_aborts, t.rx_interrupted, t.rx_unrecoverable]
    psock_row += [m.rx_budget_failures]
    psock_row += [t.rx_need_more_hdr, t.rx_bad_hdr_len, t.rx_msg_too_big, t.rx_msg_timeouts]
    psock_row += [t.tx_aborts]
    lines = [
        _columns(_MUX_WIDTHS, mux_head),
        _columns(_MUX_WIDTHS, mux_row),
        "",
        _columns(_PSOCK_WIDTHS, psock_head),
        _columns(_PSOCK_WIDTHS, psock_row),
    ]
    return "\n".join(lines) + "\n"
