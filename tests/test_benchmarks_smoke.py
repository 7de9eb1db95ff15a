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
    report["_markdown"] = proc.stdout
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


def test_a_render_judges_an_old_run_by_todays_targets(
    quick_report: dict[str, object], tmp_path: Path
) -> None:
    old = {k: v for k, v in quick_report.items() if k != "_markdown"}
    old["targets"] = []  # a run made before any target existed
    saved = tmp_path / "old.json"
    saved.write_text(json.dumps(old))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--render", str(saved)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    targets = proc.stdout.split("### Targets", 1)[1]
    assert "| send x16 tasks / receive x4 tasks vs naive raw Trio, 1 KiB | >= 4x |" in targets


def test_the_floors_are_measured_and_reported(quick_report: dict[str, object]) -> None:
    summary = quick_report["summary"]
    assert isinstance(summary, dict)
    floors = {row["key"]: row for row in summary["floors"]}
    assert set(floors) == {"floor-pair", "floor-send", "floor-receive"}
    for row in floors.values():
        assert not row["errors"], row
        assert row["msgs_per_s"] > 0, row
    # The per-message trio-kcm rows carry their ratio to the floors; the others none.
    rows = {row["key"]: row for row in summary["throughput"]}
    for key in ("kcm-send", "kcm-send-16-4"):
        for name, floor in (
            ("vs_floor", "floor-pair"),
            ("vs_floor_send", "floor-send"),
            ("vs_floor_receive", "floor-receive"),
        ):
            expected = rows[key]["msgs_per_s"] / floors[floor]["msgs_per_s"]
            assert rows[key][name] == pytest.approx(expected), (key, name)
    assert rows["kcm-send-many"]["vs_floor"] is None
    text = quick_report["_markdown"]
    assert isinstance(text, str)
    assert "### Floors: Trio's own per-await rate" in text
    section = text.split("### Floors", 1)[1].split("\n### ", 1)[0]
    for row in floors.values():
        assert f"| {row['label']} |" in section
    assert "| trio-kcm send / receive, 1x1 | 1 KiB |" in section
    assert "x pair floor" in section


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


def test_the_fairness_benchmark_runs() -> None:
    program = ROOT / "benchmarks" / "fairness.py"
    if not program.exists():
        pytest.skip("the benchmarks/ folder is not in this tree")
    proc = subprocess.run(
        [sys.executable, str(program), "--scale", "0.01", "--work", "5"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {
        cells[0]: cells[1:]
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| case")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {"raw-send", "kcm-send", "kcm-receive", "raw-send-work", "kcm-send-work"}
    for rate, p50, p99, largest, steps in rows.values():
        assert float(rate.replace(",", "")) > 0
        assert 0 < float(p50.split()[0]) <= float(p99.split()[0]) <= float(largest.split()[0])
        assert int(steps.replace(",", "")) > 0


async def test_the_profile_runs_write_counter_counts_both_kinds_of_write(
    frozen_turns: None,
) -> None:
    # The profile runs count a mux's writes (Spec.count_writes) through hooks
    # on this process's objects; they must follow the mux's internals.
    if not (ROOT / "benchmarks" / "worker.py").exists():
        pytest.skip("the benchmarks/ folder is not in this tree")
    import trio
    import trio.testing

    import trio_kcm
    from benchmarks.worker import _WriteCounter

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listeners[0].accept()
    counter = _WriteCounter()
    frame = b"\x00\x00\x00\x02hi"
    async with trio_kcm.open_mux(parser=trio_kcm.LengthPrefixed(">I", adjust=4)) as mux:
        handle = mux.attach(client)
        counter.watch(client, handle)
        sock = mux.socket()
        await trio.testing.wait_all_tasks_blocked()
        await sock.send(frame)  # an idle stream: the sending task writes it
        # Until the mux sees a yield, later sends go to the writer: one write.
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(sock.send, frame)
        await trio.testing.wait_all_tasks_blocked()
    assert counter.writes == 2  # 1 by the sender, then 1 by the writer
    received = b""
    while len(received) < 5 * len(frame):
        received += await server.receive_some(1024)
    assert received == 5 * frame
    await server.aclose()
    await listeners[0].aclose()
