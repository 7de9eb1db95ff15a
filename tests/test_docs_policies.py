"""docs/policies.md: the tutorial's policy is the example's, and it works as told."""

from __future__ import annotations

import os
import pathlib
import random
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
import trio
import trio.testing

import trio_kcm

from .conftest import PeerReader, frame

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "policies.md"
PLUGIN = ROOT / "examples" / "policy_plugin"
P = trio_kcm.LengthPrefixed(">I", adjust=4)


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_the_tutorial_shows_the_example_files() -> None:
    assert (PLUGIN / "kcm_random_policy.py").read_text() in code_blocks("python")
    assert (PLUGIN / "pyproject.toml").read_text() in code_blocks("toml")


@pytest.fixture
def installed(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    """The example distribution as pip would install it: its module and a dist-info."""
    info = tmp_path / "kcm_random_policy-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kcm-random-policy\nVersion: 1.0\n")
    entry_points = re.search(
        r'\[project\.entry-points\."trio_kcm\.policies"\]\n(.*?)\n\n',
        (PLUGIN / "pyproject.toml").read_text(),
        flags=re.DOTALL,
    )
    assert entry_points is not None
    (info / "entry_points.txt").write_text(
        "[trio_kcm.policies]\n" + entry_points.group(1).replace('"', "") + "\n"
    )
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("kcm_random_policy", None)
    yield tmp_path
    sys.modules.pop("kcm_random_policy", None)


def test_the_registered_policy_is_found_and_built_with_options(installed: pathlib.Path) -> None:
    assert "random" in trio_kcm.available_policies()
    policy = trio_kcm.load_policy("random", seed=7)
    assert type(policy).__name__ == "RandomPolicy"
    assert policy.name == "random"
    assert isinstance(policy, trio_kcm.Policy)


def test_candidates_stay_exact_under_random_removals() -> None:
    sys.path.insert(0, str(PLUGIN))
    try:
        from kcm_random_policy import Candidates
    finally:
        sys.path.remove(str(PLUGIN))
    rng = random.Random(3)
    candidates: Candidates[int] = Candidates()
    model: set[int] = set()
    for step in range(2000):
        if model and rng.random() < 0.5:
            item = rng.choice(sorted(model))
            candidates.remove(item)
            model.discard(item)
        else:
            candidates.add(step)
            model.add(step)
        assert set(candidates.items) == model
        assert all(candidates.items[i] == item for item, i in candidates.where.items())
        assert len(candidates.where) == len(model)


async def test_the_tutorial_policy_in_a_real_mux(installed: pathlib.Path) -> None:
    async with trio_kcm.open_mux(parser=P, policy="random") as mux:
        pairs = [trio.testing.memory_stream_pair() for _ in range(3)]
        for ours, _ in pairs:
            mux.attach(ours)
        socks = [mux.socket() for _ in range(4)]
        sent = [frame(b"%d-%d" % (i, n)) for i in range(3) for n in range(100)]
        for i, (_, peer) in enumerate(pairs):
            await peer.send_all(b"".join(sent[i * 100 : (i + 1) * 100]))
        await trio.testing.wait_all_tasks_blocked()
        got = [sock.receive_many_nowait(1000) for sock in socks]
        assert sorted(m for g in got for m in g) == sorted(sent)  # each once, whole
        assert all(got)  # spread over every socket
        for n in range(40):
            await socks[n % 4].send(frame(b"out%d" % n))
        await trio.testing.wait_all_tasks_blocked()
        per_stream = [s.statistics().tx_msgs for s in mux.streams]
        assert sum(per_stream) == 40 and all(per_stream)
        out = [
            await PeerReader(peer).read_frames(k)
            for (_, peer), k in zip(pairs, per_stream, strict=True)
        ]
        assert sorted(m for o in out for m in o) == sorted(frame(b"out%d" % n) for n in range(40))


def test_trio_kcm_policies_lists_it(installed: pathlib.Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(installed), str(PLUGIN), *filter(None, [env.get("PYTHONPATH")])]
    )
    result = subprocess.run(
        [sys.executable, "-m", "trio_kcm", "policies"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["random"])
    assert "kcm-random-policy" in line
    assert "A random socket for each message" in result.stdout


def test_the_protocol_table_lists_every_method_of_policy() -> None:
    documented = set(re.findall(r"^\| `(\w+)\(", DOC.read_text(), flags=re.MULTILINE))
    methods = {
        name
        for name, value in vars(trio_kcm.Policy).items()
        if callable(value) and not name.startswith("_")
    }
    assert documented == methods


def test_the_tutorials_harness_test_passes(installed: pathlib.Path) -> None:
    (block,) = [b for b in code_blocks("python") if "PolicyHarness" in b]
    namespace: dict[str, object] = {}
    exec(compile(block, str(DOC), "exec"), namespace)
    test = namespace["test_random_policy_uses_only_candidates"]
    assert callable(test)
    test()
