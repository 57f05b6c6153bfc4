"""Fixtures of the unit tier's actor tests: Thespian's in-process simpleSystemBase (no sockets)."""

from __future__ import annotations

import pytest

from harness import in_process_system


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
