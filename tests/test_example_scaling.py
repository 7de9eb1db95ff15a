"""examples/scaling_out.py: N server processes, each with its own mux, on one port.

The script runs as a subprocess with small numbers; what it prints is checked
against what it must have done.  How the kernel spreads the connections over
the SO_REUSEPORT listeners is its own business (a hash, not round robin), so
the tests check only that every connection was served by exactly one process
and that the servers' counts add up.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "scaling_out.py"


def run_script(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def numbers(out: str, label: str) -> list[int]:
    found = re.search(rf"^{label}: \[(.*)\]$", out, re.MULTILINE)
    assert found, out
    return [int(n) for n in found.group(1).split(", ")]


def check_served(out: str, processes: int, connections: int, requests: int) -> None:
    assert (
        f"{processes} processes served {connections} connections x {requests} requests: "
        "all replies correct"
    ) in out
    per_process = numbers(out, "connections per process")
    assert len(per_process) == processes
    assert sum(per_process) == connections
    # Each process read every request of the connections it accepted, no more.
    assert numbers(out, "requests per process") == [n * requests for n in per_process]
    rate = re.search(r"^throughput: (\d+) requests/s \((\d+) requests in", out, re.MULTILINE)
    assert rate, out
    assert int(rate.group(1)) > 0 and int(rate.group(2)) == connections * requests


def test_two_processes_share_a_port() -> None:
    out = run_script("2", "8", "50")
    check_served(out, 2, 8, 50)
    assert "clients in the parent" in out


def test_clients_in_processes_of_their_own() -> None:
    out = run_script("3", "7", "40", "--client-processes", "2")
    check_served(out, 3, 7, 40)
    assert "clients in 2 client processes" in out


def test_measure_mode() -> None:
    out = run_script("2", "4", "20", "--measure", "1")
    assert "4 connections x 20 requests, clients in the parent" in out
    assert re.search(r"^pair 1: 1 process\(es\): \d+ requests/s", out, re.MULTILINE), out
    assert re.search(r"^pair 1: 2 process\(es\): \d+ requests/s", out, re.MULTILINE), out
    assert re.search(
        r"^median ratio \(2 processes / 1 process\) over 1 pairs: \d+\.\d\d$", out, re.M
    )
