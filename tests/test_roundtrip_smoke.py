"""benchmarks/roundtrip.py runs end to end (a smoke test, never a timing)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import run_json_program

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "benchmarks" / "roundtrip.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, object]]:
    if not PROGRAM.exists():
        pytest.skip("the benchmarks/ folder is not in this tree")
    out = tmp_path_factory.mktemp("roundtrip") / "roundtrip.json"
    command = [sys.executable, str(PROGRAM), "--rounds", "50", "--warmup", "5", "--trace", "1"]
    return run_json_program(command, out)


def test_both_clients_are_printed(run: tuple[str, dict[str, object]]) -> None:
    stdout, _ = run
    assert "raw: 50 round trips" in stdout
    assert "kcm: 50 round trips" in stdout
    for column in ("p50 latency", "CPU per round trip", "task steps", "I/O waits"):
        assert stdout.count(column) == 2, column


def test_the_numbers_are_sane(run: tuple[str, dict[str, object]]) -> None:
    _, report = run
    clients = report["clients"]
    assert isinstance(clients, dict)
    assert set(clients) == {"raw", "kcm"}
    for kind, r in clients.items():
        assert r["rounds"] == 50, kind
        assert 0 < r["p50_us"] <= r["p99_us"], kind
        assert r["cpu_us"] > 0, kind
        assert r["cpu_us_instrumented"] > 0, kind
        # At least one step of the client task and one pass of the scheduler
        # per round trip: a message cannot go out and come back in less.
        assert r["steps"] >= 1, kind
        assert r["steps_by"]["main"] >= 1, kind
        assert r["io_waits"] >= 1, kind
        assert 0 <= r["io_waits_blocking"] <= r["io_waits"], kind
        assert sum(r["steps_by"].values()) == pytest.approx(r["steps"]), kind
        assert sum(r["steps_by_task"].values()) == pytest.approx(r["steps"]), kind
        assert r["trace"][0] == "-- round trip 1", kind
        assert any(event.startswith("step ") for event in r["trace"]), kind
    # The raw client has no mux tasks; trio-kcm's reader delivers every reply.
    assert clients["raw"]["steps_by"]["reader"] == 0
    assert clients["raw"]["steps_by"]["writer"] == 0
    assert clients["kcm"]["steps_by"]["reader"] >= 1
