"""Export a mux's statistics to Prometheus (the ``prometheus`` extra).

Install with ``pip install 'trio-kcm[prometheus]'``.  This module imports
:mod:`prometheus_client`; ``import trio_kcm`` does not, so the library itself
never needs it.

Every field of :class:`~trio_kcm.MuxStatistics`,
:class:`~trio_kcm.StreamStatistics`, :class:`~trio_kcm.SocketStatistics`
and :class:`~trio_kcm.StreamTotals` becomes one metric family: a counter
(exposed as ``<name>_total``) for what only grows, a gauge for what goes up
and down.

- ``trio_kcm_mux_<field>``, label ``mux`` (the name the mux was given);
- ``trio_kcm_stream_<field>``, labels ``mux`` and ``stream`` (the
  :attr:`~trio_kcm.AttachedStream.index`, ``psock-N`` in
  :func:`~trio_kcm.format_stats`).  The seconds of ``rx_paused`` are
  ``trio_kcm_stream_rx_paused_seconds_total``, and ``trio_kcm_stream_state``
  has a third label, ``state``, with one sample per
  :class:`~trio_kcm.StreamState`: 1 for the stream's state, 0 for the others;
- ``trio_kcm_socket_<field>``, labels ``mux`` and ``socket`` (the
  :attr:`~trio_kcm.KCMSocket.index`, ``kcm-N``).  ``receive_enabled`` is 1 or 0;
- ``trio_kcm_streams_<field>``, label ``mux``: the fields of
  :class:`~trio_kcm.StreamTotals` (:meth:`Mux.stream_totals
  <trio_kcm.Mux.stream_totals>`), every stream's counters added up, those
  that left included, so they never go back when a stream goes.

Indices are reused: a stream attached after another was unattached may take
its number, and its counters then start again from 0, which Prometheus's
``rate()`` reads as a counter reset.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, final

import trio
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._stats import MuxStatistics, SocketStatistics, StreamState, StreamStatistics, StreamTotals

if TYPE_CHECKING:
    from ._mux import Mux

__all__ = ["MuxCollector"]

_Kind = Literal["counter", "gauge"]


@dataclass(frozen=True)
class _Field:
    """How one statistics field is exported."""

    field: str
    kind: _Kind
    help: str
    unit_suffix: str = ""  # e.g. "_seconds", appended to the metric name


# One row per field of the statistics dataclasses.  A field missing here is
# not exported: tests/test_prometheus.py compares these tables with
# dataclasses.fields(), so a new statistic cannot be forgotten.
_MUX_FIELDS: tuple[_Field, ...] = (
    _Field("rx_msgs", "counter", "Messages assembled from streams (the kernel's mux RX-Msgs)."),
    _Field("rx_bytes", "counter", "Bytes of the messages assembled from streams."),
    _Field("tx_msgs", "counter", "Messages written whole to streams."),
    _Field("tx_bytes", "counter", "Bytes of the messages written to streams."),
    _Field("tx_retries", "counter", "Messages moved from a failed or unattached stream."),
    _Field("rx_ready_drops", "counter", "Received messages no socket could ever take."),
    _Field("tx_dropped", "counter", "Accepted messages not written before the mux closed."),
    _Field("tx_expired", "counter", "Accepted messages withdrawn unwritten: gone stale."),
    _Field("psock_attach", "counter", "Streams attached, ever."),
    _Field("psock_unattach", "counter", "Streams unattached, ever."),
    _Field("streams", "gauge", "Streams attached now (failed ones not yet unattached included)."),
    _Field("sockets", "gauge", "Open KCM sockets."),
    _Field("stream_errors", "counter", "Stream failures, ever."),
    _Field("errors_dropped", "counter", "Stream errors dropped before a monitor took them."),
    _Field("events_dropped", "counter", "Events dropped before a monitor took them."),
    _Field("rx_buffered", "gauge", "Bytes of received data held now, against the memory limit."),
    _Field("rx_budget_waiting", "gauge", "Readers waiting now for room in the memory limit."),
    _Field("rx_budget_holds", "counter", "Times a reader waited for room in the memory limit."),
    _Field("rx_budget_failures", "counter", "Streams failed with ENOBUFS: no room for a message."),
)

_STREAM_FIELDS: tuple[_Field, ...] = (
    _Field("rx_msgs", "counter", "Messages assembled from this stream."),
    _Field("rx_bytes", "counter", "Bytes of the messages assembled from this stream."),
    _Field("tx_msgs", "counter", "Messages written whole to this stream."),
    _Field("tx_bytes", "counter", "Bytes written to this stream."),
    _Field("reserved", "counter", "Bursts of a KCM socket started on this stream."),
    _Field("unreserved", "counter", "Bursts of a KCM socket finished on this stream."),
    _Field("tx_aborts", "counter", "Writes that failed part-way."),
    _Field("rx_need_more_hdr", "counter", "Times the parser answered 'need more bytes'."),
    _Field("rx_bad_hdr_len", "counter", "Impossible lengths from the parser (EPROTO)."),
    _Field("rx_msg_too_big", "counter", "Messages announced above max_message_size (EMSGSIZE)."),
    _Field("rx_msg_timeouts", "counter", "Messages that outlasted assembly_timeout (ETIMEDOUT)."),
    _Field(
        "rx_paused",
        "counter",
        "Seconds the reader was stopped for backpressure.",
        unit_suffix="_seconds",
    ),
    _Field("tx_queued_msgs", "gauge", "Messages queued for this stream and not written yet."),
    _Field("tx_queued_bytes", "gauge", "Bytes queued for this stream and not written yet."),
    _Field("state", "gauge", "The stream's state: 1 for the current one, 0 for the others."),
    _Field("reserved_by", "gauge", "KCM sockets with a burst on this stream now (how many)."),
    _Field("reading_paused", "gauge", "1 while the reader is stopped for backpressure, else 0."),
    _Field("rx_ready_msgs", "gauge", "Complete messages from this stream waiting for a socket."),
    _Field("stalled", "gauge", "1 while its write is stalled (tx_stall_timeout), else 0."),
)

_SOCKET_FIELDS: tuple[_Field, ...] = (
    _Field("rx_msgs", "counter", "Messages the application received from this socket."),
    _Field("rx_bytes", "counter", "Bytes of the messages received from this socket."),
    _Field("tx_msgs", "counter", "Messages the application sent on this socket."),
    _Field("tx_bytes", "counter", "Bytes of the messages sent on this socket."),
    _Field("rx_queued_msgs", "gauge", "Messages waiting in this socket's receive queue."),
    _Field("rx_queued_bytes", "gauge", "Bytes waiting in this socket's receive queue."),
    _Field("tx_queued_msgs", "gauge", "Messages accepted from this socket, not written yet."),
    _Field("tx_queued_bytes", "gauge", "Bytes accepted from this socket, not written yet."),
    _Field("receive_enabled", "gauge", "1 if the socket takes new messages, else 0."),
    _Field("receive_ready", "gauge", "1 if the receive policy may give it messages now, else 0."),
    _Field("tx_waiting", "gauge", "1 if messages it accepted wait for a stream, else 0."),
    _Field("tx_batched_msgs", "gauge", "Messages held by open batch() blocks on this socket."),
    _Field("tx_expired", "counter", "Messages of this socket withdrawn unwritten: gone stale."),
)


_TOTALS_FIELDS: tuple[_Field, ...] = (
    _Field("rx_msgs", "counter", "Messages assembled from every stream, ever."),
    _Field("rx_bytes", "counter", "Bytes of the messages assembled from every stream, ever."),
    _Field("tx_msgs", "counter", "Messages written whole to every stream, ever."),
    _Field("tx_bytes", "counter", "Bytes written to every stream, ever."),
    _Field("reserved", "counter", "Bursts of a KCM socket started on a stream, ever."),
    _Field("unreserved", "counter", "Bursts of a KCM socket finished on a stream, ever."),
    _Field("tx_aborts", "counter", "Writes that failed part-way, ever."),
    _Field("rx_need_more_hdr", "counter", "Times a parser answered 'need more bytes', ever."),
    _Field("rx_bad_hdr_len", "counter", "Impossible lengths from a parser (EPROTO), ever."),
    _Field("rx_msg_too_big", "counter", "Messages announced above max_message_size, ever."),
    _Field("rx_msg_timeouts", "counter", "Messages that outlasted assembly_timeout, ever."),
    _Field("rx_aborts", "counter", "Streams whose reader failed them, ever."),
    _Field("rx_interrupted", "counter", "Streams failed by their parser or its limits, ever."),
    _Field("rx_unrecoverable", "counter", "Streams that failed with half a message, ever."),
    _Field(
        "unattached_reserved", "counter", "Streams unattached while a socket had a burst on them."
    ),
)


@dataclass(frozen=True)
class _Snapshot:
    """Everything one scrape reports about one mux, taken at one instant."""

    name: str
    mux: MuxStatistics
    streams: tuple[tuple[int, StreamStatistics], ...]
    sockets: tuple[tuple[int, SocketStatistics], ...]
    totals: StreamTotals


@dataclass(frozen=True)
class _Entry:
    mux: Mux
    token: trio.lowlevel.TrioToken


def _take(name: str, mux: Mux) -> _Snapshot:
    # Synchronous, no checkpoint: one consistent picture of the mux.
    return _Snapshot(
        name=name,
        mux=mux.statistics(),
        streams=tuple((h.index, h.statistics()) for h in mux.streams),
        sockets=tuple((s.index, s.statistics()) for s in mux.sockets),
        totals=mux.stream_totals(),
    )


def _value(stats: object, field: str) -> float:
    value = getattr(stats, field)
    if isinstance(value, tuple):  # reserved_by: the sockets, counted
        return float(len(value))
    return float(value)  # ints, floats and bools alike


@final
class MuxCollector(Collector):
    """A Prometheus collector for the statistics of one or more muxes.

    At each scrape it takes :meth:`Mux.statistics() <trio_kcm.Mux.statistics>`,
    then :meth:`~trio_kcm.AttachedStream.statistics` of every stream in
    :attr:`Mux.streams <trio_kcm.Mux.streams>` and
    :meth:`~trio_kcm.KCMSocket.statistics` of every socket in
    :attr:`Mux.sockets <trio_kcm.Mux.sockets>`, all at one instant, and exports
    every field (see the table in :mod:`trio_kcm.prometheus`).

    Scrapes may come from any thread: :func:`prometheus_client.start_http_server`
    serves them from its own.  The statistics are then taken in the mux's Trio
    thread (through :func:`trio.from_thread.run_sync`), so they are consistent
    and never read half-updated; a scrape from the Trio thread itself (e.g.
    :func:`prometheus_client.generate_latest` called in a task) takes them
    directly.  A mux whose Trio run has ended is left out.

    Construct it, and :meth:`add` muxes, inside the Trio run that owns them.

    Example::

        import prometheus_client
        from trio_kcm.prometheus import MuxCollector

        async with trio_kcm.open_mux(parser=parser) as mux:
            collector = MuxCollector(mux, name="backend")
            prometheus_client.REGISTRY.register(collector)
            prometheus_client.start_http_server(9464)  # scrapes from its thread
            try:
                ...  # use the mux
            finally:
                prometheus_client.REGISTRY.unregister(collector)

    A registry refuses two collectors that export the same metric names, so
    for several muxes use one collector and :meth:`add` each of them under its
    own name: the ``mux`` label tells them apart.

    Args:
      mux: The first mux to export, or ``None`` to :meth:`add` them later.
      name: Its ``mux`` label.

    """

    def __init__(self, mux: Mux | None = None, *, name: str = "main") -> None:
        self._lock = threading.Lock()
        self._muxes: dict[str, _Entry] = {}
        if mux is not None:
            self.add(mux, name=name)

    @property
    def names(self) -> tuple[str, ...]:
        """The ``mux`` labels of the exported muxes, in the order they were added."""
        with self._lock:
            return tuple(self._muxes)

    def add(self, mux: Mux, *, name: str) -> None:
        """Export ``mux`` too, with the label ``mux=name``.

        Call it in the Trio run that owns ``mux``.

        Raises:
          ValueError: ``name`` is already in use in this collector.
          RuntimeError: Not called from inside a Trio run.

        """
        token = trio.lowlevel.current_trio_token()
        with self._lock:
            if name in self._muxes:
                raise ValueError(f"a mux named {name!r} is already exported")
            self._muxes[name] = _Entry(mux, token)

    def remove(self, name: str) -> None:
        """Stop exporting the mux labelled ``name``.

        Raises:
          KeyError: No mux has that name here.

        """
        with self._lock:
            del self._muxes[name]

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (for the registry's name check)."""
        return list(_families(()))

    def collect(self) -> Iterable[Metric]:
        """Take every mux's statistics now and return them as metric families."""
        return list(_families(self._snapshots()))

    def _snapshots(self) -> list[_Snapshot]:
        with self._lock:
            entries = list(self._muxes.items())
        try:
            here: trio.lowlevel.TrioToken | None = trio.lowlevel.current_trio_token()
        except RuntimeError:
            here = None
        snapshots: list[_Snapshot] = []
        for name, entry in entries:
            take = functools.partial(_take, name, entry.mux)
            if entry.token is here:
                snapshots.append(take())
                continue
            try:
                snapshots.append(trio.from_thread.run_sync(take, trio_token=entry.token))
            except trio.RunFinishedError:
                continue  # the mux's Trio run is over: nothing live to report
        return snapshots


