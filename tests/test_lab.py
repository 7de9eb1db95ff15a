"""The policy lab as a library: :mod:`trio_kcm.lab`, in-process.

The command that wraps it (``trio-kcm lab``) is tested in ``test_cli_lab.py``,
as a subprocess.  Only public names of ``trio_kcm.lab`` are used here.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_kcm
from trio_kcm import lab
from trio_kcm.lab import (
    Link,
    PolicySpec,
    RunResult,
    ServiceTime,
    Workload,
    format_seconds,
    jain,
    parse_bandwidth,
    parse_count,
    parse_duration,
    parse_link,
    parse_policies,
    parse_service,
    parse_size,
    percentile,
    simulate,
)

# -- service-time specs -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "mean", "factor", "slow"),
    [
        ("const:1ms", "const", 1e-3, 1.0, 0),
        ("exp:250us", "exp", 250e-6, 1.0, 0),
        ("exp:0.002", "exp", 2e-3, 1.0, 0),
        ("EXP:2e-3s", "exp", 2e-3, 1.0, 0),
        ("slow:1ms", "exp", 1e-3, 10.0, 1),
        ("slow:1ms,x4", "exp", 1e-3, 4.0, 1),
        ("exp:1ms,x10", "exp", 1e-3, 10.0, 1),
        ("const:1ms,x3,slow=2", "const", 1e-3, 3.0, 2),
        ("exp:1ms,x1", "exp", 1e-3, 1.0, 0),
        ("exp:1ms,x5,slow=0", "exp", 1e-3, 1.0, 0),
        ("pareto:1ms,alpha=2.5", "pareto", 1e-3, 1.0, 0),
        ("lognormal:3ms,sigma=0.5,x2", "lognormal", 3e-3, 2.0, 1),
    ],
)
def test_parse_service(text: str, kind: str, mean: float, factor: float, slow: int) -> None:
    spec = parse_service(text)
    assert spec.kind == kind
    assert spec.mean == pytest.approx(mean)
    assert spec.slow_factor == factor
    assert spec.slow_workers == slow
    # The canonical spelling parses back to the same distribution.
    assert parse_service(spec.describe()) == spec


def test_parse_service_options() -> None:
    assert parse_service("pareto:1ms").alpha == 1.5
    assert parse_service("pareto:1ms,alpha=3").alpha == 3.0
    assert parse_service("lognormal:1ms").sigma == 1.0
    assert parse_service("lognormal:1ms,sigma=2").sigma == 2.0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("gauss:1ms", "unknown service-time distribution 'gauss'"),
        ("exp", "give the mean"),
        ("exp:", "give the mean"),
        ("exp:0", "must be > 0"),
        ("exp:fast", "should look like 1ms"),
        ("exp:1h", "should look like 1ms"),
        ("exp:1ms,x0.5", "factor must be a number >= 1"),
        ("exp:1ms,xx", "unknown option 'xx'"),
        ("exp:1ms,alpha=2", "unknown option 'alpha=2' for exp"),
        ("pareto:1ms,alpha=1", "alpha must be a number > 1"),
        ("pareto:1ms,alpha=nan", "alpha must be a number > 1"),
        ("lognormal:1ms,sigma=0", "sigma must be"),
        ("exp:1ms,slow=2", "needs a factor"),
        ("exp:1ms,x2,slow=-1", "slow must be a whole number"),
        ("exp:1ms,x2,slow=two", "slow must be a whole number"),
    ],
)
def test_parse_service_errors(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_service(text)


def test_service_factor_and_capacity() -> None:
    spec = parse_service("exp:1ms,x10")
    assert [spec.factor(j) for j in range(3)] == [10.0, 1.0, 1.0]
    assert spec.capacity(8) == pytest.approx(7 * 1000 + 100)
    spec = parse_service("const:2ms,x4,slow=2")
    assert spec.capacity(4) == pytest.approx(2 * 500 + 2 * 125)


@pytest.mark.parametrize("text", ["const:1ms", "exp:1ms", "lognormal:1ms,sigma=0.5"])
def test_service_sample_mean(text: str) -> None:
    spec = parse_service(text)
    rng = random.Random(42)
    samples = [spec.sample(rng) for _ in range(20_000)]
    assert all(x > 0 for x in samples)
    assert statistics.fmean(samples) == pytest.approx(1e-3, rel=0.05)


def test_service_sample_pareto() -> None:
    spec = parse_service("pareto:1ms,alpha=1.5")
    rng = random.Random(42)
    samples = sorted(spec.sample(rng) for _ in range(20_000))
    xm = 1e-3 * (1.5 - 1) / 1.5  # the scale that makes the mean 1 ms
    assert samples[0] >= xm
    # The median of a Pareto is xm * 2^(1/alpha).
    assert samples[10_000] == pytest.approx(xm * 2 ** (1 / 1.5), rel=0.05)


# -- links ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "bandwidth"),
    [("100MB/s", 100e6), ("1Gbit/s", 125e6), ("512KiB/s", 512 * 1024), ("10MB", 10e6),
     ("8kbit", 1000.0), ("2.5 GB / s", 2.5e9), ("1000", 1000.0)],
)  # fmt: skip
def test_parse_bandwidth(text: str, bandwidth: float) -> None:
    assert parse_bandwidth(text) == pytest.approx(bandwidth)


def test_parse_link() -> None:
    link = parse_link("10MB/s,delay=50us,x10")
    assert link.bandwidth == 10e6 and link.delay == pytest.approx(50e-6)
    assert [link.bandwidth_of(i) for i in range(3)] == [1e6, 10e6, 10e6]
    assert parse_link(link.describe()) == link
    link = parse_link("1MB/s,x4,slow=2")
    assert link.slow_links == 2 and link.bandwidth_of(1) == 0.25e6
    assert parse_link("1MB/s,x1").slow_links == 0


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("fast", "a bandwidth should look like"),
        ("0MB/s", "must be > 0"),
        ("3 parsecs", "a bandwidth should look like"),
        ("1MB/s,x0.5", "factor must be a number >= 1"),
        ("1MB/s,delay=soon", "should look like 1ms"),
        ("1MB/s,slow=2", "needs a factor"),
        ("1MB/s,x2,slow=-2", "slow must be a whole number"),
        ("1MB/s,jitter=1ms", "unknown option 'jitter=1ms'"),
    ],
)
def test_parse_link_errors(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_link(text)


# -- units ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1ms", 1e-3), ("250us", 250e-6), ("250µs", 250e-6), ("2", 2.0), ("0.5s", 0.5),
     ("3e-3", 3e-3), ("100ns", 1e-7), ("1m", 60.0), (" 7 ms ", 7e-3)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ms", "1 hour", "-1s", "1e999", "1.2.3"])
def test_parse_duration_errors(text: str) -> None:
    with pytest.raises(ValueError, match=r"should look like|finite"):
        parse_duration(text)


def test_parse_size_and_count() -> None:
    assert parse_size("64") == 64
    assert parse_size("4k") == 4096
    assert parse_size("1MiB") == 1 << 20
    assert parse_size("2kB") == 2000
    with pytest.raises(ValueError, match="number of bytes"):
        parse_size("4 apples")
    assert parse_count("20k") == 20_000
    assert parse_count("1e5") == 100_000
    assert parse_count("1_000") == 1000
    with pytest.raises(ValueError, match="whole number"):
        parse_count("2.5")
    with pytest.raises(ValueError, match="whole number"):
        parse_count("many")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0012, "1.2ms"), (1.5, "1.5s"), (2e-6, "2us"), (3e-9, "3ns"), (0.0, "0s"),
     (12345.0, "12345s"), (0.99996, "1s"), (math.inf, "inf"), (math.nan, "-")],
)  # fmt: skip
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


# -- policy specs ------------------------------------------------------------------


def test_parse_policies() -> None:
    specs = parse_policies(
        "round-robin, p2c(seed=7),weighted-round-robin(socket_weights={0: 0.1, 1: 2}),"
        "consistent-hash(when_full=next, tx_key='socket'),round-robin"
    )
    assert specs == [
        PolicySpec("round-robin"),
        PolicySpec("p2c", (("seed", 7),)),
        PolicySpec("weighted-round-robin", (("socket_weights", {0: 0.1, 1: 2}),)),
        PolicySpec("consistent-hash", (("when_full", "next"), ("tx_key", "socket"))),
    ]
    assert [s.label for s in specs] == [
        "round-robin",
        "p2c(seed=7)",
        "weighted-round-robin(socket_weights={0: 0.1, 1: 2})",
        "consistent-hash(when_full='next', tx_key='socket')",
    ]
    assert parse_policies("a(x='1,2')") == [PolicySpec("a", (("x", "1,2"),))]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "name at least one"),
        (" , ", "name at least one"),
        ("a(", "unbalanced"),
        ("a)", "unbalanced"),
        ("a(x)", "options are key=value"),
        ("a(1=2)", "options are key=value"),
        ("a b", "not a policy name"),
        ("a(x=1+)", "neither a Python literal nor a word"),
        ("a(x=1)b", "closing"),
    ],
)
def test_parse_policies_errors(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        parse_policies(text)


# -- percentiles and fairness ----------------------------------------------------------


def test_percentile_nearest_rank() -> None:
    values = [float(i) for i in range(1, 1001)]  # 1 .. 1000
    assert percentile(values, 50) == 500
    assert percentile(values, 99) == 990
    assert percentile(values, 99.9) == 999
    assert percentile(values, 100) == 1000
    assert percentile(values, 0) == 1
    assert percentile([5.0], 99.9) == 5
    assert percentile([1.0, 2.0], 50) == 1
    assert percentile([1.0, 2.0], 50.1) == 2
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError, match="percentile"):
        percentile(values, 101)


@given(
    st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=300),
    st.floats(0, 100),
    st.floats(0, 100),
)
def test_percentile_properties(values: list[float], q1: float, q2: float) -> None:
    values.sort()
    lo, hi = sorted((q1, q2))
    p_lo, p_hi = percentile(values, lo), percentile(values, hi)
    assert p_lo in values and p_hi in values
    assert p_lo <= p_hi
    # Nearest rank: at least q% of the values are <= it, and fewer are < it.
    n = len(values)
    assert sum(v <= p_hi for v in values) >= hi / 100 * n - 1e-9
    assert sum(v < p_hi for v in values) < max(hi / 100 * n, 1) + 1e-9


def test_jain() -> None:
    assert jain([1, 1, 1, 1]) == pytest.approx(1.0)
    assert jain([1, 0, 0, 0]) == pytest.approx(0.25)
    assert jain([0.125] * 8) == pytest.approx(1.0)
    assert jain([2, 1]) == pytest.approx(9 / 10)
    assert math.isnan(jain([]))
    assert math.isnan(jain([0, 0]))


@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=50))
def test_jain_properties(values: list[float]) -> None:
    j = jain(values)
    if not any(values):
        assert math.isnan(j)
        return
    assert 1 / len(values) - 1e-9 <= j <= 1 + 1e-9
    assert jain([v * 3.5 for v in values]) == pytest.approx(j)  # scale-free


def test_statistics_of_a_result() -> None:
    # Worker 0 is twice as slow: capacity weights 0.5, 1, 1.
    w = Workload(workers=3, service=ServiceTime("exp", 1e-3, slow_factor=2.0, slow_workers=1))
    result = RunResult(
        workload=w,
        engine="virtual",
        policy="x",
        options={"k": 1},
        latencies=(0.003, 0.001, 0.002, 0.004),
        issued=5,
        issued_in_window=5,
        completed_in_window=3,
        window=1.0,
        end=2.0,
        steered=(1, 3, 0),
        busy=(0.5, 1.0, 0.0),
        max_queued=(1, 2, 0),
        requests_per_stream=(5,),
        replies_per_stream=(4,),
    )
    assert result.completed == 4 and result.unanswered == 1
    assert result.throughput == 3.0 and result.backlog == 2 and result.drain == 1.0
    assert result.p50 == 0.002 and result.max_latency == 0.004
    assert result.mean_latency == pytest.approx(0.0025)
    assert result.worker_shares == (0.25, 0.75, 0.0)
    rep = result.to_dict()
    assert rep["policy"] == "x" and rep["name"] == "x" and rep["options"] == {"k": 1}
    assert rep["completed"] == 4 and rep["unanswered"] == 1
    assert rep["throughput"] == 3.0
    assert rep["backlog"] == 2
    assert rep["drain"] == 1.0
    assert rep["latency"]["p50"] == 0.002
    assert rep["latency"]["max"] == 0.004
    assert rep["latency"]["mean"] == pytest.approx(0.0025)
    assert rep["worker_shares"] == [0.25, 0.75, 0.0]
    assert rep["worker_utilisation"] == [0.25, 0.5, 0.0]
    assert rep["jain"] == pytest.approx(jain([0.25, 0.75, 0.0]))
    # Relative to capacity shares 0.2, 0.4, 0.4.
    assert rep["jain_capacity"] == pytest.approx(jain([1.25, 1.875, 0.0]))
    empty = RunResult(workload=Workload(workers=2), engine="virtual", policy="y", steered=(0, 0))
    assert math.isnan(empty.p99) and math.isnan(empty.jain) and math.isnan(empty.throughput)
    rep = empty.to_dict()
    assert rep["latency"]["p99"] is None and rep["jain"] is None
    assert rep["throughput"] is None


def test_options_that_are_not_json_are_reprs() -> None:
    result = RunResult(
        workload=Workload(), engine="virtual", policy="p", options={"n": 2, "f": math.inf}
    )
    assert result.to_dict()["options"] == {"n": 2, "f": "inf"}


# -- the virtual engine, in-process -----------------------------------------------------


def workload(**overrides: Any) -> Workload:
    """A small workload: 3 streams, 4 workers (one 10x slower), 70 % load, 100 ms."""
    base: dict[str, Any] = {
        "streams": 3,
        "workers": 4,
        "service": parse_service("exp:1ms,x10"),
        "reply_size": 32,
        "duration": 0.1,
        "seed": 3,
    }
    base.update(overrides)
    if base.get("closed") is None and base.get("rate") is None:
        base.setdefault("load", 0.7)
    return Workload(**base)


def test_simulation_accounts_for_every_request() -> None:
    w = workload()
    result = simulate(w, PolicySpec("round-robin"))
    assert result.issued > 100
    assert len(result.latencies) == result.issued
    assert sum(result.steered) == result.issued
    assert sum(result.requests_per_stream) == result.issued
    assert sum(result.replies_per_stream) == result.issued
    # Round-robin per message: the shares differ by at most one.
    assert max(result.steered) - min(result.steered) <= 1
    assert result.window == pytest.approx(0.1)
    assert result.end >= result.window - 0.01
    assert all(x > 0 for x in result.latencies)


def test_simulation_latency_is_service_time_when_nothing_waits() -> None:
    # One stream, one worker, one request at a time: latency = service time exactly.
    w = workload(streams=1, workers=1, service=parse_service("const:2ms"), closed=1, duration=0.02)
    result = simulate(w, PolicySpec("least-queued"))
    assert result.issued == 10
    assert result.latencies == pytest.approx([0.002] * 10)
    assert result.busy == pytest.approx([0.02])


def test_simulation_latency_over_a_link_is_exact() -> None:
    # 100-byte requests and 1000-byte replies over 1 MB/s with 1 ms delay,
    # one request at a time: 0.1 ms + 1 ms there, 2 ms service, 1 ms + 1 ms back.
    w = workload(
        streams=1,
        workers=1,
        service=parse_service("const:2ms"),
        closed=1,
        duration=0.05,
        size=100,
        reply_size=1000,
        link=parse_link("1MB/s,delay=1ms"),
    )
    result = simulate(w, PolicySpec("round-robin"))
    assert result.latencies == pytest.approx([0.0051] * result.issued)
    assert result.issued == 10  # 50 ms / 5.1 ms, the first at 0


def test_simulation_link_queues_writes() -> None:
    # Two streams, the first 10x slower; least-queued writes replies on the
    # stream with the fewest unwritten bytes, round-robin alternates.
    base = {
        "streams": 2,
        "workers": 4,
        "service": parse_service("const:1ms"),
        "closed": 4,
        "duration": 0.05,
        "reply_size": 10_000,
        "link": parse_link("20MB/s,x10"),
    }
    rr = simulate(workload(**base), PolicySpec("round-robin"))
    lq = simulate(workload(**base), PolicySpec("least-queued"))
    assert rr.replies_per_stream[0] >= rr.replies_per_stream[1] - 4
    assert lq.replies_per_stream[0] * 3 < lq.replies_per_stream[1]
    assert len(lq.latencies) > len(rr.latencies)


def test_simulation_closed_loop_keeps_the_window() -> None:
    w = workload(service=parse_service("const:1ms"), closed=2, duration=0.05)
    result = simulate(w, PolicySpec("round-robin"))
    # 3 streams x 2 outstanding = 6 requests on 4 workers, constant 1 ms each.
    assert result.completed_in_window <= 4 * 50
    assert result.issued >= 4 * 45
    assert max(result.latencies) <= 0.002 + 1e-9


def test_simulation_messages_bound() -> None:
    w = workload(messages=123, duration=math.inf)
    result = simulate(w, PolicySpec("round-robin"))
    assert result.issued == 123
    assert len(result.latencies) == 123


def test_simulation_ignores_trio_scheduling_randomness() -> None:
    """The design claim: nothing depends on the order Trio runs ready tasks in."""
    import trio._core._run as run_module

    w = workload(closed=3, service=parse_service("pareto:1ms,alpha=1.5"), burst=1)
    outcomes = []
    saved = run_module._r
    try:
        for seed in (1, 2, 3):
            run_module._r = random.Random(seed)
            r = simulate(w, PolicySpec("batch-affinity"))
            outcomes.append((r.latencies, r.steered, r.replies_per_stream))
    finally:
        run_module._r = saved
    assert outcomes[0] == outcomes[1] == outcomes[2]


def test_simulation_seed_matters() -> None:
    a = simulate(workload(seed=1), PolicySpec("round-robin"))
    b = simulate(workload(seed=2), PolicySpec("round-robin"))
    assert a.latencies != b.latencies


def test_service_spec_is_a_value() -> None:
    assert parse_service("exp:1ms") == ServiceTime("exp", 0.001)


@settings(max_examples=20, deadline=None)
@given(
    streams=st.integers(1, 4),
    workers=st.integers(1, 6),
    service=st.sampled_from(
        ["const:1ms", "exp:1ms", "pareto:1ms,alpha=1.2", "lognormal:1ms,sigma=2", "exp:1ms,x5"]
    ),
    closed=st.integers(0, 4),
    burst=st.integers(1, 5),
    load=st.floats(0.1, 1.5),
    link=st.sampled_from([None, "1MB/s", "200kB/s,delay=300us,x3"]),
    policy=st.sampled_from(["round-robin", "batch-affinity", "least-queued"]),
    seed=st.integers(0, 2**32),
)
def test_simulation_invariants(
    streams: int,
    workers: int,
    service: str,
    closed: int,
    burst: int,
    load: float,
    link: str | None,
    policy: str,
    seed: int,
) -> None:
    spec = parse_service(service)
    w = workload(
        streams=streams,
        workers=workers,
        service=spec,
        closed=closed or None,
        burst=1 if closed else burst,
        rate=None if closed else load * spec.capacity(workers),
        duration=0.03,
        link=parse_link(link) if link else None,
        seed=seed,
    )
    r = simulate(w, PolicySpec(policy))
    # Every request is answered once, and accounted for everywhere.
    assert len(r.latencies) == r.issued
    assert sum(r.steered) == sum(r.requests_per_stream) == sum(r.replies_per_stream) == r.issued
    assert r.completed_in_window <= r.issued
    # Nothing is faster than the wire's delay.
    floor = 2 * w.link.delay if w.link else 0.0
    assert all(x >= floor - 1e-12 for x in r.latencies)
    assert all(b >= 0 for b in r.busy)
    if closed:
        assert r.issued >= streams * closed  # each window is written at 0
    # The same run again gives the same numbers.
    again = simulate(w, PolicySpec(policy))
    assert (again.latencies, again.steered, again.replies_per_stream) == (
        r.latencies,
        r.steered,
        r.replies_per_stream,
    )


# -- the workload as data ----------------------------------------------------------------


def test_workload_defaults_are_the_commands() -> None:
    w = Workload()
    assert (w.streams, w.workers, w.size, w.reply_size, w.duration, w.seed) == (4, 8, 64, 64, 2, 1)
    assert w.service == parse_service("exp:1ms,x10")
    assert w.open_loop and w.offered_load == pytest.approx(lab.DEFAULT_LOAD)
    assert w.capacity == pytest.approx(7100)
    assert w.arrival_rate == pytest.approx(0.75 * 7100)
    assert Workload(rate=1000).offered_load == pytest.approx(1000 / 7100)
    closed = Workload(closed=4)
    assert not closed.open_loop and closed.arrival_rate is None and closed.offered_load is None
    doc = closed.to_dict()
    assert doc["mode"] == "closed" and doc["rate"] is None and doc["closed"] == 4


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"streams": 0}, "streams must be at least 1"),
        ({"size": 8}, f"size must be at least {lab.MIN_SIZE}"),
        ({"load": 0.5, "rate": 100.0}, "give one of load, rate and closed, not load and rate"),
        ({"load": -1.0}, "load must be a number > 0"),
        ({"closed": 2, "burst": 4}, "burst is for open loop"),
        ({"duration": 0.0}, "duration must be > 0"),
        ({"duration": math.inf}, "the duration must be finite"),
        ({"messages": 0}, "messages must be at least 1"),
        ({"workers": 2, "service": parse_service("exp:1ms,x2,slow=3")}, "3 slow workers"),
        ({"streams": 1, "link": parse_link("1MB/s,x2,slow=2")}, "2 slow links"),
    ],
)
def test_workload_checks_its_fields(fields: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        Workload(**fields)


def test_workload_wants_parsed_specs() -> None:
    with pytest.raises(TypeError, match=re.escape("parse_service(text)")):
        Workload(service="exp:1ms")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: ServiceTime("gauss", 1e-3), "unknown service-time distribution"),
        (lambda: ServiceTime("slow", 1e-3), "unknown service-time distribution"),
        (lambda: ServiceTime("exp", 0.0), "mean service time must be > 0"),
        (lambda: ServiceTime("pareto", 1e-3, alpha=1.0), "alpha must be a number > 1"),
        (lambda: ServiceTime("exp", 1e-3, slow_factor=0.5), "slow-worker factor"),
        (lambda: Link(0.0), "a bandwidth must be > 0"),
        (lambda: Link(1e6, delay=-1.0), "the link delay must be >= 0"),
        (lambda: Link(1e6, slow_factor=2.0, slow_links=-1), "slow links must be >= 0"),
    ],
)
def test_specs_check_their_fields(make: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=re.escape(needle)):
        make()


def test_messages_without_a_duration_is_valid_json() -> None:
    # The window is bounded by the count alone: the duration is infinite, JSON null.
    w = workload(messages=40, duration=math.inf)
    doc = json.loads(lab.compare(w, ["round-robin"]).to_json())
    assert doc["workload"]["duration"] is None and doc["workload"]["messages"] == 40
    assert doc["policies"]["round-robin"]["requests"] == 40


def test_policy_spec_builds_with_a_seed_if_it_takes_one() -> None:
    policy = PolicySpec("round-robin").build(seed=3)  # round-robin takes no seed
    assert policy.name == "round-robin"
    with pytest.raises(trio_kcm.PolicyLoadError, match="failed to build"):
        PolicySpec("round-robin", (("bogus", 1),)).build(seed=3)
    with pytest.raises(trio_kcm.PolicyLoadError, match="no policy named"):
        simulate(workload(), "no-such-policy")


# -- a policy author's flow, from Python alone ------------------------------------------


class FewestBytes(trio_kcm.Policy):
    """Each request to the socket with the fewest queued bytes; replies on stream 0 if it can."""

    def __init__(self) -> None:
        self.sockets: list[trio_kcm.KCMSocket] = []
        self.streams: list[trio_kcm.AttachedStream] = []

    def socket_added(self, sock: trio_kcm.KCMSocket, /) -> None:
        self.sockets.append(sock)

    def socket_removed(self, sock: trio_kcm.KCMSocket, /) -> None:
        self.sockets.remove(sock)

    def pick_socket(
        self, stream: trio_kcm.AttachedStream | None, message: bytes, /
    ) -> trio_kcm.KCMSocket | None:
        return min(self.sockets, key=lambda s: s.rx_queued_bytes, default=None)

    def stream_added(self, stream: trio_kcm.AttachedStream, /) -> None:
        self.streams.append(stream)

    def stream_removed(self, stream: trio_kcm.AttachedStream, /) -> None:
        self.streams.remove(stream)

    def pick_stream(
        self, sock: trio_kcm.KCMSocket, messages: Sequence[bytes], nbytes: int, /
    ) -> trio_kcm.AttachedStream | None:
        return self.streams[0] if self.streams else None


def test_a_policy_authors_flow(tmp_path: Path) -> None:
    # The workload: from the dataclass, its parts from the command's grammar.
    w = Workload(
        streams=4,
        workers=8,
        service=parse_service("exp:1ms,x10"),
        load=0.75,
        duration=0.2,
        seed=5,
    )
    # One run by name, one with a policy object of one's own.
    base = simulate(w, "round-robin")
    mine = simulate(w, FewestBytes())
    assert base.policy == "round-robin" and mine.policy == "FewestBytes"
    assert base.engine == mine.engine == "virtual"
    for r in (base, mine):
        assert r.completed == r.issued > 500
        assert sum(r.worker_shares) == pytest.approx(1.0)
        assert 0 < r.p50 <= r.p99 <= r.p999 <= r.max_latency
        assert r.throughput > 0 and 0 < r.jain <= 1 + 1e-12
    # Load-aware beats round-robin with a slow worker, and keeps it lightly loaded.
    assert mine.p99 * 5 < base.p99
    assert mine.worker_shares[0] < 0.05 < base.worker_shares[0]
    assert mine.jain_capacity > base.jain_capacity
    # A new object, the same numbers: the run is deterministic.
    assert simulate(w, FewestBytes()).latencies == mine.latencies
    # Several side by side, labelled, and the JSON report.
    comparison = lab.compare(w, {"mine": FewestBytes(), "lq": "least-queued", "rr": base_spec()})
    assert [r.policy for r in comparison.results] == ["mine", "lq", "rr"]
    assert comparison["mine"].latencies == mine.latencies
    assert comparison["rr"].latencies == base.latencies  # a name or a spec: one seed
    out = tmp_path / "results.json"
    out.write_text(comparison.to_json())
    doc = json.loads(out.read_text())
    assert doc["format"] == lab.JSON_FORMAT == "trio-kcm-lab/1"
    assert doc["engine"] == "virtual" and doc["errors"] == {}
    assert doc["workload"] == w.to_dict()
    assert list(doc["policies"]) == ["mine", "lq", "rr"]
    assert doc["policies"]["mine"]["name"] == "FewestBytes"
    assert doc["policies"]["mine"]["latency"]["p99"] == mine.p99
    # The same from results made one by one.
    by_hand = lab.Comparison(w, "virtual", [base, mine])
    assert json.loads(by_hand.to_json())["policies"]["FewestBytes"] == mine.to_dict()


def base_spec() -> PolicySpec:
    return parse_policies("round-robin")[0]


def test_reports(tmp_path: Path) -> None:
    from rich.console import Console

    w = workload(duration=0.05)
    comparison = lab.compare(w, ["round-robin", "least-queued"])
    md = comparison.to_markdown().splitlines()
    assert md[0].startswith("| policy | msg/s | p50 | p99 | p99.9 |")
    assert md[2].startswith("| `round-robin` |")
    assert md[-1] == comparison.describe() + " (virtual time)."
    assert "3 streams -> 4 workers" in comparison.describe()
    console = Console(width=100, record=True, file=open(tmp_path / "out.txt", "w"))  # noqa: SIM115
    console.print(comparison.rich_table(width=100))
    console.file.close()
    text = console.export_text()
    assert "trio-kcm lab (virtual time)" in text and "least-queued" in text
    figure = comparison.plot(tmp_path / "latency.png")
    assert (tmp_path / "latency.png").read_bytes().startswith(b"\x89PNG")
    assert len(figure.axes) == 2


def test_comparison_checks_its_results() -> None:
    a = simulate(workload(duration=0.02), "round-robin")
    b = simulate(workload(duration=0.02, seed=4), "round-robin", label="seed 4")
    with pytest.raises(ValueError, match="another workload"):
        lab.Comparison(a.workload, "virtual", [a, b])
    with pytest.raises(ValueError, match="another workload or engine"):
        lab.Comparison(a.workload, "real", [a])
    with pytest.raises(ValueError, match="a label of its own: round-robin"):
        lab.Comparison(a.workload, "virtual", [a], errors={"round-robin": "boom"})
    with pytest.raises(ValueError, match="a label of its own: FewestBytes"):
        lab.compare(workload(), [FewestBytes(), FewestBytes()])
    with pytest.raises(KeyError):
        lab.Comparison(a.workload, "virtual", [a])["least-queued"]


class Broken(FewestBytes):
    """Fails at its 50th request."""

    def __init__(self) -> None:
        super().__init__()
        self.picks = 0

    def pick_socket(
        self, stream: trio_kcm.AttachedStream | None, message: bytes, /
    ) -> trio_kcm.KCMSocket | None:
        self.picks += 1
        if self.picks == 50:
            raise RuntimeError("a bug")
        return super().pick_socket(stream, message)


def test_compare_records_a_policys_crash_and_goes_on() -> None:
    calls: list[tuple[int, float]] = []
    comparison = lab.compare(
        workload(duration=0.05),
        ["round-robin", Broken(), "least-queued"],
        progress=lambda i, fraction: calls.append((i, fraction)),
    )
    assert [r.policy for r in comparison.results] == ["round-robin", "least-queued"]
    assert list(comparison.errors) == ["Broken"]
    assert "a bug" in comparison.errors["Broken"]
    assert json.loads(comparison.to_json())["errors"] == comparison.errors
    assert [c for c in calls if c[1] == 0.0] == [(0, 0.0), (1, 0.0), (2, 0.0)]
    assert all(0.0 <= f <= 1.0 for _, f in calls)


def test_progress_goes_from_0_to_1() -> None:
    fractions: list[float] = []
    simulate(workload(duration=0.5), "round-robin", progress=fractions.append)
    assert fractions and fractions == sorted(fractions)
    assert 0.0 < fractions[-1] <= 1.0


# -- real time ---------------------------------------------------------------------------


async def test_run_real_smoke() -> None:
    w = Workload(streams=2, workers=3, service=parse_service("const:2ms"), rate=300.0, duration=0.2)
    result = await lab.run_real(w, "least-queued", label="lq")
    assert result.engine == "real" and result.policy == "lq"
    assert 0 < result.completed <= result.issued
    assert sum(result.steered) == result.issued
    assert result.p50 >= 0.002 * 0.5  # a service time, more or less the timer's resolution
    with pytest.raises(ValueError, match="a link is for virtual time"):
        await lab.run_real(workload(link=parse_link("1MB/s")), "round-robin")


def test_run_real_from_sync_code() -> None:
    w = Workload(streams=1, workers=2, service=parse_service("const:1ms"), closed=2, messages=20)
    result = trio.run(lab.run_real, w, "round-robin")
    assert result.issued == result.completed == 20


# -- the public API ---------------------------------------------------------------------------

#: Names whose documentation is in docs/api.md (data and type aliases have no docstring).
DATA = {"DEFAULT_LOAD", "Engine", "JSON_FORMAT", "MIN_SIZE", "PolicyLike"}


@pytest.mark.parametrize("name", sorted(set(lab.__all__) - DATA))
def test_public_names_are_documented(name: str) -> None:
    obj = getattr(lab, name)
    assert inspect.getdoc(obj), f"{name} has no docstring"
    if inspect.isclass(obj):
        for attr, value in vars(obj).items():
            if attr.startswith("_") or not (callable(value) or isinstance(value, property)):
                continue
            assert inspect.getdoc(value), f"{name}.{attr} has no docstring"


def test_everything_exported_exists() -> None:
    assert sorted(lab.__all__) == sorted(set(lab.__all__))
    for name in lab.__all__:
        assert hasattr(lab, name)


# -- what importing costs ------------------------------------------------------------------


def test_import_needs_neither_rich_nor_matplotlib() -> None:
    code = (
        "import sys, trio_kcm\n"
        "assert 'trio_kcm.lab' not in sys.modules, 'import trio_kcm imported the lab'\n"
        "import trio_kcm.lab\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('rich', 'matplotlib'))\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]", out.stdout


def test_a_policy_with_options_as_text() -> None:
    w = workload(duration=0.05)
    text = simulate(w, "round-robin()")
    spec = simulate(w, PolicySpec("round-robin"))
    assert text.policy == "round-robin" and text.latencies == spec.latencies
    listed = lab.compare(w, "round-robin, least-queued()")
    assert [r.policy for r in listed.results] == ["round-robin", "least-queued"]
    assert listed["round-robin"].latencies == spec.latencies
    with pytest.raises(ValueError, match="one policy, not 2"):
        simulate(w, "round-robin(),least-queued()")
    with pytest.raises(ValueError, match="unbalanced"):
        simulate(w, "round-robin(")


def test_the_docs_example_runs(tmp_path: Path) -> None:
    page = Path(__file__).resolve().parent.parent / "docs" / "lab.md"
    [code] = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "| `fewest-bytes` |" in out.stdout
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["format"] == "trio-kcm-lab/1"
    assert list(doc["policies"]) == ["fewest-bytes", "least-queued", "round-robin"]
