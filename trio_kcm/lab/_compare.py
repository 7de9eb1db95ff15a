"""Run one workload once per policy: what ``trio-kcm lab`` does."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable, Mapping

import trio

from .._policy import available_policies
from ._engine import Contender, PolicyLike
from ._policies import parse_policies
from ._real import NO_LINK, run_loopback
from ._report import Comparison, check_labels
from ._results import Engine, RunResult
from ._virtual import run_virtual
from ._workload import Workload

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["compare"]


def compare(
    workload: Workload,
    policies: str | Iterable[PolicyLike] | Mapping[str, PolicyLike] | None = None,
    *,
    real: bool = False,
    progress: Callable[[int, float], None] | None = None,
) -> Comparison:
    """Run ``workload`` once per policy, and put the results side by side.

    Every policy is built before the first run, so that a name that is not
    installed or an option a factory refuses fails at once.  A policy that
    raises during its run does not stop the others: its error is recorded in
    :attr:`Comparison.errors` (run it alone with :func:`simulate` to see the
    traceback).

    It calls :func:`trio.run` once per policy, so it cannot be called from
    inside Trio (see :func:`simulate`).

    Args:
      workload: What to run.
      policies: The policies, each as :func:`simulate` takes it (a name, a
        :class:`PolicySpec`, or a new policy object: it serves one run), or a
        mapping of labels to those, or a list in text (``"round-robin,
        p2c(seed=7)"``, read by :func:`parse_policies`); each needs a label of
        its own.  Default: every installed policy.
      real: Run over loopback TCP in real time (:func:`run_real`) instead of
        in virtual time (:func:`simulate`).
      progress: Called now and then with the index of the policy running and
        the fraction of its issuing window done (0.0 when it starts).

    Returns:
      The results, in the order of ``policies``, and the errors.

    Raises:
      trio_kcm.PolicyLoadError: A policy's name or spec does not build.
      ValueError: A policy in text does not parse, two policies have one
        label, no policy is installed, or ``real`` with a workload that has a
        link.

    """
    if policies is None:
        policies = available_policies()
        if not policies:
            raise ValueError("no policies are installed (is trio-kcm installed?)")
    if real and workload.link is not None:
        raise ValueError(NO_LINK)
    if isinstance(policies, str):
        policies = parse_policies(policies)
    if isinstance(policies, Mapping):
        contenders = [Contender.make(workload, p, label) for label, p in policies.items()]
    else:
        contenders = [Contender.make(workload, p, None) for p in policies]
    check_labels(
        [c.label for c in contenders], " (give the policies as a mapping, label -> policy)"
    )
    engine: Engine = "real" if real else "virtual"
    results: list[RunResult] = []
    errors: dict[str, str] = {}
    for i, contender in enumerate(contenders):
        on_progress = None if progress is None else functools.partial(progress, i)
        if on_progress is not None:
            on_progress(0.0)
        try:
            results.append(_run(workload, contender, real, on_progress))
        except Exception as exc:  # a policy's bug must not hide the others' results
            errors[contender.label] = _describe(exc)
    return Comparison(workload, engine, results, errors)


def _run(
    workload: Workload,
    contender: Contender,
    real: bool,
    progress: Callable[[float], None] | None,
) -> RunResult:
    if real:
        return trio.run(run_loopback, workload, contender, progress)
    return run_virtual(workload, contender, progress)


def _describe(exc: BaseException) -> str:
    """``"RuntimeError: message"``, from inside the nurseries' groups of one."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"
