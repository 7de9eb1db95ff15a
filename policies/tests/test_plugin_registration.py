"""The distribution: its policies are found by name through entry points only.

These tests need the distribution installed (``pip install ./policies``, or
``-e``): entry points exist only for an installed distribution.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.resources
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio_kcm_policies

import trio_kcm

POLICIES = {
    "p2c": trio_kcm_policies.PowerOfTwoChoices,
    "peak-ewma": trio_kcm_policies.PeakEwma,
    "consistent-hash": trio_kcm_policies.ConsistentHash,
    "weighted-round-robin": trio_kcm_policies.WeightedRoundRobin,
}
DISTRIBUTION = "trio-kcm-policies"


def entry_point(name: str) -> importlib.metadata.EntryPoint:
    (ep,) = importlib.metadata.entry_points(group=trio_kcm.ENTRY_POINT_GROUP, name=name)
    return ep


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_registered_by_this_distribution(name: str) -> None:
    assert name in trio_kcm.available_policies()
    ep = entry_point(name)
    assert ep.dist is not None
    assert ep.dist.name == DISTRIBUTION
    assert ep.load() is POLICIES[name]


def test_the_distribution_registers_exactly_these() -> None:
    dist = importlib.metadata.distribution(DISTRIBUTION)
    ours = {ep.name for ep in dist.entry_points if ep.group == trio_kcm.ENTRY_POINT_GROUP}
    assert ours == set(POLICIES)
    assert {ep.group for ep in dist.entry_points} == {trio_kcm.ENTRY_POINT_GROUP}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_load_by_name_with_no_options(name: str) -> None:
    # As open_mux(policy=NAME) and the trio-kcm command build it.
    policy = trio_kcm.load_policy(name)
    assert type(policy) is POLICIES[name]
    assert isinstance(policy, trio_kcm.Policy)
    assert policy.name == name
    assert trio_kcm.load_policy(name) is not policy  # one object per mux
    # Both directions are its own, not the base class's NotImplementedError.
    for method in ("pick_socket", "pick_stream", "socket_added", "stream_added"):
        assert getattr(type(policy), method) is not getattr(trio_kcm.Policy, method), method


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_unknown_options_are_refused(name: str) -> None:
    with pytest.raises(trio_kcm.PolicyLoadError, match=name) as info:
        trio_kcm.load_policy(name, no_such_option=1)
    assert isinstance(info.value.__cause__, TypeError)
    with pytest.raises(TypeError):
        POLICIES[name](1)  # type: ignore[misc]  # options are keyword-only


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_docstring_starts_with_a_one_line_description(name: str) -> None:
    doc = inspect.cleandoc(POLICIES[name].__doc__ or "")
    first, *rest = doc.splitlines()
    assert 20 < len(first) <= 100 and first.endswith(".")
    assert rest and rest[0] == ""  # a summary line, then the body
    assert "Options:" in doc or (name == "p2c" and "seed" in doc)


def test_trio_kcm_never_imports_this_package() -> None:
    # Statically: no import of it anywhere in trio_kcm ...
    root = Path(trio_kcm.__file__).parent
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n.split(".")[0] == "trio_kcm_policies" for n in names), path
    # ... and at run time, listing the policies imports nothing of ours.
    code = (
        "import sys, trio_kcm, trio_kcm.policies\n"
        "names = trio_kcm.available_policies()\n"
        "assert 'p2c' in names, names\n"
        "assert 'trio_kcm_policies' not in sys.modules\n"
        "trio_kcm.load_policy('p2c')\n"
        "assert 'trio_kcm_policies' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_package_is_typed() -> None:
    assert importlib.resources.files("trio_kcm_policies").joinpath("py.typed").is_file()
    meta = importlib.metadata.metadata(DISTRIBUTION)
    assert meta["Name"] == DISTRIBUTION
    assert "Framework :: Trio" in meta.get_all("Classifier", [])
    assert "Typing :: Typed" in meta.get_all("Classifier", [])
    assert meta.get("License-Expression") == "MIT"
    assert any(r.split(";")[0].strip() == "trio-kcm" for r in meta.get_all("Requires-Dist", []))
    assert meta["Version"] == trio_kcm_policies.__version__


def test_the_trio_kcm_command_lists_them_with_their_descriptions() -> None:
    pytest.importorskip("rich")  # the command is trio-kcm's "cli" extra
    result = subprocess.run(
        [sys.executable, "-m", "trio_kcm", "policies", "--json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    for name, cls in POLICIES.items():
        assert listed[name]["distribution"] == DISTRIBUTION
        assert listed[name]["error"] is None
        assert listed[name]["description"] == inspect.cleandoc(cls.__doc__ or "").splitlines()[0]
