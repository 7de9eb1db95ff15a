"""The benchmark suite's quick mode works end to end (a smoke test, never a timing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if not (ROOT / "benchmarks" / "__main__.py").exists():
        pytest.skip("the benchmarks/ folder is not in this tree")
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--no-profile", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "### Throughput" in proc.stdout
    report: dict[str, object] = json.loads(out.read_text())
    return report


def _have_zmq() -> bool:
    try:
        import zmq  # noqa: F401
    except ImportError:
        return False
    return True


def test_every_configuration_kind_ran(quick_report: dict[str, object]) -> None:
    summary = quick_report["summary"]
    assert isinstance(summary, dict)
    keys = {row["key"] for row in summary["throughput"]}
    expected = {
        "raw-naive",
        "raw-batched",
        "kcm-send",
        "kcm-send-16-4",
        "kcm-send-many",
        "kcm-batch",
        "kcm-send-many-4x4",
    }
    pings = {"ping-raw", "ping-kcm"}
    if _have_zmq():
        expected.add("zmq")
        pings.add("ping-zmq")
    assert expected <= keys
    assert pings <= {row["key"] for row in summary["latency"]}


def test_every_configuration_moved_messages(quick_report: dict[str, object]) -> None:
    summary = quick_report["summary"]
    assert isinstance(summary, dict)
    for row in summary["throughput"]:
        assert not row["errors"], row
        assert row["msgs_per_s"] > 0, row
    for row in summary["latency"]:
        assert not row["errors"], row
        assert row["p50_us"] > 0, row


def test_memory_and_targets_are_reported(quick_report: dict[str, object]) -> None:
    memory = quick_report["memory"]
    assert isinstance(memory, dict)
    assert memory["kcm_stream"] > 0
    assert memory["kcm_socket"] > 0
    targets = quick_report["targets"]
    assert isinstance(targets, list)
    assert any("ping-pong" in t["target"] for t in targets)


def test_the_microbenchmarks_run() -> None:
    micro = ROOT / "benchmarks" / "micro.py"
    if not micro.exists():
        pytest.skip("the benchmarks/ folder is not in this tree")
    proc = subprocess.run(
        [sys.executable, str(micro), "--scale", "0.01"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = dict(line.split(None, 1) for line in proc.stdout.splitlines()[1:])
    assert set(rows) == {
        "rx-raw",
        "rx-many",
        "rx-receive",
        "tx-raw",
        "tx-many",
        "tx-batch",
        "tx-send",
        "tx-send16",
    }
    assert all(float(rate.replace(",", "")) > 0 for rate in rows.values())
