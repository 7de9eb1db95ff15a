"""trio_kcm.prometheus: every statistic exported, with the right values and labels."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

import trio_kcm  # noqa: E402
from trio_kcm.prometheus import MuxCollector  # noqa: E402

from .conftest import HEADER, PeerReader, frame  # noqa: E402

PARSER = trio_kcm.LengthPrefixed(">I", adjust=4)

OBJECTS = {
    "mux": trio_kcm.MuxStatistics,
    "stream": trio_kcm.StreamStatistics,
    "socket": trio_kcm.SocketStatistics,
    "streams": trio_kcm.StreamTotals,
}
# What can go down is a gauge; everything else only grows and is a counter.
GAUGES = {
    "mux": {"streams", "sockets", "rx_buffered", "rx_budget_waiting"},
    "stream": {
        "tx_queued_msgs",
        "tx_queued_bytes",
        "state",
        "reserved_by",
        "reading_paused",
        "rx_ready_msgs",
        "stalled",
    },
    "socket": {
        "rx_queued_msgs",
        "rx_queued_bytes",
        "tx_queued_msgs",
        "tx_queued_bytes",
        "receive_enabled",
        "receive_ready",
        "tx_waiting",
        "tx_batched_msgs",
    },
    "streams": set(),
}
UNIT_SUFFIXES = ("", "_seconds")


def scrape(registry: Any) -> dict[str, Any]:
    """Scrape ``registry`` in the text format and parse it back: family name -> family."""
    text = prometheus_client.generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def family_for(families: dict[str, Any], obj: str, field: str) -> Any:
    found = [
        families[f"trio_kcm_{obj}_{field}{suffix}"]
        for suffix in UNIT_SUFFIXES
        if f"trio_kcm_{obj}_{field}{suffix}" in families
    ]
    assert len(found) == 1, f"{obj} statistic {field!r} is not exported (or twice)"
    return found[0]


def expected_samples(
    obj: str, field: str, stats: Any, labels: dict[str, str]
) -> Iterator[tuple[dict[str, str], float]]:
    value = getattr(stats, field)
    if isinstance(value, trio_kcm.StreamState):
        for state in trio_kcm.StreamState:
            yield {**labels, "state": state.value}, 1.0 if value is state else 0.0
    elif isinstance(value, tuple):  # reserved_by: exported as how many
        yield labels, float(len(value))
    else:
        yield labels, float(value)


def check_matches(families: dict[str, Any], name: str, mux: trio_kcm.Mux) -> int:
    """Check every field of every object of ``mux`` against the scrape; return samples checked."""
    objects: list[tuple[str, Any, dict[str, str]]] = [("mux", mux.statistics(), {"mux": name})]
    objects += [
        ("stream", h.statistics(), {"mux": name, "stream": str(h.index)}) for h in mux.streams
    ]
    objects += [
        ("socket", s.statistics(), {"mux": name, "socket": str(s.index)}) for s in mux.sockets
    ]
    objects.append(("streams", mux.stream_totals(), {"mux": name}))
    checked = 0
    for obj, stats, labels in objects:
        for f in dataclasses.fields(OBJECTS[obj]):
            family = family_for(families, obj, f.name)
            want_type = "gauge" if f.name in GAUGES[obj] else "counter"
            assert family.type == want_type, f"{family.name} should be a {want_type}"
            for want_labels, want_value in expected_samples(obj, f.name, stats, labels):
                got = [s.value for s in family.samples if s.labels == want_labels]
                assert got == [want_value], (family.name, want_labels, got, want_value)
                checked += 1
    return checked


async def test_every_statistic_is_exported_with_its_value() -> None:
    rx_ours, rx_peer = trio.testing.memory_stream_pair()
    slow_ours, slow_peer = trio.testing.lockstep_stream_pair()
    bad_ours, bad_peer = trio.testing.memory_stream_pair()
    async with trio_kcm.open_mux(
        parser=PARSER, policy="round-robin", auto_close=False, receive_buffer_size=10_000
    ) as mux:
        collector = MuxCollector(mux, name="main")
        registry = prometheus_client.CollectorRegistry()
        registry.register(collector)

        rx = mux.attach(rx_ours)
        socks = [mux.socket() for _ in range(3)]
        # Received: 6 whole messages and half a header, queued on the sockets.
        await rx_peer.send_all(b"".join(frame(b"in %d" % i) for i in range(6)) + b"\x00\x00")
        await trio.testing.wait_all_tasks_blocked()
        assert await socks[0].receive() == frame(b"in 0")
        socks[2].disable_receive()

        # Sent: some written, some stuck behind a peer that does not read.
        for i in range(4):
            await socks[1].send(frame(b"out %d" % i))
        slow = mux.attach(slow_ours)
        for i in range(4, 8):
            await socks[1].send(frame(b"out %d" % i))
        await trio.testing.wait_all_tasks_blocked()

        # A stream that failed (EMSGSIZE: a header announcing 4 GiB) and stays attached.
        bad = mux.attach(bad_ours)
        await bad_peer.send_all(HEADER.pack(2**32 - 1))
        error = await mux.errors().__anext__()
        assert error.stream is bad
        await trio.testing.wait_all_tasks_blocked()

        assert rx.statistics().rx_need_more_hdr > 0
        assert slow.statistics().tx_queued_msgs > 0
        assert bad.statistics().state == "failed"
        assert bad.statistics().rx_msg_too_big == 1
        assert mux.statistics().stream_errors == 1
        assert not socks[2].statistics().receive_enabled

        families = scrape(registry)
        checked = check_matches(families, "main", mux)
        # 19 mux fields, 3 streams x (18 fields + 3 state samples), 3 sockets x
        # 13 fields, 15 stream totals
        assert checked == 19 + 3 * 21 + 3 * 13 + 15
        # The traffic shows: not all zeros.
        assert families["trio_kcm_mux_rx_msgs"].samples[0].value == 6
        assert (
            families["trio_kcm_mux_tx_msgs"].samples[0].value
            == 8 - slow.statistics().tx_queued_msgs
        )

        # Let the stuck writes finish; the peers read what came.
        async with trio.open_nursery() as nursery:
            for peer in (rx_peer, slow_peer):
                nursery.start_soon(PeerReader(peer).read_until_eof)
            await mux.unattach(bad)
            await bad_ours.aclose()
            for sock in socks:
                await sock.aclose()
            for handle in (rx, slow):
                await trio.aclose_forcefully(await mux.unattach(handle))
        families = scrape(registry)
        check_matches(families, "main", mux)
        assert not families["trio_kcm_stream_rx_msgs"].samples  # no stream left
        assert families["trio_kcm_mux_psock_unattach"].samples[0].value == 3
    for peer in (rx_peer, bad_peer):
        await peer.aclose()


async def test_several_muxes_in_one_collector() -> None:
    registry = prometheus_client.CollectorRegistry()
    async with (
        trio_kcm.open_mux(parser=PARSER) as first,
        trio_kcm.open_mux(parser=PARSER) as second,
    ):
        collector = MuxCollector(first, name="first")
        collector.add(second, name="second")
        assert collector.names == ("first", "second")
        with pytest.raises(ValueError, match="already exported"):
            collector.add(second, name="first")
        registry.register(collector)
        # A second collector would export the same names: the registry refuses it.
        with pytest.raises(ValueError, match="Duplicated timeseries"):
            registry.register(MuxCollector(second, name="other"))

        ours, peer = trio.testing.memory_stream_pair()
        second.attach(ours)
        sock = second.socket()
        first.socket()
        first.socket()
        await peer.send_all(frame(b"hello"))
        assert await sock.receive() == frame(b"hello")

        families = scrape(registry)
        check_matches(families, "first", first)
        check_matches(families, "second", second)
        sockets = {s.labels["mux"]: s.value for s in families["trio_kcm_mux_sockets"].samples}
        assert sockets == {"first": 2.0, "second": 1.0}
        rx = families["trio_kcm_stream_rx_msgs"].samples
        assert [(s.labels, s.value) for s in rx] == [({"mux": "second", "stream": "0"}, 1.0)]

        collector.remove("first")
        families = scrape(registry)
        assert {s.labels["mux"] for s in families["trio_kcm_mux_sockets"].samples} == {"second"}
        with pytest.raises(KeyError):
            collector.remove("first")
    await peer.aclose()


async def test_http_scrape_from_another_thread() -> None:
    """start_http_server scrapes in its own thread: the stats are taken in Trio's."""
    registry = prometheus_client.CollectorRegistry()
    async with trio_kcm.open_mux(parser=PARSER) as mux:
        registry.register(MuxCollector(mux, name="web"))
        ours, peer = trio.testing.memory_stream_pair()
        mux.attach(ours)
        sock = mux.socket()
        for i in range(5):
            await sock.send(frame(b"%d" % i))
        assert len(await PeerReader(peer).read_frames(5)) == 5
        await trio.testing.wait_all_tasks_blocked()

        server, thread = prometheus_client.start_http_server(0, addr="127.0.0.1", registry=registry)
        try:
            url = f"http://127.0.0.1:{server.server_port}/metrics"

            def fetch() -> str:
                with urllib.request.urlopen(url, timeout=60) as response:
                    body: bytes = response.read()
                return body.decode()

            text = await trio.to_thread.run_sync(fetch)
        finally:
            server.shutdown()
            server.server_close()
            thread.join()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        check_matches(families, "web", mux)
        assert families["trio_kcm_stream_tx_msgs"].samples[0].value == 5
    await peer.aclose()


def test_a_finished_run_exports_nothing() -> None:
    async def main() -> MuxCollector:
        async with trio_kcm.open_mux(parser=PARSER) as mux:
            mux.socket()
            return MuxCollector(mux)

    collector = trio.run(main)
    families = list(collector.collect())
    assert families  # the families are still described...
    assert all(not family.samples for family in families)  # ...with nothing in them


def test_describe_lists_every_family_without_samples() -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        async with trio_kcm.open_mux(parser=PARSER) as mux:
            mux.socket()
            collector = MuxCollector(mux)
            return list(collector.describe()), list(collector.collect())

    described, collected = trio.run(main)
    assert [f.name for f in described] == [f.name for f in collected]
    assert all(not f.samples for f in described)
    total = sum(len(dataclasses.fields(cls)) for cls in OBJECTS.values())
    assert len(described) == total


def test_trio_kcm_does_not_need_prometheus_client() -> None:
    code = "import sys, trio_kcm; sys.exit('prometheus_client' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], timeout=60, check=False)
    assert result.returncode == 0
