"""nox sessions: tests, lint, typecheck.

Run ``nox -s tests`` (every supported Python found on this machine),
``nox -s docs``,
``nox -s lint``, ``nox -s typecheck``.
"""

from __future__ import annotations

import glob
import os
import shutil

import nox

nox.options.sessions = ["tests", "lint", "typecheck", "docs"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]


def _add_pyenv_to_path() -> None:
    """Put pyenv's interpreters on PATH so nox finds python3.X."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    dirs = sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin")))
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([d for d in dirs if d not in path] + path)


_add_pyenv_to_path()


def _have(python: str) -> bool:
    return shutil.which(f"python{python}") is not None


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite on each supported Python (an absent one is skipped)."""
    if not _have(str(session.python)):
        session.skip(f"python{session.python} is not installed on this machine")
    session.install("-e", ".[test]", "./policies")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the packages (trio_kcm and the policies distribution)."""
    # exceptiongroup: mypy checks the Python 3.10 branch, which imports it.
    session.install("-e", ".[cli,plot]", "./policies", "mypy>=1.10", "exceptiongroup>=1.2")
    session.run("mypy", "--strict", "trio_kcm", "policies/trio_kcm_policies")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the Sphinx documentation, warnings as errors."""
    session.install("-e", ".[docs]")
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
    """The chaos soak (python -m tests.chaos): loopback TCP while a fault injector kills streams.

    Arguments go to the runner: ``nox -s soak -- --duration 600 --seed 11``
    (default 60 s); ``-- --help`` lists the options.  Exits non-zero if an
    invariant broke.
    """
    session.install("-e", ".[test]")
    session.run("python", "-m", "tests.chaos", *session.posargs)
