"""Policy bugs: a policy that raises, or picks what it may not, and what the mux does.

A policy that raises is a bug: whatever it raises (even an exception type the
mux uses itself) and whichever task it raises in (a stream's reader or writer,
``send``, ``attach``, ``disable_receive``), the exception comes out of
``open_mux``, never swallowed.  A pick that is not a candidate is a bug too.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Sequence
from typing import Any

import pytest
import trio
import trio.testing

import trio_kcm
from trio_kcm.policies import RoundRobin

from .conftest import PeerReader, frame

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

P = trio_kcm.LengthPrefixed(">I", adjust=4)


class PolicyBug(Exception):
    pass


class RaisingRx(RoundRobin):
    def pick_socket(self, stream: Any, message: bytes, /) -> Any:
        raise PolicyBug("pick_socket bug")


class RaisingTx(RoundRobin):
    def pick_stream(self, sock: Any, messages: Sequence[bytes], nbytes: int, /) -> Any:
        raise PolicyBug("pick_stream bug")


def _leaves(group: BaseException) -> list[BaseException]:
    if isinstance(group, BaseExceptionGroup):
        return [leaf for e in group.exceptions for leaf in _leaves(e)]
    return [group]


async def test_pick_socket_raising_comes_out_of_open_mux() -> None:
    with trio.fail_after(10):  # a guard: the test must not hang if it is swallowed
        with pytest.RaisesGroup(
            pytest.RaisesExc(PolicyBug, match="pick_socket bug"), flatten_subgroups=True
        ):
            async with trio_kcm.open_mux(parser=P, policy=RaisingRx()) as mux:
                ours, peer = trio.testing.memory_stream_pair()
                mux.attach(ours)
                sock = mux.socket()
                await peer.send_all(frame(b"boom"))
                await sock.receive()  # the reader crashes; this is cancelled
                pytest.fail("a message was delivered")  # pragma: no cover


async def test_pick_socket_raising_in_a_user_task() -> None:
    # Messages waiting in the mux are steered when a socket is made: the
    # policy's exception comes out of mux.socket() and out of open_mux.
    policy = RoundRobin()
    with pytest.RaisesGroup(
        pytest.RaisesExc(PolicyBug, match="pick_socket bug"), flatten_subgroups=True
    ) as info:
        async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
            ours, peer = trio.testing.memory_stream_pair()
            mux.attach(ours)
            sock = mux.socket()
            other = mux.socket()
            await peer.send_all(frame(b"a") + frame(b"b"))
            await trio.testing.wait_all_tasks_blocked()
            assert other.statistics().rx_queued_msgs == 1
            policy.pick_socket = RaisingRx().pick_socket  # type: ignore[method-assign]
            with pytest.raises(PolicyBug) as raised:
                sock.disable_receive()  # its message moves: the policy is asked
            await trio.testing.wait_all_tasks_blocked()
            pytest.fail("the policy's exception was swallowed")  # pragma: no cover
    assert raised.value in _leaves(info.value)


async def test_pick_stream_raising_comes_out_of_send_and_open_mux() -> None:
    with trio.fail_after(10):
        with pytest.RaisesGroup(
            pytest.RaisesExc(PolicyBug, match="pick_stream bug"), flatten_subgroups=True
        ) as info:
            async with trio_kcm.open_mux(parser=P, policy=RaisingTx()) as mux:
                ours, _peer = trio.testing.memory_stream_pair()
                mux.attach(ours)
                sock = mux.socket()
                with pytest.raises(PolicyBug, match="pick_stream bug") as raised:
                    await sock.send(frame(b"x"))
                # The body goes on as if nothing happened; the mux does not.
    assert raised.value in _leaves(info.value)


async def test_pick_stream_raising_in_attach_comes_out_of_open_mux() -> None:
    # A group waits in the socket (no stream); attaching a stream makes the
    # mux pick for it, in attach() -- a user task.
    with pytest.RaisesGroup(
        pytest.RaisesExc(PolicyBug, match="pick_stream bug"), flatten_subgroups=True
    ):
        async with trio_kcm.open_mux(parser=P, policy=RaisingTx()) as mux:
            sock = mux.socket()
            await sock.send(frame(b"waits"))
            ours, _peer = trio.testing.memory_stream_pair()
            with pytest.raises(PolicyBug):
                mux.attach(ours)
            await trio.testing.wait_all_tasks_blocked()
            pytest.fail("the policy's exception was swallowed")  # pragma: no cover


async def test_pick_returning_a_non_candidate_is_a_bug() -> None:
    class Wrong(RoundRobin):
        target: Any = None

        def pick_socket(self, stream: Any, message: bytes, /) -> Any:
            return self.target

    policy = Wrong()
    with (
        trio.fail_after(10),
        pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match="not a receive candidate"), flatten_subgroups=True
        ),
    ):
        async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
            ours, peer = trio.testing.memory_stream_pair()
            mux.attach(ours)
            sock = mux.socket()
            policy.target = mux.socket()
            policy.target.disable_receive()  # not a candidate
            await peer.send_all(frame(b"x"))
            await sock.receive()
            pytest.fail("a message was delivered")  # pragma: no cover


async def test_pick_stream_raising_in_the_writer_comes_out_of_open_mux() -> None:
    # The holder's first group is held (None); a write on the stream makes the
    # mux pick for it again, from the stream's writer task: then it raises.
    class HoldsThenRaises(RoundRobin):
        holder: Any = None
        asked = 0

        def pick_stream(self, sock: Any, messages: Sequence[bytes], nbytes: int, /) -> Any:
            if sock is self.holder:
                self.asked += 1
                if self.asked == 1:
                    return None
                raise PolicyBug("pick_stream bug")
            return super().pick_stream(sock, messages, nbytes)

    policy = HoldsThenRaises()
    with trio.fail_after(10):
        with pytest.RaisesGroup(
            pytest.RaisesExc(PolicyBug, match="pick_stream bug"), flatten_subgroups=True
        ):
            async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
                ours, peer = trio.testing.memory_stream_pair()
                mux.attach(ours)
                holder = policy.holder = mux.socket()
                sender = mux.socket()
                await holder.send(frame(b"held"))
                assert policy.asked == 1
                await sender.send(frame(b"goes"))
                assert await PeerReader(peer).read_frames_within(1) == [frame(b"goes")]
                await trio.testing.wait_all_tasks_blocked()
                pytest.fail("the policy's exception was swallowed")  # pragma: no cover
        assert policy.asked == 2


def _error_of(kind: str) -> BaseException:
    return {
        "PolicyBug": PolicyBug("policy bug"),
        "OSError": OSError(errno.EIO, "policy bug"),
        "ClosedResourceError": trio.ClosedResourceError("policy bug"),
    }[kind]


@pytest.mark.parametrize("kind", ["PolicyBug", "OSError", "ClosedResourceError"])
@pytest.mark.parametrize("where", ["reader", "send", "disable_receive"])
async def test_any_exception_from_a_policy_comes_out_of_open_mux(
    where: str, kind: str, autojump_clock: trio.testing.MockClock
) -> None:
    """Whatever the policy raises, and whichever task it raises in, it is a
    bug of the policy's: open_mux must not swallow it (the spec: "never
    swallowed"), even when it is an exception type the mux also uses itself."""

    class Raises(RoundRobin):
        armed = False

        def pick_socket(self, stream: Any, message: bytes, /) -> Any:
            if self.armed:
                raise _error_of(kind)
            return super().pick_socket(stream, message)

        def pick_stream(self, sock: Any, messages: Sequence[bytes], nbytes: int, /) -> Any:
            if self.armed:
                raise _error_of(kind)
            return super().pick_stream(sock, messages, nbytes)

    policy = Raises()
    expected = type(_error_of(kind))
    with trio.fail_after(60):  # virtual time: close_timeout is 5 s
        with pytest.RaisesGroup(
            pytest.RaisesExc(expected, match="policy bug"), flatten_subgroups=True
        ):
            async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
                ours, peer = trio.testing.memory_stream_pair()
                mux.attach(ours)
                sock = mux.socket()
                other = mux.socket()
                if where == "reader":
                    policy.armed = True
                    await peer.send_all(frame(b"in"))
                elif where == "send":
                    policy.armed = True
                    with pytest.raises(expected):
                        await sock.send(frame(b"out"))
                else:
                    await peer.send_all(frame(b"a") + frame(b"b"))
                    await trio.testing.wait_all_tasks_blocked()
                    assert other.statistics().rx_queued_msgs == 1
                    policy.armed = True
                    with pytest.raises(expected):
                        sock.disable_receive()
                await trio.testing.wait_all_tasks_blocked()


