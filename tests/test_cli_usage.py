"""``trio-kcm`` / ``python -m trio_kcm`` with no command: the usage, not an error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from trio_kcm._cli import COMMANDS, main


def test_no_command_prints_every_command_with_a_line_on_it() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "trio_kcm"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith("usage: trio-kcm")
    lines = result.stdout.splitlines()
    for command in COMMANDS:
        # argparse lists each subcommand as "  NAME   what it does"
        described = [ln for ln in lines if ln.split()[:1] == [command] and len(ln.split()) > 2]
        assert described, f"{command!r} has no line of its own in:\n{result.stdout}"


def test_no_command_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert "commands:" in out
    assert all(command in out for command in COMMANDS)


def test_unknown_command_is_still_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["bogus"])
    assert exc_info.value.code == 2
    assert "invalid choice: 'bogus'" in capsys.readouterr().err
