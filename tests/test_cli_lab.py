"""``trio-kcm lab``, run as the user runs it: ``python -m trio_kcm lab ...``.

Small workloads (a few hundred virtual milliseconds), so that the whole file
takes seconds.  Determinism is checked across processes, where memory layout,
object ids and hash seeds differ.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import trio_kcm
from trio_kcm._cli import main

#: The workload most tests share: one worker ten times slower, 75% load.
SLOW = ["--service", "exp:1ms,x10", "--load", "0.75", "--duration", "100ms"]
#: Closed loop, heavy-tailed service, links with a slow one: every event kind.
CLOSED = [
    *("--service", "pareto:1ms,alpha=1.5", "--closed", "3", "--duration", "40ms"),
    *("--link", "20MB/s,delay=20us,x4", "--reply-size", "4k"),
]
#: Tiny, for tests about the output rather than the numbers.
TINY = ["--duration", "20ms"]


def _command(args: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "trio_kcm", "lab", *args]


#: Each subprocess gets a random hash seed and a known terminal width.
ENV = dict(os.environ, PYTHONHASHSEED="random", COLUMNS="120")


def parse(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


class Runs:
    """The slower subprocesses of this file, started together (2 cores: ~half the time)."""

    def __init__(self, folder: Path) -> None:
        self.plot = folder / "latency.png"
        commands = {
            "slow": [*SLOW, "--seed", "7", "--json"],
            "slow-again": [*SLOW, "--seed", "7", "--json"],
            "slow-seed-8": [
                *SLOW,
                "--seed",
                "8",
                "--policies",
                "round-robin,least-queued",
                "--json",
            ],
            "closed": [*CLOSED, "--seed", "7", "--json"],
            "closed-again": [*CLOSED, "--seed", "7", "--json"],
            "burst": [
                *("--policies", "round-robin,batch-affinity", "--service", "exp:1ms"),
                *("--burst", "8", "--load", "0.5", "--duration", "50ms", "--seed", "7", "--json"),
            ],
            "slow-link": [
                *("--policies", "round-robin,least-queued", "--service", "exp:1ms"),
                *("--link", "40MB/s,x10", "--reply-size", "16k", "--load", "0.6"),
                *("--duration", "50ms", "--seed", "7", "--json"),
            ],
            "table": [*TINY, "--policies", "round-robin,least-queued(),batch-affinity"],
            "unknown": [*TINY, "--policies", "round-robin,no-such-policy"],
            "plot": [*TINY, "--policies", "round-robin,least-queued", "--plot", str(self.plot)],
            "real": [
                *("--real", "--policies", "least-queued", "--service", "exp:2ms"),
                *("--rate", "300", "--duration", "300ms", "--json"),
            ],
        }
        procs = {
            name: subprocess.Popen(
                _command(args),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=ENV,
            )
            for name, args in commands.items()
        }
        self.results: dict[str, subprocess.CompletedProcess[str]] = {}
        try:
            for name, proc in procs.items():
                out, err = proc.communicate(timeout=120)
                self.results[name] = subprocess.CompletedProcess(
                    proc.args, proc.returncode, out, err
                )
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()

    def __getitem__(self, name: str) -> subprocess.CompletedProcess[str]:
        return self.results[name]

    def json(self, name: str) -> dict[str, Any]:
        return parse(self.results[name])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    return Runs(tmp_path_factory.mktemp("lab"))


# -- reproducibility ----------------------------------------------------------------


@pytest.mark.parametrize("workload", ["slow", "closed"])
def test_same_seed_same_json_across_processes(runs: Runs, workload: str) -> None:
    doc = runs.json(workload)
    assert runs[workload].stdout == runs[f"{workload}-again"].stdout
    # Every installed policy took part (the plugins too, if installed).
    assert list(doc["policies"]) == trio_kcm.available_policies()
    assert doc["errors"] == {}


def test_different_seed_different_numbers(runs: Runs) -> None:
    a = runs.json("slow")
    b = runs.json("slow-seed-8")
    assert list(b["policies"]) == ["round-robin", "least-queued"]
    for name in b["policies"]:
        pa, pb = a["policies"][name], b["policies"][name]
        assert pa["latency"] != pb["latency"]
        assert pa["requests"] != pb["requests"]


# -- the report ------------------------------------------------------------------------


def test_json_report_is_complete_and_consistent(runs: Runs) -> None:
    doc = runs.json("slow")
    assert doc["format"] == "trio-kcm-lab/1"
    assert doc["engine"] == "virtual"
    w = doc["workload"]
    assert w["streams"] == 4 and w["workers"] == 8
    assert w["service"] == "exp:1ms,x10" and w["slow_workers"] == 1 and w["slow_factor"] == 10
    assert w["mode"] == "open" and w["load"] == pytest.approx(0.75)
    assert w["rate"] == pytest.approx(0.75 * w["capacity"])
    assert w["capacity"] == pytest.approx(7100)
    assert w["seed"] == 7 and w["duration"] == pytest.approx(0.1)
    for name, rep in doc["policies"].items():
        assert rep["policy"] == rep["name"] == name
        assert rep["completed"] == rep["requests"] > 0
        assert rep["unanswered"] == 0
        assert rep["throughput"] > 0
        lat = rep["latency"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]
        assert len(rep["worker_shares"]) == 8
        assert sum(rep["worker_shares"]) == pytest.approx(1.0)
        assert sum(rep["worker_requests"]) == rep["requests"]
        assert 0 < rep["jain"] <= 1 + 1e-12
        assert 0 < rep["jain_capacity"] <= 1 + 1e-12
        assert sum(rep["stream_requests"]) == sum(rep["stream_replies"]) == rep["requests"]
        assert all(0 <= u <= 1 + 1e-9 for u in rep["worker_utilisation"])


def test_least_queued_beats_round_robin_with_a_slow_worker(runs: Runs) -> None:
    # Round-robin gives the 10x slower worker 1/8 of the requests, 7x what it
    # can serve: its queue grows for the whole run.  least-queued sends it
    # only what it keeps up with.
    doc = runs.json("slow")
    rr = doc["policies"]["round-robin"]
    lq = doc["policies"]["least-queued"]
    assert lq["latency"]["p99"] * 10 < rr["latency"]["p99"]
    assert lq["throughput"] > rr["throughput"]
    assert lq["worker_shares"][0] < 0.05 < rr["worker_shares"][0]
    assert lq["jain_capacity"] > 0.9 > rr["jain_capacity"]
    # Round-robin per message: exactly equal shares, Jain = 1.
    assert rr["jain"] > 0.9999


def test_batch_affinity_keeps_a_burst_on_one_worker(runs: Runs) -> None:
    # Eight requests written at once are read at once: batch-affinity queues
    # all eight on one worker (the kernel's behaviour), round-robin spreads them.
    doc = runs.json("burst")
    assert doc["workload"]["burst"] == 8
    ba = doc["policies"]["batch-affinity"]
    rr = doc["policies"]["round-robin"]
    assert max(ba["worker_max_queued"]) >= 7
    assert ba["latency"]["p50"] > 2 * rr["latency"]["p50"]


def test_closed_loop_over_links(runs: Runs) -> None:
    doc = runs.json("closed")
    w = doc["workload"]
    assert w["mode"] == "closed" and w["closed"] == 3 and w["rate"] is None
    assert w["link"] == "20MB/s,delay=20us,x4"
    for rep in doc["policies"].values():
        # Two writes over the wire, each at least 20 us of delay, plus service.
        assert rep["latency"]["p50"] > 40e-6
        assert rep["completed"] == rep["requests"]


def test_least_queued_avoids_a_slow_link(runs: Runs) -> None:
    # Stream 0 carries a tenth of the others' bandwidth: round-robin still
    # writes a quarter of the (large) replies on it and they queue there;
    # least-queued writes on the stream with the fewest unwritten bytes.
    doc = runs.json("slow-link")
    rr = doc["policies"]["round-robin"]
    lq = doc["policies"]["least-queued"]
    assert lq["latency"]["p99"] * 5 < rr["latency"]["p99"]
    assert lq["stream_replies"][0] < rr["stream_replies"][0] / 2


def test_table(runs: Runs) -> None:
    result = runs["table"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "trio-kcm lab (virtual time)" in out
    for word in ("round-robin", "least-queued", "batch-affinity", "p99.9", "Jain/cap", "backlog"):
        assert word in out
    assert "worker 0 10x slower" in out
    assert result.stderr == ""


def test_markdown(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", *TINY, "--policies", "least-queued", "--markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| policy | msg/s | p50 | p99 | p99.9 |")
    assert lines[1].startswith("|---|---|")
    assert lines[2].startswith("| `least-queued` |")
    assert "seed 1" in lines[-1]


@pytest.mark.skipif(
    "weighted-round-robin" not in trio_kcm.available_policies(),
    reason="needs the trio-kcm-policies plugins",
)
def test_policy_options_reach_the_policy(capsys: pytest.CaptureFixture[str]) -> None:
    args = [*SLOW, "--policies", "round-robin,weighted-round-robin(socket_weights={0: 0.1})"]
    assert main(["lab", *args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    wrr = doc["policies"]["weighted-round-robin(socket_weights={0: 0.1})"]
    assert wrr["name"] == "weighted-round-robin"
    assert wrr["options"] == {"socket_weights": {"0": 0.1}}
    # Weighted by speed, the slow worker gets about its 1/71 of the capacity.
    assert wrr["worker_shares"][0] == pytest.approx(1 / 71, abs=0.005)
    assert wrr["jain_capacity"] > 0.99


@pytest.mark.skipif(
    "weighted-round-robin" not in trio_kcm.available_policies(),
    reason="needs the trio-kcm-policies plugins",
)
def test_plugins_present(runs: Runs) -> None:
    doc = runs.json("slow")
    for name in ("p2c", "peak-ewma", "consistent-hash", "weighted-round-robin"):
        assert name in doc["policies"]


def test_plot_writes_a_png(runs: Runs) -> None:
    result = runs["plot"]
    out = runs.plot
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout.replace("\n", "")
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 10_000


def test_real_smoke(runs: Runs) -> None:
    doc = runs.json("real")
    assert doc["engine"] == "real"
    rep = doc["policies"]["least-queued"]
    assert rep["requests"] > 0
    assert rep["completed"] > 0
    assert rep["latency"]["p50"] >= 0.002 * 0.01  # some service time, whatever the clock


# -- arguments -------------------------------------------------------------------------------


def test_unknown_policy_is_named(runs: Runs) -> None:
    result = runs["unknown"]
    assert result.returncode == 2
    assert "unknown policy 'no-such-policy'" in result.stderr
    assert "round-robin" in result.stderr  # the installed ones are listed
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--service", "gauss:1ms"], "unknown service-time distribution 'gauss'"),
        (["--service", "exp:1ms,x0.1"], "factor must be a number >= 1"),
        (["--streams", "0"], "argument -m/--streams: must be in 1..4096"),
        (["--workers", "lots"], "argument -n/--workers"),
        (["--load", "0"], "argument --load: must be a number > 0"),
        (["--load", "50"], "too much"),
        (["--rate", "-3"], "argument --rate"),
        (["--rate", "100", "--closed", "2"], "not allowed with argument"),
        (["--json", "--markdown"], "not allowed with argument"),
        (["--size", "8"], "must be 20 bytes .. 1MiB"),
        (["--duration", "0"], "must be > 0"),
        (["--duration", "soon"], "should look like 1ms"),
        (["--messages", "0"], "must be >= 1"),
        (["--policies", "a(b"], "unbalanced"),
        (["--service", "exp:1ms,x10,slow=9"], "9 slow workers, but only 8 workers"),
        (["--closed", "2", "--burst", "4"], "--burst is for open loop"),
        (["--link", "fast"], "a bandwidth should look like 100MB/s"),
        (["--link", "1MB/s,x2,slow=5"], "5 slow links, but only 4 streams"),
        (["--link", "1MB/s", "--real"], "--link is for virtual time"),
        (["--plot", "/no/such/folder/x.png"], "no such directory"),
        (["--policies", "nope,least-queued,nada"], "unknown policies 'nope', 'nada'"),
        (["--policies", "round-robin(bogus=1)"], "failed to build"),
    ],
)
def test_bad_arguments_exit_2(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process (argparse and the checks before any run): fast.
    try:
        status = main(["lab", *args])
    except SystemExit as exc:
        status = exc.code  # type: ignore[assignment]
    captured = capsys.readouterr()
    assert status == 2
    assert needle in captured.err
    assert captured.out == ""


def test_help_documents_the_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["lab", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("KIND:MEAN", "pareto:1ms,alpha=1.5", "x10", "--closed", "--real", "--seed"):
        assert word in out


def test_progress_bar_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    status = main(["lab", "--policies", "round-robin", "--duration", "20ms"])
    assert status == 0
    assert "round-robin" in capsys.readouterr().out
