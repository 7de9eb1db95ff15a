"""nox sessions: tests, lint, typecheck, docs, bench, soak.

``nox`` alone runs tests (on every supported Python found on this machine),
lint, typecheck and docs; ``nox -s bench`` and ``nox -s soak`` run on demand.
"""

from __future__ import annotations

import os
import re

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True
# An interpreter that is not installed is skipped ("Python interpreter 3.X not
# found"), also where CI is set, on which nox would otherwise fail the run.
nox.options.error_on_missing_interpreters = False

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def _add_pyenv_to_path() -> None:
    """Put pyenv's newest 3.X.Y of each of PYTHONS on PATH, so nox finds python3.X."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    versions = os.path.join(root, "versions")
    try:
        names = os.listdir(versions)
    except OSError:
        return
    newest: dict[str, tuple[int, str]] = {}
    for name in names:
        m = re.fullmatch(r"(3\.\d+)\.(\d+)", name)  # not 3.13t, 3.14-dev, ...
        if m and m[1] in PYTHONS and os.path.isdir(os.path.join(versions, name, "bin")):
            newest[m[1]] = max(newest.get(m[1], (-1, "")), (int(m[2]), name))
    dirs = [os.path.join(versions, newest[v][1], "bin") for v in PYTHONS if v in newest]
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([d for d in dirs if d not in path] + path)


_add_pyenv_to_path()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite on each supported Python (an absent one is skipped)."""
    session.install("-e", ".[test]", "-e", "./policies")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    # The ruff the tree is formatted with: 0.17 formats markdown code blocks too,
    # and a newer minor release may restyle.
    session.install("ruff~=0.17.0")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the packages (trio_kcm and the policies distribution)."""
    # exceptiongroup: mypy checks the Python 3.10 branch, which imports it.
    session.install(
        "-e", ".[cli,plot,prometheus]", "-e", "./policies", "mypy>=1.10", "exceptiongroup>=1.2"
    )
    session.run("mypy", "--strict", "trio_kcm", "policies/trio_kcm_policies")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx documentation, warnings as errors."""
    session.install("-e", ".[docs,prometheus]")  # autodoc imports trio_kcm.prometheus
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark suite (python -m benchmarks): trio-kcm vs raw Trio and pyzmq.

    Arguments go to the runner: ``nox -s bench -- --quick``, ``-- --only ping``,
    ``-- --update-doc docs/performance.md``.  The full suite takes a few minutes.
    """
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """The chaos soak (python -m soak): loopback TCP while a fault injector kills streams.

    Arguments go to the runner: ``nox -s soak -- --duration 600 --seed 11``
    (default 60 s); ``-- --help`` lists the options.  Exits non-zero if an
    invariant broke.
    """
    session.install("-e", ".[test]")
    session.run("python", "-m", "soak", *session.posargs)
