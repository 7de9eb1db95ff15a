"""The ecosystem examples run, as scripts, and say they did their job.

Each runs in a subprocess with small parameters; what it prints is checked
against what it must have done.  An example that goes wrong either says so
(and exits with 1) or hangs, which the timeout turns into a failure.
"""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-W", "error", str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stderr, result.stderr
    return result.stdout


@pytest.mark.parametrize(
    "name", ["thrift_service.py", "tls_pool.py", "monitor.py", "line_protocol.py"]
)
def test_example_explains_itself(name: str) -> None:
    docstring = ast.get_docstring(ast.parse((EXAMPLES / name).read_text()))
    assert docstring and "Run: ``python examples/" + name in docstring


def test_thrift_service() -> None:
    pytest.importorskip("thriftpy2")
    out = run_example("thrift_service.py", "6", "20", "3", "2")
    # Every call of every thriftpy2 client got its own answer, through one
    # requester over a pool of 2 connections: replies matched by seqid.
    assert "6 thriftpy2 clients x 20 calls over 2 connections" in out
    assert "calls: 120, right answers: 120" in out
    assert "replies matched by seqid: 120, dropped: 0" in out
    assert "WRONG" not in out
    pool = re.search(r"calls per connection: \[(\d+), (\d+)\]", out)
    assert pool is not None, out
    assert int(pool[1]) + int(pool[2]) == 120 and min(int(pool[1]), int(pool[2])) > 0
    served = re.search(r"requests served per worker socket: \[(.*)\]", out)
    assert served is not None, out
    counts = [int(n) for n in served.group(1).split(",")]
    assert len(counts) == 3 and sum(counts) == 120 and min(counts) > 0


def test_tls_pool() -> None:
    pytest.importorskip("trustme")
    out = run_example("tls_pool.py", "3", "90")
    assert "came back whole: 90 of 90; duplicates: 0" in out
    streams = re.findall(
        r"psock-(\d): sent (\d+) messages \((\d+) bytes\), received (\d+) \((\d+) bytes\)", out
    )
    assert sorted(s[0] for s in streams) == ["0", "1", "2"], out
    for _, sent, sent_bytes, received, received_bytes in streams:
        # An echo comes back on the connection that carried the message.
        assert int(sent) > 0 and (sent, sent_bytes) == (received, received_bytes)
    assert sum(int(s[1]) for s in streams) == 90
    total = re.search(r"mux: sent 90 \((\d+) of (\d+) bytes\)", out)
    assert total is not None and total.group(1) == total.group(2), out


def test_monitor() -> None:
    out = run_example("monitor.py", "2", "500")
    assert "requests answered: 500 of 500 over 2 connections" in out
    # The backend drops a connection after at most 80 echoes, so 500 answered
    # requests took at least 7 connections: 2 to begin with, and at least 5
    # that the monitor made, each after a failure it saw.
    failures = re.findall(r"psock-\d+ failed \(EPIPE\): .*; rtt=\d+us .*retransmits=\d+", out)
    reconnects = re.findall(r"reconnected: psock-\d+ replaces psock-\d+", out)
    assert len(reconnects) >= 5, out
    assert len(failures) >= len(reconnects), out
    summary = re.search(r"backend drops: (\d+); failures seen: (\d+); reconnects: (\d+)", out)
    assert summary is not None, out
    drops, seen, made = map(int, summary.groups())
    assert drops >= seen == len(failures) and made == len(reconnects)


def test_line_protocol() -> None:
    out = run_example("line_protocol.py", "2", "3", "5")
    assert "wrong answers: 0" in out
    assert "client: hits = 15 after 15 INCRs" in out
    assert "client: refused before sending: the payload contains the delimiter" in out
    assert "server: closing a connection: EMSGSIZE" in out
    assert "raw client: the server hung up" in out
    sent = re.search(r"commands sent per connection: \[(\d+), (\d+)\]", out)
    assert sent is not None, out
    # 3 workers x 5 rounds x 7 commands, and the final GET
    assert int(sent.group(1)) + int(sent.group(2)) == 3 * 5 * 7 + 1