@pytest.mark.parametrize("wrong", ["a string", 7, [1, 2]], ids=["str", "int", "list"])
async def test_a_pick_socket_that_is_not_a_socket_is_the_documented_error(wrong: Any) -> None:
    # Not an AttributeError from inside the mux: the RuntimeError naming the
    # policy that the Policy docs promise for any pick that is not a candidate.
    class Wrong(RoundRobin):
        def pick_socket(self, stream: Any, message: bytes, /) -> Any:
            return wrong

    policy = Wrong()
    with (
        trio.fail_after(10),
        pytest.RaisesGroup(
            pytest.RaisesExc(RuntimeError, match=r"policy <.*Wrong.*> picked .*not a receive"),
            flatten_subgroups=True,
        ),
    ):
        async with trio_kcm.open_mux(parser=P, policy=policy) as mux:
            ours, peer = trio.testing.memory_stream_pair()
            mux.attach(ours)
            sock = mux.socket()
            await peer.send_all(frame(b"x"))
            await sock.receive()
            pytest.fail("a message was delivered")  # pragma: no cover


@pytest.mark.parametrize("wrong", ["a string", 7, [1, 2]], ids=["str", "int", "list"])
async def test_a_pick_stream_that_is_not_a_stream_is_the_documented_error(wrong: Any) -> None:
    class Wrong(RoundRobin):
        def pick_stream(self, sock: Any, messages: Sequence[bytes], nbytes: int, /) -> Any:
            return wrong

    with pytest.RaisesGroup(
        pytest.RaisesExc(RuntimeError, match=r"policy <.*Wrong.*> picked .*not a transmit"),
        flatten_subgroups=True,
    ):
        async with trio_kcm.open_mux(parser=P, policy=Wrong()) as mux:
            ours, _peer = trio.testing.memory_stream_pair()
            mux.attach(ours)
            with pytest.raises(RuntimeError, match="not a transmit candidate"):
                await mux.socket().send(frame(b"x"))


