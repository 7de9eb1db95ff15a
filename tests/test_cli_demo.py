"""``trio-kcm demo``: the command as a subprocess, and its checks against faulty peers.

The subprocess tests read the summary the command prints without a terminal;
the in-process tests give the demo a peer that corrupts, drops or repeats one
reply (framed by the reference framer in conftest) and check it notices.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
from rich.console import Console

from trio_kcm._cli import main
from trio_kcm._cli._demo import DemoConfig, Requests, Tally, print_summary, run_demo

from .conftest import frame, unframe_all


def demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m trio_kcm demo ARGS``."""
    return subprocess.run(
        [sys.executable, "-m", "trio_kcm", "demo", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def field(stdout: str, key: str) -> str:
    """The value of the summary line ``  key: value``."""
    match = re.search(rf"^\s*{re.escape(key)}: (.*)$", stdout, re.MULTILINE)
    assert match, f"no {key!r} line in:\n{stdout}"
    return match.group(1)


def check_summary(stdout: str, *, sockets: int) -> tuple[int, list[int]]:
    """Check the summary adds up; return (messages received, replies per worker)."""
    sent = int(field(stdout, "messages sent").split()[0])
    received = int(field(stdout, "messages received"))
    assert received > 0
    assert received == sent
    shares = re.findall(r"(\d+) \((\d+\.\d)%\)", field(stdout, "replies per worker"))
    per_worker = [int(n) for n, _ in shares]
    assert len(per_worker) == sockets
    assert sum(per_worker) == received
    assert abs(sum(float(p) for _, p in shares) - 100) < 0.1 * sockets
    rate = float(field(stdout, "throughput").split()[0])
    seconds = float(field(stdout, "time").split()[0])
    if seconds >= 0.1:  # printed to 0.01 s
        assert rate == pytest.approx(received / seconds, rel=0.1)
    assert field(stdout, "result") == "OK, every reply arrived whole, exactly once"
    return received, per_worker


def test_demo_runs_and_summarises() -> None:
    result = demo("--duration", "1", "-m", "2", "-n", "3", "--policy", "round-robin")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert result.stderr == ""
    assert "\x1b[" not in out  # not a terminal: no escape codes ...
    assert out.count("streams (psocks)") == 1  # ... and the table printed once, at the end
    assert out.startswith("trio-kcm demo: 2 streams to an echo peer on 127.0.0.1:")
    assert field(out, "policy") == "round-robin"
    assert field(out, "streams") == "2, stream errors: 0"
    assert field(out, "sockets") == "3, senders: 3"
    received, per_worker = check_summary(out, sockets=3)
    # Round-robin per message: every worker gets its turn.
    assert min(per_worker) > 0
    # The final table: one row per stream and per socket, and the same totals.
    for name in ("psock-0", "psock-1", "kcm-0", "kcm-1", "kcm-2"):
        assert re.search(rf"^\S*\s*{name} ", out, re.MULTILINE), name
    assert "psock-2" not in out and "kcm-3" not in out
    assert f"received {received}, in flight 0" in out
    rx = [int(m) for m in re.findall(r"kcm-\d \S\s+(\d+) ", out)]
    assert rx == per_worker


def test_demo_with_a_policy_per_direction() -> None:
    result = demo(
        *("--duration", "0.3", "-m", "3", "-n", "2", "--senders", "5", "--size", "1000"),
        *("--rx-policy", "least-queued", "--tx-policy", "round-robin"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert field(out, "policy") == "rx least-queued, tx round-robin"
    assert field(out, "sockets") == "2, senders: 5"
    assert "1000-byte payloads, 1004 bytes framed" in field(out, "messages sent")
    check_summary(out, sockets=2)


def test_demo_live_display() -> None:
    # --live redraws even without a terminal: escape codes, then the summary.
    result = demo("--duration", "0.6", "-m", "1", "-n", "2", "--live")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "\x1b[" in result.stdout
    out = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stdout)
    assert out.count("streams (psocks)") >= 2  # drawn, and redrawn
    check_summary(out, sockets=2)


def test_demo_unknown_policy() -> None:
    result = demo("--policy", "no-such-policy")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "usage: trio-kcm demo" in result.stderr
    assert "argument --policy: no policy named 'no-such-policy'" in result.stderr
    installed = re.search(r"\(installed: (.*)\)", result.stderr)
    assert installed, result.stderr
    assert {"batch-affinity", "least-queued", "round-robin"} <= set(installed[1].split(", "))


def test_demo_broken_plugin_policy(tmp_path: Path) -> None:
    (tmp_path / "brokenplug-1.0.dist-info").mkdir()
    info = tmp_path / "brokenplug-1.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[trio_kcm.policies]\nbroken = brokenplug_nope:X\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = demo("--tx-policy", "broken", env=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "trio-kcm demo: error: policy 'broken'" in result.stderr
    assert "No module named 'brokenplug_nope'" in result.stderr
    assert "trio-kcm demo:" not in result.stdout  # it stopped before starting anything


def test_demo_bad_option() -> None:
    result = demo("--streams", "0")
    assert result.returncode == 2
    assert "usage: trio-kcm demo" in result.stderr
    assert "argument -m/--streams: must be at least 1, not 0" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-n", "0"], "argument -n/--sockets: must be at least 1, not 0"),
        (["--senders", "-1"], "argument --senders: must be at least 1, not -1"),
        (["--size", "7"], "argument --size: must be at least 8, not 7"),
        (["--size", "2000000"], "argument --size: must be at most 1048576, not 2000000"),
        (["--size", "1.5"], "argument --size: expected an integer, not '1.5'"),
        (["--duration", "0"], "argument --duration: must be more than 0, not 0"),
        (["--duration", "nan"], "argument --duration: expected a finite number"),
        (["--duration", "soon"], "argument --duration: expected a number, not 'soon'"),
        (["--window", "0"], "argument --window: must be at least 1, not 0"),
        (["--rx-policy", "nope"], "argument --rx-policy: no policy named 'nope'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_demo_bad_options(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process, to keep the suite fast: argparse exits before anything runs.
    with pytest.raises(SystemExit) as info:
        main(["demo", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: trio-kcm" in err
    assert message in err


def test_demo_ctrl_c_ends_it_with_the_summary() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "trio_kcm", "demo", "--duration", "60", "-m", "2", "-n", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # The first line is printed once Ctrl-C is handled.
        assert proc.stdout.readline().startswith("trio-kcm demo: ")
        time.sleep(0.3)  # some traffic first (the test holds without it)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert "Traceback" not in err
    assert "interrupted: traffic stopped early by Ctrl-C" in out
    sent = int(field(out, "messages sent").split()[0])
    if sent:  # almost always: the senders start as the first line is printed
        assert proc.returncode == 0, out + err
        check_summary(out, sockets=2)
        assert float(field(out, "time").split()[0]) < 30
    else:
        assert proc.returncode == 1
        assert field(out, "result") == "FAILED, no request was sent"


# ---------------------------------------------------------------------------
# in-process: faulty peers


def faulty_peer(fault: str, *, at: int = 10) -> Callable[[trio.SocketStream], Awaitable[None]]:
    """An echo peer that corrupts, drops or repeats the ``at``-th frame (of all streams)."""
    count = 0

    async def peer(stream: trio.SocketStream) -> None:
        nonlocal count
        buffer = b""
        async with stream:
            try:
                async for data in stream:
                    frames, buffer = unframe_all(buffer + data)
                    out = []
                    for f in frames:
                        count += 1
                        if count != at or fault == "none":
                            out.append(f)
                        elif fault == "corrupt":
                            out.append(f[:-1] + bytes([f[-1] ^ 0xFF]))
                        elif fault == "repeat":
                            out += [f, f]
                        # "drop": nothing
                    if out:
                        await stream.send_all(b"".join(out))
            except trio.BrokenResourceError:
                pass

    return peer


CFG = DemoConfig(streams=2, sockets=2, senders=2, duration=0.2, drain_timeout=0.5)


async def run(fault: str) -> tuple[Tally, str]:
    console = Console(file=io.StringIO(), width=100)
    tally = await run_demo(CFG, console, live=False, peer=faulty_peer(fault), handle_sigint=False)
    with console.capture() as capture:
        print_summary(console, CFG, tally)
    return tally, capture.get()


async def test_a_good_peer_passes() -> None:
    tally, summary = await run("none")
    assert tally.ok
    assert tally.sent == tally.received > 20
    assert not tally.in_flight and not tally.errors and not tally.drain_cut
    assert "result: OK" in summary


async def test_a_corrupted_reply_fails_the_run() -> None:
    tally, summary = await run("corrupt")
    assert not tally.ok
    assert tally.corrupt == 1
    assert tally.received == tally.sent - 1
    assert not tally.in_flight and not tally.drain_cut
    assert "result: FAILED, replies 1 corrupted" in summary


async def test_a_missing_reply_fails_the_run() -> None:
    tally, summary = await run("drop")
    assert not tally.ok
    assert tally.missing == 1
    assert tally.received == tally.sent - 1
    assert tally.drain_cut  # it waited for them, in vain
    assert "result: FAILED, replies 1 missing (the drain was cut short)" in summary


async def test_a_repeated_reply_fails_the_run() -> None:
    tally, summary = await run("repeat")
    assert not tally.ok
    assert tally.unexpected == 1
    assert tally.received == tally.sent
    assert "result: FAILED, replies 1 duplicated or unexpected" in summary


def test_requests_are_unique_and_framed() -> None:
    make = Requests(20)
    seen = {make(seq) for seq in range(1000)}
    assert len(seen) == 1000
    for seq in (0, 255, 256, 10**12):
        message = make(seq)
        assert message == frame(message[4:])
        assert len(message) == 24
        assert int.from_bytes(message[4:12], "big") == seq
    with pytest.raises(ValueError):
        Requests(7)
