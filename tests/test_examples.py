"""The README's main job runs and says what it did."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_quickstart_example() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "3", "5", "500"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "500 requests echoed whole over 3 connections" in result.stdout
    assert "replies per worker socket: [100, 100, 100, 100, 100]" in result.stdout
    assert "*** KCM statistics (1 MUX) ****" in result.stdout


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_worker_pool_example() -> None:
    out = run_example("worker_pool.py", "3", "300")
    assert "300 requests answered by 3 workers over one connection" in out
    assert "requests per worker: [100, 100, 100]" in out


def test_connection_pool_example() -> None:
    out = run_example("connection_pool.py", "3", "4", "50")
    assert "200 requests answered over 3 connections by 4 tasks" in out
    counts = out.split("requests per connection: [")[1].split("]")[0].split(", ")
    assert len(counts) == 3 and sum(map(int, counts)) == 200 and all(int(c) > 0 for c in counts)


def test_pinned_replies_example() -> None:
    out = run_example("pinned_replies.py", "16", "20", "3")
    assert "16 clients each got their own 20 replies, from 3 workers" in out
    assert "requests read: 320" in out


def test_supervised_pool_example() -> None:
    out = run_example("supervised_pool.py", "2", "24", "8")
    assert "24 requests answered over a pool of 2 supervised connections" in out
    assert "event: connect() failed" in out  # refused before the backend listened
    assert "event: replacing psock-" in out  # dropped by the backend, replaced
    stats = out.split("connections attached: ")[1]
    attached, failed = int(stats.split(",")[0]), int(stats.split("failed: ")[1].split(",")[0])
    assert attached >= 3 and failed >= 2  # 8 answers per connection: 3 at least


def test_stall_failover_example() -> None:
    out = run_example("stall_failover.py", "1500", "1024")
    assert "psock-0 stalled: " in out
    line = out.split("of 1500 messages, psock-0 wrote ")[1]
    wrote = int(line.split(" ")[0])
    in_flight = int(line.split("(")[1].split(" ")[0])
    carried = int(line.split("psock-1 carried ")[1])
    assert wrote + in_flight + carried == 1500
    assert carried > 750


def test_seqpacket_example() -> None:
    out = run_example("seqpacket_parts.py", "300000", "50000", "64000")
    assert "one message of 300004 bytes, sent in 7 parts, received in 5 pieces" in out
    assert "sha256 of the body matches" in out


def test_server_example() -> None:
    # Greeting and requests in one write: nothing read ahead is lost, and the
    # stranger's wrong greeting is refused alone.
    out = run_example("server.py", "6", "15")
    assert "6 clients, 90 requests read, 90 answered" in out
    assert "connections closed by their client: 6, failed: 0" in out
    assert "connections attached: 6 (the stranger was refused)" in out