async def test_a_policy_raising_in_a_batch_flush_comes_out_once() -> None:
    # A send inside batch() that finds the send buffer full flushes what the
    # batch gathered first; the pick for that flush raises.  The guard used
    # to be nested there (the flush and the send each reported it), so
    # open_mux raised a group holding the same exception twice.
    class Raises(RoundRobin):
        def pick_stream(self, sock: Any, messages: Sequence[bytes], nbytes: int, /) -> Any:
            raise ZeroDivisionError("pick_stream bug")

    with pytest.RaisesGroup(pytest.RaisesExc(ZeroDivisionError), flatten_subgroups=True) as info:
        async with trio_kcm.open_mux(parser=P, policy=Raises()) as mux:
            ours, _peer = trio.testing.memory_stream_pair()
            mux.attach(ours)
            sock = mux.socket(send_buffer_size=10)
            with pytest.raises(ZeroDivisionError):
                async with sock.batch():
                    await sock.send(frame(b"one"))  # held: 7 of 10 bytes
                    await sock.send(frame(b"two"))  # held: the buffer is full now
                    await sock.send(frame(b"three"))  # full: the batch is flushed first
    zeros = [e for e in _leaves(info.value) if isinstance(e, ZeroDivisionError)]
    assert len(zeros) == 1, repr(info.value)


async def test_one_policy_object_serves_one_open_mux() -> None:
    policy = RoundRobin()
    async with trio_kcm.open_mux(parser=P, policy=policy) as first:
        with pytest.raises(ValueError, match="already serves another open mux"):
            async with trio_kcm.open_mux(parser=P, policy=policy):
                pytest.fail("a second mux shares the policy")  # pragma: no cover
        with pytest.raises(ValueError, match="already serves another open mux"):
            async with trio_kcm.open_mux(parser=P, rx_policy=policy, tx_policy="round-robin"):
                pass  # pragma: no cover
        # The first mux is untouched: its streams and sockets go on.
        ours, peer = trio.testing.memory_stream_pair()
        first.attach(ours)
        sock = first.socket()
        await peer.send_all(frame(b"still"))
        assert await sock.receive() == frame(b"still")
    # Both sides of one mux may share it; once the mux closed, it is free.
    async with trio_kcm.open_mux(parser=P, rx_policy=policy, tx_policy=policy) as again:
        ours, peer = trio.testing.memory_stream_pair()
        again.attach(ours)
        await again.socket().send(frame(b"again"))
        assert await PeerReader(peer).read_frames_within(1) == [frame(b"again")]
