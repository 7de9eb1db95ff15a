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
