"""``trio-kcm policies``, run as a subprocess: the built-ins, plugins, broken plugins, --json.

The expected descriptions come from the policy classes themselves, and the
plugins are fake distributions written at test time (a ``*.dist-info`` folder
on ``PYTHONPATH``), so the command is checked against what is installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from trio_kcm import load_policy
from trio_kcm._cli import main
from trio_kcm.policies import BatchAffinity, LeastQueued, RoundRobin

BUILTINS = {"round-robin": RoundRobin, "batch-affinity": BatchAffinity, "least-queued": LeastQueued}
VERSION = importlib.metadata.version("trio-kcm")

PLUGIN_MODULE = '''
"""A third party's policy module (written at test time)."""
import trio_kcm


class FactoryError(Exception):
    pass


NOT_CALLABLE = 3


def make(**options):
    """Builds nothing: it raises."""
    raise FactoryError("the factory is broken")


def not_a_policy(**options):
    """Builds something else."""
    return object()


class Sticky(trio_kcm.Policy):
    """Sticky: always the first candidate.

    More lines that are not shown.
    """

    def pick_socket(self, stream, message):
        return None

    def pick_stream(self, sock, messages, nbytes):
        return None
'''


def first_line(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0]


def plugin(tmp_path: Path, name: str, entry_points: dict[str, str]) -> Path:
    """Write a distribution ``name`` 1.0 registering ``entry_points``; return its folder."""
    folder = tmp_path / name
    folder.mkdir()
    (folder / f"{name}_mod.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    info = folder / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = [f"{key} = {value.format(mod=f'{name}_mod')}" for key, value in entry_points.items()]
    (info / "entry_points.txt").write_text("[trio_kcm.policies]\n" + "\n".join(lines) + "\n")
    return folder


def policies(*args: str, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m trio_kcm policies ARGS``, with ``path`` on PYTHONPATH."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if path is not None:
        env["PYTHONPATH"] = str(path)
    return subprocess.run(
        [sys.executable, "-m", "trio_kcm", "policies", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def rows(stdout: str) -> dict[str, list[str]]:
    """The table's lines, by policy name (a name may have several)."""
    found: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if line and not line.startswith(" "):
            found.setdefault(line.split()[0], []).append(line)
    return found


def test_builtins_are_listed_with_their_distribution_and_description() -> None:
    result = policies()
    # Other plugins may be installed: the status says whether one of them is broken.
    assert result.returncode == (1 if "error:" in result.stdout else 0), result.stderr
    assert result.stderr == ""
    assert "\x1b[" not in result.stdout  # no terminal, no escape codes
    table = rows(result.stdout)
    for name, cls in BUILTINS.items():
        (line,) = table[name]
        assert f"trio-kcm {VERSION}" in line
        assert first_line(cls) in line
        assert "error" not in line
    assert "(default)" in table["batch-affinity"][0]
    assert "(default)" not in table["round-robin"][0]


def test_json() -> None:
    result = policies("--json")
    listed: list[dict[str, Any]] = json.loads(result.stdout)
    assert result.returncode == (0 if all(entry["ok"] for entry in listed) else 1)
    assert all((entry["error"] is None) == entry["ok"] for entry in listed)
    names = [entry["name"] for entry in listed]
    assert names == sorted(names)
    by_name = {entry["name"]: entry for entry in listed}
    for name, cls in BUILTINS.items():
        assert by_name[name] == {
            "name": name,
            "distribution": "trio-kcm",
            "version": VERSION,
            "entry_point": f"{cls.__module__}:{cls.__qualname__}",
            "description": first_line(cls),
            "ok": True,
            "error": None,
            "shadowed_by": None,
        }


BROKEN = {
    "broken": "{mod}_missing:Nope",
    "raises": "{mod}:make",
    "not-a-policy": "{mod}:not_a_policy",
    "not-callable": "{mod}:NOT_CALLABLE",
    "sticky": "{mod}:Sticky",
}


def test_broken_plugins_are_listed_with_their_errors(tmp_path: Path) -> None:
    path = plugin(tmp_path, "fakeplug", BROKEN)
    result = policies(path=path)
    assert result.returncode == 1, result.stderr  # some plugin is broken
    assert "Traceback" not in result.stderr
    table = rows(result.stdout)
    # The built-ins are still there, whole.
    for name, cls in BUILTINS.items():
        (line,) = table[name]
        assert f"trio-kcm {VERSION}" in line and first_line(cls) in line
    # The working plugin, with its distribution and the first line of its docstring.
    (line,) = table["sticky"]
    assert "fakeplug 1.0" in line
    assert "Sticky: always the first candidate." in line
    assert "More lines" not in result.stdout
    # The broken ones, each with its own error.
    expected = {
        "broken": "error: failed to import: ModuleNotFoundError: No module named"
        " 'fakeplug_mod_missing'",
        "raises": "error: failed to build: FactoryError: the factory is broken",
        "not-a-policy": "which is not a policy",
        "not-callable": "not a policy factory",
    }
    for name, error in expected.items():
        (line,) = table[name]
        assert "fakeplug 1.0" in line
        assert error in line, line
    broken = sum("error:" in line for lines in table.values() for line in lines)
    assert broken >= 4  # others may be installed
    assert f"{broken} broken" in result.stdout


def test_broken_plugins_in_json(tmp_path: Path) -> None:
    path = plugin(tmp_path, "fakeplug", BROKEN)
    result = policies("--json", path=path)
    assert result.returncode == 1, result.stderr
    by_name = {entry["name"]: entry for entry in json.loads(result.stdout)}
    assert set(BUILTINS) | set(BROKEN) <= set(by_name)  # others may be installed
    for name in BUILTINS:
        assert by_name[name]["ok"] is True
    assert by_name["sticky"]["ok"] is True
    assert by_name["sticky"]["distribution"] == "fakeplug"
    assert by_name["sticky"]["version"] == "1.0"
    assert by_name["sticky"]["description"] == "Sticky: always the first candidate."
    for name in ("broken", "raises", "not-a-policy", "not-callable"):
        entry = by_name[name]
        assert entry["ok"] is False and entry["error"], entry
    assert "ModuleNotFoundError" in by_name["broken"]["error"]
    assert by_name["raises"]["description"] == "Builds nothing: it raises."


def test_a_name_registered_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process, to keep the suite fast.  Which registration comes first
    # depends on sys.path; the other one must say it is shadowed by it.
    monkeypatch.syspath_prepend(str(plugin(tmp_path, "shadower", {"round-robin": "{mod}:Sticky"})))
    try:
        assert main(["policies"]) in (0, 1)  # 1 if some other installed plugin is broken
        lines = rows(capsys.readouterr().out)["round-robin"]
        assert len(lines) == 2
        (loaded,) = [line for line in lines if "shadowed" not in line]
        (shadowed,) = [line for line in lines if "shadowed" in line]
        winner = "shadower" if "shadower 1.0" in loaded else "trio-kcm"
        assert f"shadowed by {winner}'s" in shadowed
        # ... and the winner is the one that choosing the name loads.
        assert (type(load_policy("round-robin")).__name__ == "Sticky") == (winner == "shadower")
        assert main(["policies", "--json"]) in (0, 1)
        entries = json.loads(capsys.readouterr().out)
        registrations = {
            e["distribution"]: e["shadowed_by"] for e in entries if e["name"] == "round-robin"
        }
        assert registrations == {
            winner: None,
            ({"shadower", "trio-kcm"} - {winner}).pop(): winner,
        }
    finally:
        sys.modules.pop("shadower_mod", None)


def test_bad_option() -> None:
    result = policies("--bogus")
    assert result.returncode == 2
    assert "usage: trio-kcm" in result.stderr
    assert "unrecognized arguments: --bogus" in result.stderr
    assert result.stdout == ""
