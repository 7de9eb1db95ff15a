"""The repository stands alone: no file names the design notes kept outside it.

The project was designed from notes that live outside the repository and will
never be in a wheel, an sdist or the documentation site.  What the code and
docs rely on is written in ``docs/`` (see ``docs/guarantees.md`` and
``docs/coming-from-kcm.md``, which cites the kernel's own sources), so no file
may point a reader at those notes.  This test fails, naming the file and the
line, when one does.

The needles are built from pieces, so that this file does not name them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: What no file may contain: the notes' file names, as names (not inside
#: another name: "colr-gradients-spec.md" is no mention), and their folder.
NEEDLES = (
    "SPEC" + ".md",
    "kcm" + "-reference",
    "/work/" + "shared",
)
_PATTERN = re.compile(
    "|".join(rf"(?<![\w.-]){re.escape(n)}" if n[0].isalnum() else re.escape(n) for n in NEEDLES)
)

#: Directories never searched when walking a tree without git: version
#: control, virtual environments, caches and build output.
SKIP_DIRS = frozenset(
    {
        ".git",
        ".hg",
        ".nox",
        ".tox",
        ".venv",
        "venv",
        "env",
        "build",
        "dist",
        "_build",
        "node_modules",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".hypothesis",
    }
)


def _git_files(root: Path) -> list[Path] | None:
    """The files git knows in ``root`` (tracked, and new ones not ignored); None without git."""
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    command = ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others"]
    try:
        out = subprocess.run(
            [*command, "--exclude-standard"],
            capture_output=True,
            check=True,
            timeout=60,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None  # e.g. git refuses a checkout owned by another user
    names = sorted({name for name in out.decode("utf-8", "surrogateescape").split("\0") if name})
    return [root / name for name in names]


def _walked_files(root: Path) -> Iterator[Path]:
    """Every file under ``root``, outside the directories of SKIP_DIRS."""
    for directory, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            yield Path(directory, name)


def repository_files(root: Path) -> list[Path]:
    """The repository's files: from git in a checkout, else by walking the tree (an sdist).

    Virtual environments made inside the tree (a folder with ``pyvenv.cfg``)
    are not the repository's, whatever their name.
    """
    files = _git_files(root)
    if files is None:
        files = list(_walked_files(root))
    return [f for f in outside_venvs(files) if f.is_file() and not f.is_symlink()]


def outside_venvs(files: list[Path]) -> list[Path]:
    """``files`` less those inside a virtual environment (a folder with ``pyvenv.cfg``)."""
    venvs = {f.parent for f in files if f.name == "pyvenv.cfg"}
    return [f for f in files if not any(v in f.parents for v in venvs)]


def mentions(root: Path, files: list[Path]) -> list[str]:
    """``path:line: text`` for each line of a text file that contains a needle."""
    found = []
    for path in files:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if b"\0" in data[:8192]:
            continue  # binary
        text = data.decode("utf-8", "replace")
        if not _PATTERN.search(text):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if _PATTERN.search(line):
                found.append(f"{path.relative_to(root).as_posix()}:{number}: {line.strip()}")
    return found


def test_no_file_names_the_notes_outside_the_repository() -> None:
    files = repository_files(ROOT)
    assert any(f.name == "pyproject.toml" for f in files), f"no repository found at {ROOT}"
    found = mentions(ROOT, files)
    assert not found, (
        "these lines point at design notes that are not in the repository; say what they"
        " rely on in docs/ instead (citing the kernel's own sources where the kernel is"
        " meant):\n" + "\n".join(found)
    )


def test_the_search_finds_a_mention(tmp_path: Path) -> None:
    # The check above can fail: a mention is found, in a nested file, by line;
    # the directories skipped and binary files are not searched.
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\nSee the " + NEEDLES[0] + " file.\n")
    (tmp_path / "notes.txt").write_text("the colr-gradients-" + NEEDLES[0].lower() + " file\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "cached.txt").write_text(NEEDLES[1] + "\n")
    (tmp_path / "blob.bin").write_bytes(b"\0" + NEEDLES[1].encode())
    found = mentions(tmp_path, list(_walked_files(tmp_path)))
    assert found == [f"docs/page.md:3: See the {NEEDLES[0]} file."]


def test_a_virtual_environment_in_the_tree_is_not_searched(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\n")
    venv = tmp_path / ".v"
    (venv / "lib").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr\n")
    (venv / "lib" / "METADATA").write_text("See " + NEEDLES[0] + "\n")
    files = [tmp_path / "pyproject.toml", venv / "pyvenv.cfg", venv / "lib" / "METADATA"]
    assert outside_venvs(files) == [tmp_path / "pyproject.toml"]
    assert mentions(tmp_path, files) != []  # it would be found, were it searched