def _family(
    prefix: str, spec: _Field, labels: list[str]
) -> CounterMetricFamily | GaugeMetricFamily:
    name = f"trio_kcm_{prefix}_{spec.field}{spec.unit_suffix}"
    if spec.kind == "counter":
        return CounterMetricFamily(name, spec.help, labels=labels)
    return GaugeMetricFamily(name, spec.help, labels=labels)


def _families(snapshots: Iterable[_Snapshot]) -> Iterator[Metric]:
    snapshots = list(snapshots)
    for spec in _MUX_FIELDS:
        family = _family("mux", spec, ["mux"])
        for snap in snapshots:
            family.add_metric([snap.name], _value(snap.mux, spec.field))
        yield family
    for spec in _STREAM_FIELDS:
        if spec.field == "state":
            family = _family("stream", spec, ["mux", "stream", "state"])
            for snap in snapshots:
                for index, stats in snap.streams:
                    for state in StreamState:
                        value = 1.0 if stats.state is state else 0.0
                        family.add_metric([snap.name, str(index), state.value], value)
            yield family
            continue
        family = _family("stream", spec, ["mux", "stream"])
        for snap in snapshots:
            for index, stats in snap.streams:
                family.add_metric([snap.name, str(index)], _value(stats, spec.field))
        yield family
    for spec in _SOCKET_FIELDS:
        family = _family("socket", spec, ["mux", "socket"])
        for snap in snapshots:
            for index, sock_stats in snap.sockets:
                family.add_metric([snap.name, str(index)], _value(sock_stats, spec.field))
        yield family
    for spec in _TOTALS_FIELDS:
        family = _family("streams", spec, ["mux"])
        for snap in snapshots:
            family.add_metric([snap.name], _value(snap.totals, spec.field))
        yield family
