"""The chaos soak's CI variant: a few seconds per configuration.

Each run is :func:`soak.chaos.run_soak` (the soak program, ``python -m soak``)
over real loopback TCP: streams closed, reset, cut mid-message and stalled at
random while senders and receivers keep going; its invariants are listed in
``soak/chaos.py``.  Between them the runs cover ``retry_in_doubt`` True and
False, ``auto_close`` True and False, and the three built-in policies.  Long
runs: ``nox -s soak -- --duration 600``.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from soak.chaos import FAULT_KINDS, run_soak

#: Seconds of traffic and faults per run (the drain at the end adds about one).
DURATION = 7.0

CONFIGS = [
    pytest.param(1, "round-robin", True, True, id="round-robin-retry-autoclose"),
    pytest.param(2, "batch-affinity", False, True, id="batch-affinity-noretry-autoclose"),
    pytest.param(3, "least-queued", True, False, id="least-queued-retry-manualclose"),
    pytest.param(4, "round-robin", False, False, id="round-robin-noretry-manualclose"),
]


@pytest.mark.parametrize(("seed", "policy", "retry_in_doubt", "auto_close"), CONFIGS)
async def test_chaos_soak(seed: int, policy: str, retry_in_doubt: bool, auto_close: bool) -> None:
    report = await run_soak(
        DURATION,
        seed,
        policy=policy,
        retry_in_doubt=retry_in_doubt,
        auto_close=auto_close,
    )
    summary = report.summary()
    # Every invariant held; if not, the assertion shows each breach.
    assert report.ok, summary
    assert report.up_lost == 0, summary
    # The run did something: faults of every kind were injected, the mux saw
    # them, fresh connections replaced the dead ones, and messages flowed both
    # ways throughout.
    for kind in FAULT_KINDS:
        assert report.faults[kind] >= 1, f"no {kind!r} fault was injected\n{summary}"
    assert sum(report.faults.values()) >= 8, summary
    assert report.stream_errors >= 3, summary
    assert report.connections > report.streams, summary
    assert report.up_accepted >= 500, summary
    assert report.up_received >= report.up_accepted // 2, summary
    assert report.down_received >= 100, summary
    if not retry_in_doubt:
        # At most once: nothing is written twice, so nothing is read twice.
        assert report.up_duplicates == 0, summary


def test_the_reliability_page_names_tests_that_exist() -> None:
    # docs/reliability.md says which test proves each row: each must exist.
    root = pathlib.Path(__file__).resolve().parent.parent
    page = (root / "docs" / "reliability.md").read_text()
    named = set(re.findall(r"`(tests/[\w/]+\.py)::(\w+)", page))
    assert len(named) >= 20, named
    missing = [
        f"{path}::{name}"
        for path, name in sorted(named)
        if not re.search(rf"^(async )?def {name}\(", (root / path).read_text(), flags=re.MULTILINE)
    ]
    assert not missing, missing
