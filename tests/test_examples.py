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
