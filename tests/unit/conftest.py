"""Fixtures of the unit tier's actor tests: Thespian's in-process simpleSystemBase (no sockets)."""

from __future__ import annotations

import pytest

from harness import CHANNEL_PORT, TEST_KEYRING, ChannelEnd, FakeUpstream, in_process_system


@pytest.fixture
def asys():
    system = in_process_system()
    yield system
    system.shutdown()


@pytest.fixture
def node(asys):
    """(asys, a NodeRegistry in it)."""
    from actors.runtime.node import NodeRegistry

    return asys, asys.createActor(NodeRegistry)


@pytest.fixture
def upstream():
    """Scripted upstreams on the worker's transport seam (installed before any worker starts)."""
    from actors.runtime import transport

    fake = FakeUpstream()
    previous = transport.install(fake.transport)
    try:
        yield fake
    finally:
        transport.install(previous)
        fake.transport.close()


@pytest.fixture
def channel(upstream):
    """A stream channel in the mock network, and workers that sign frames for it."""
    from actors.runtime import stream_sender

    stream_sender.use_keyring(TEST_KEYRING)
    try:
        yield ChannelEnd(upstream.transport.listen(CHANNEL_PORT))
    finally:
        stream_sender.use_keyring(None)


@pytest.fixture
def engine():
    """Factory: engine(breaker=None, init=True, **deployment fields) -> a real InProcessEngine, closed at teardown."""
    from harness import InProcessEngine, deployment

    from actors.core.retry import RetryPolicy

    made = []

    def make(breaker=None, init=True, **overrides):
        overrides.setdefault("retry", RetryPolicy(max_retries=2, base_delay_s=0.01, max_delay_s=0.05, jitter="none"))
        made.append(InProcessEngine(deployment(**overrides), breaker=breaker, init=init))
        return made[-1]

    yield make
    for e in made:
        e.close()
