"""``trio-kcm lab``: its pure parts, and the virtual engine in-process.

The command as a whole is tested in ``test_cli_lab.py``, as a subprocess.
"""

from __future__ import annotations

import math
import random
import re
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_kcm._cli._lab_engine import simulate
from trio_kcm._cli._lab_stats import RunResult, jain, percentile, summarize
from trio_kcm._cli._lab_workload import (
    PolicySpec,
    ServiceSpec,
    Workload,
    format_seconds,
    parse_bandwidth,
    parse_count,
    parse_duration,
    parse_link,
    parse_policies,
    parse_service,
    parse_size,
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


def test_summarize() -> None:
    result = RunResult(
        policy="x",
        latencies=[0.003, 0.001, 0.002, 0.004],
        issued=5,
        issued_in_window=5,
        completed_in_window=3,
        window=1.0,
        end=2.0,
        steered=[1, 3, 0],
        busy=[0.5, 1.0, 0.0],
        max_queued=[1, 2, 0],
        requests_per_stream=[5],
        replies_per_stream=[4],
    )
    rep = summarize(result, [0.5, 1.0, 1.0], name="x", options={"k": 1})
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
    empty = summarize(RunResult(policy="y", steered=[0, 0]), [1.0, 1.0])
    assert empty["latency"]["p99"] is None and empty["jain"] is None
    assert empty["throughput"] is None


# -- the virtual engine, in-process -----------------------------------------------------


def workload(**overrides: object) -> Workload:
    base: dict[str, object] = {
        "streams": 3,
        "workers": 4,
        "service": parse_service("exp:1ms,x10"),
        "rate": 0.0,
        "closed": 0,
        "burst": 1,
        "size": 64,
        "reply_size": 32,
        "duration": 0.1,
        "messages": None,
        "seed": 3,
    }
    base.update(overrides)
    base["rate"] = base["rate"] or 0.7 * base["service"].capacity(base["workers"])  # type: ignore[attr-defined]
    if base["closed"]:
        base["rate"] = 0.0
    return Workload(**base)  # type: ignore[arg-type]


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
    assert parse_service("exp:1ms") == ServiceSpec("exp", 0.001)


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
        closed=closed,
        burst=1 if closed else burst,
        rate=load * spec.capacity(workers),
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
