"""Policy names and loading: the registry of ``trio_kcm.policies`` entry points.

``available_policies`` and ``load_policy`` for the built-ins, and third-party
plugins registered as entry points (the ``fakeplug`` distribution, written at
test time): listed without being imported, loaded with their options, and each
way a plugin can be broken (its module fails to import, its factory raises or
builds something that is not a policy), in ``load_policy`` and in ``open_mux``.
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import trio_kcm
from trio_kcm.policies import BatchAffinity, LeastQueued, RoundRobin

from .conftest import PeerReader, frame

P = trio_kcm.LengthPrefixed(">I", adjust=4)
BUILTINS = {"round-robin": RoundRobin, "batch-affinity": BatchAffinity, "least-queued": LeastQueued}


def test_available_policies_lists_the_builtins() -> None:
    names = trio_kcm.available_policies()
    assert set(BUILTINS) <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_load_builtin_policy(name: str) -> None:
    policy = trio_kcm.load_policy(name)
    assert type(policy) is BUILTINS[name]
    assert isinstance(policy, trio_kcm.Policy)
    assert policy.name == name
    # A policy object serves one mux: each load builds a new one.
    assert trio_kcm.load_policy(name) is not policy


def test_load_unknown_policy() -> None:
    with pytest.raises(trio_kcm.PolicyLoadError, match="no-such-policy") as info:
        trio_kcm.load_policy("no-such-policy")
    assert info.value.name == "no-such-policy"
    assert "round-robin" in str(info.value)  # it says what is installed
    assert isinstance(info.value, LookupError)


def test_builtin_policy_given_unknown_options() -> None:
    with pytest.raises(trio_kcm.PolicyLoadError, match="round-robin") as info:
        trio_kcm.load_policy("round-robin", no_such_option=1)
    assert info.value.name == "round-robin"
    assert isinstance(info.value.__cause__, TypeError)


FAKEPLUG_MOD = '''
"""A third party's policy module (written at test time)."""
import trio_kcm


class FactoryError(Exception):
    pass


def make(**options):
    raise FactoryError("the factory is broken")


def not_a_policy(**options):
    return object()


class Good(trio_kcm.Policy):
    """Sticky: always the first candidate added (that is still one)."""

    def __init__(self, **options):
        self.options = options
        self.sockets = []
        self.streams = []
        self.events = []

    def socket_added(self, sock):
        self.sockets.append(sock)

    def socket_removed(self, sock):
        self.sockets.remove(sock)

    def pick_socket(self, stream, message):
        self.events.append("pick_socket")
        return self.sockets[0] if self.sockets else None

    def stream_added(self, stream):
        self.streams.append(stream)

    def stream_removed(self, stream):
        self.streams.remove(stream)

    def pick_stream(self, sock, messages, nbytes):
        self.events.append("pick_stream")
        return self.streams[0] if self.streams else None
'''

FAKE_MODULES = ("fakeplug_mod", "fakeplug_missing_module")


@pytest.fixture
def fakeplug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A broken-and-working third-party distribution, installed on sys.path."""
    (tmp_path / "fakeplug_mod.py").write_text(textwrap.dedent(FAKEPLUG_MOD))
    info = tmp_path / "fakeplug-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[trio_kcm.policies]\n"
        "broken = fakeplug_missing_module:Nope\n"
        "raises = fakeplug_mod:make\n"
        "good = fakeplug_mod:Good\n"
        "not-a-policy = fakeplug_mod:not_a_policy\n"
    )
    for name in FAKE_MODULES:
        sys.modules.pop(name, None)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in FAKE_MODULES:
        sys.modules.pop(name, None)


def test_plugin_policies_are_listed_without_importing(fakeplug: Path) -> None:
    names = trio_kcm.available_policies()
    assert {"broken", "raises", "good", "not-a-policy"} <= set(names)
    assert set(BUILTINS) <= set(names)
    assert names == sorted(names)
    assert "fakeplug_mod" not in sys.modules


def test_plugin_that_fails_to_import(fakeplug: Path) -> None:
    with pytest.raises(trio_kcm.PolicyLoadError, match="broken") as info:
        trio_kcm.load_policy("broken")
    assert info.value.name == "broken"
    assert isinstance(info.value.__cause__, ImportError)
    assert "fakeplug_missing_module" in str(info.value)


def test_plugin_whose_factory_raises(fakeplug: Path) -> None:
    with pytest.raises(trio_kcm.PolicyLoadError, match="raises") as info:
        trio_kcm.load_policy("raises", some="option")
    assert info.value.name == "raises"
    cause = info.value.__cause__
    assert type(cause) is sys.modules["fakeplug_mod"].FactoryError
    assert str(cause) == "the factory is broken"


def test_plugin_that_builds_something_else(fakeplug: Path) -> None:
    with pytest.raises(trio_kcm.PolicyLoadError, match="not a policy") as info:
        trio_kcm.load_policy("not-a-policy")
    assert info.value.name == "not-a-policy"


def test_plugin_options_are_passed_through(fakeplug: Path) -> None:
    policy: Any = trio_kcm.load_policy("good", weight=3, label="x")
    assert type(policy) is sys.modules["fakeplug_mod"].Good
    assert isinstance(policy, trio_kcm.Policy)
    assert policy.name == "good"
    assert policy.options == {"weight": 3, "label": "x"}
    assert trio_kcm.load_policy("good").options == {}  # type: ignore[attr-defined]


async def test_broken_plugin_fails_open_mux(fakeplug: Path) -> None:
    for name in ("broken", "raises"):
        with pytest.raises(trio_kcm.PolicyLoadError) as info:
            async with trio_kcm.open_mux(parser=P, policy=name):
                pytest.fail("opened with a broken policy")  # pragma: no cover
        assert info.value.name == name
    with pytest.raises(trio_kcm.PolicyLoadError):
        async with trio_kcm.open_mux(parser=P, tx_policy="broken"):
            pytest.fail("opened with a broken policy")  # pragma: no cover


async def test_plugin_policy_works_in_a_real_mux(fakeplug: Path) -> None:
    async with trio_kcm.open_mux(parser=P, policy="good") as mux:
        policy: Any = mux.rx_policy
        assert mux.tx_policy is policy
        assert type(policy).__name__ == "Good" and policy.name == "good"
        pairs = [trio.testing.memory_stream_pair() for _ in range(2)]
        for ours, _ in pairs:
            mux.attach(ours)
        s0, s1 = mux.socket(), mux.socket()
        await pairs[1][1].send_all(b"".join(frame(b"%d" % i) for i in range(6)))
        await trio.testing.wait_all_tasks_blocked()
        # Sticky: everything to the first socket, out on the first stream.
        assert s0.receive_many_nowait(100) == [frame(b"%d" % i) for i in range(6)]
        with pytest.raises(trio.WouldBlock):
            s1.receive_nowait()
        for i in range(4):
            await (s0 if i % 2 else s1).send(frame(b"out%d" % i))
        assert await PeerReader(pairs[0][1]).read_frames_within(4) == [
            frame(b"out%d" % i) for i in range(4)
        ]
        assert policy.events.count("pick_socket") == 6
        assert policy.events.count("pick_stream") == 4
