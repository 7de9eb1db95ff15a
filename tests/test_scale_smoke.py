"""benchmarks/scale.py runs end to end at a small scale (a smoke test, never a timing)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import run_json_program

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "benchmarks" / "scale.py"
CONNECTIONS = 300
RR = 20
ANNOUNCE = 4 * 1024 * 1024
LIMIT = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    if not PROGRAM.exists():
        pytest.skip("the benchmarks/ folder is not in this tree")
    out = tmp_path_factory.mktemp("scale") / "scale.json"
    command = [
        sys.executable,
        str(PROGRAM),
        "--connections",
        str(CONNECTIONS),
        "--hostile",
        "0.1",
        "--rr",
        str(RR),
        "--duration",
        "1",
        "--batch",
        "100",
    ]
    return run_json_program(command, out)


def test_every_phase_is_printed(run: tuple[str, dict[str, Any]]) -> None:
    stdout, _ = run
    assert f"attach: {CONNECTIONS} connections" in stdout
    assert f"healthy ({RR} connections)" in stdout
    assert "with 30 hostile" in stdout
    assert "close: server " in stdout


def test_all_connections_attach_and_idle_ones_cost_memory(
    run: tuple[str, dict[str, Any]],
) -> None:
    _, report = run
    attach = report["attach"]
    assert report["connections"] == CONNECTIONS
    assert attach["attached"] == CONNECTIONS
    assert attach["seconds"] > 0
    # Each attached stream costs the server something, and not megabytes.
    assert 0 < attach["server_rss_per_connection_bytes"] < 1024 * 1024


def test_request_response_runs_in_both_phases(run: tuple[str, dict[str, Any]]) -> None:
    _, report = run
    for phase in ("healthy", "hostile_phase"):
        r = report[phase]
        assert r["connections"] == RR, phase
        assert r["requests"] > RR, phase
        assert r["requests_per_s"] > 0, phase
        assert 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"], phase
        # The server answered at least every request the client counted.
        assert r["server"]["answered"] >= r["requests"], phase


def test_the_hostile_share_is_bounded_by_the_limit(run: tuple[str, dict[str, Any]]) -> None:
    _, report = run
    hostile = report["hostile_phase"]
    assert report["limit"] == LIMIT
    assert report["hostile"] == hostile["hostile_connections"] == CONNECTIONS // 10
    assert hostile["hostile_announced_bytes"] == 30 * ANNOUNCE
    # Hostile bytes went out, and the budget acted on them: 30 x 4 MiB cannot
    # fit in 64 MiB, so streams were held or failed with ENOBUFS.
    assert hostile["hostile_sent_bytes"] > LIMIT
    final = hostile["server"]["stats"]
    assert final["rx_budget_holds"] + final["rx_budget_failures"] > 0
    assert final["rx_budget_failures"] == hostile["server"]["errors"].get("ENOBUFS", 0)
    # What the mux held stayed within the limit (plus 2 x 4 KiB a stream).
    assert 0 < hostile["peak_rx_buffered"] <= LIMIT + 2 * 4096 * CONNECTIONS
    assert hostile["samples"]
    # No hostile sender finished: the last 100 bytes are never sent.
    assert hostile["hostile_sent_bytes"] < hostile["hostile_announced_bytes"]


def test_close_is_timed(run: tuple[str, dict[str, Any]]) -> None:
    _, report = run
    close = report["close"]
    failed = report["hostile_phase"]["server"]["stats"]["stream_errors"]
    assert close["server_streams"] == CONNECTIONS - failed
    assert 0 < close["server_handlers_s"] <= close["server_s"]
    assert close["client_s"] >= 0
    assert close["server_final"]["streams"] == 0
    assert close["server_hwm_kib"] >= report["attach"]["server_rss_kib"]
