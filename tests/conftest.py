"""Shared fixtures: real actor systems on unique ports, a real mock provider, and no leaks.

Thespian admins daemonize and outlive the process that started them. Every process a
test run starts inherits ATOMR_TEST_RUN, so whatever a failed test left behind is found
by that marker and killed at the end of the session (and reported as a failure).
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import settings as hypothesis_settings

# Shared CI machines stall for hundreds of milliseconds at times: property tests check
# behaviour, never speed, so no per-example deadline.
hypothesis_settings.register_profile("atomr", deadline=None, print_blob=True)
hypothesis_settings.load_profile("atomr")

RUN_MARK = f"atomr-test-{uuid.uuid4().hex[:12]}"
os.environ["ATOMR_TEST_RUN"] = RUN_MARK
os.environ.setdefault("THESPIAN_BASE_IPADDR", "127.0.0.1")
# Thespian reads these once per process, when its admin module is imported: before any node starts.
os.environ.setdefault("CONVENTION_REREGISTRATION_PERIOD", "0:02")
os.environ.setdefault("CONVENTION_RESTART_PERIOD", "0:02")
os.environ["THESPLOG_FILE"] = f"/tmp/{RUN_MARK}-thespian.log"
# Every node and client of the run (and every process they start) signs its messages with
# this run's own cluster key, so the whole suite runs with authentication on (actors/security/).
for _name in ("ATOMR_CLUSTER_SECRET_PREVIOUS", "ATOMR_CLUSTER_SECRET_FILE"):
    os.environ.pop(_name, None)
TEST_KEY_LINE = f"test-run:{secrets.token_urlsafe(32)}"
os.environ["ATOMR_CLUSTER_SECRET"] = TEST_KEY_LINE

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.core.periods import parse_period  # noqa: E402
from actors.core.procstat import live_stat  # noqa: E402
from actors.ops.procs import port_is_listening, listening_pids  # noqa: E402
from actors.testing.windows import fresh_window_s  # noqa: E402,F401 - the tests import it from here

# Below the ephemeral range (32768+), so no client socket can be sitting on our ports.
_ports = itertools.count(21000 + (os.getpid() % 400) * 20, 3)


def free_port() -> int:
    """A port nothing listens on (steps of 3 leave room for a member beside a leader)."""
    for port in _ports:
        if port > 32000:
            raise RuntimeError("ran out of test ports")
        if not port_is_listening(port) and not listening_pids(port):
            return port
    raise RuntimeError("unreachable")


def marked_pids() -> list[int]:
    """Live processes carrying this run's marker (never this pytest process)."""
    found = []
    me = os.getpid()
    needle = f"ATOMR_TEST_RUN={RUN_MARK}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                if needle not in fh.read():
                    continue
        except OSError:
            continue
        if live_stat(int(entry)) is None:
            continue
        found.append(int(entry))
    return found


def pytest_sessionfinish(session, exitstatus):
    leftovers = marked_pids()
    if not leftovers:
        return
    for pid in leftovers:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    print(f"\nleak: {len(leftovers)} process(es) outlived their tests and were killed: {leftovers}", file=sys.stderr)
    session.exitstatus = 1


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def mock():
    from actors.testing.mock_provider import MockProcess

    process = MockProcess()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture
def gateway(tmp_path, request):
    """Factory: gateway(deployments=[...], **node) -> (node, client); all stopped at teardown."""
    from actors.client import GatewayClient
    from actors.settings.loader import parse_config
    from actors.ops.system import start_node

    started = []

    def make(deployments, node=None, cluster=None, mock_provider=None, name="n1", port=None, budgets=None,
             routing=None, **start):
        port = port or free_port()
        data = {"deployments": deployments, "node": {"admin_port": port, "name": name, **(node or {})}}
        if budgets:
            data["budgets"] = budgets
        if cluster:
            data["cluster"] = cluster
        if routing is not None:
            data["routing"] = routing
        if mock_provider is not None:
            data["mock_provider"] = mock_provider
        config = parse_config(data, f"<{request.node.name}>")
        handle = start_node(config, log_file=str(tmp_path / f"{name}.log"), console_log=False, **start)
        started.append(handle)
        client = GatewayClient(port, timeout_s=30)
        started.append(client)
        return handle, client

    yield make
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        for log in sorted(tmp_path.glob("*.log")):  # what the nodes said, for whoever reads the failure
            print(f"--- {log.name} (last 60 lines) ---\n" + "\n".join(log.read_text().splitlines()[-60:]))
    for thing in reversed(started):
        if hasattr(thing, "close"):
            thing.close()
        else:
            thing.stop(kill_after_s=10)


def deployment(mock_url: str, name: str = "d1", provider: str = "openai", **extra):
    """A deployment dict pointing at the mock provider."""
    suffix = {"gemini": "/v1beta", "cohere": "/v2", "bedrock": ""}.get(provider, "/v1")
    model = {"anthropic": "mock-claude", "gemini": "mock-gemini", "cohere": "mock-command",
             "bedrock": "mock-nova"}.get(provider, "mock-gpt")
    base = {"name": name, "model": name, "provider": provider, "upstream_model": model,
            "endpoint": mock_url + suffix, "workers": 2,
            "retry": {"max_retries": 2, "base_delay_s": 0.05, "max_delay_s": 0.2},
            "timeouts": {"connect_s": 2, "read_s": 10, "total_s": 30}}
    if provider == "bedrock":  # SigV4 needs a region and a key pair, even for the mock
        base.update(options={"region": "us-east-1"}, credentials={"value": "AKIDMOCK:mock-secret"})
    base.update(extra)
    return base


def wait_for(condition, timeout_s: float = 10.0, interval_s: float = 0.02, message: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {message}")


def closed_by_peer(sock: socket.socket, timeout_s: float = 5.0) -> bool:
    """Did the other end close this connection (EOF or reset) within ``timeout_s``? What it sent
    before (an engine's greeting) is read past, up to 1 MiB."""
    import time

    deadline = time.monotonic() + timeout_s
    taken = 0
    try:
        while taken < 1 << 20:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            data = sock.recv(65536)
            if not data:
                return True
            taken += len(data)
    except ConnectionResetError:
        return True
    except (TimeoutError, socket.timeout):
        return False
    return False


class OutputLines:
    """A child process's stdout, line by line, waitable with a bound."""

    def __init__(self, proc) -> None:
        import queue
        import threading

        self._lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []

        def pump():
            for line in proc.stdout:
                self._lines.put(line)
            self._lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def wait_for(self, needle: str, timeout_s: float = 60) -> None:
        import queue

        def found():
            try:
                line = self._lines.get(timeout=0.1)
            except queue.Empty:
                return False
            if line is None:
                raise AssertionError(f"the process ended before {needle!r}; output: {''.join(self.seen)}")
            self.seen.append(line)
            return needle in line
        try:
            wait_for(found, timeout_s, 0, message=needle)
        except AssertionError as exc:
            if "ended before" in str(exc):
                raise
            raise AssertionError(f"{needle!r} never came; output: {''.join(self.seen)}") from None


# --- the unit tier: no sockets ---------------------------------------------------------

UNIT_TIER = Path(__file__).resolve().parent / "unit"


class SocketUsed(AssertionError):
    pass


def _refuse_socket(*_args, **_kw):
    raise SocketUsed("the unit tier opens no sockets: move this test to tests/process/")


@pytest.fixture(autouse=True)
def _unit_tier_opens_no_sockets(request, monkeypatch):
    """Tests under tests/unit/ run pure code and in-process actors: a socket is a bug there."""
    if UNIT_TIER in Path(str(request.node.fspath)).resolve().parents:
        import socket

        for name in ("connect", "connect_ex", "bind", "listen", "sendto"):
            monkeypatch.setattr(socket.socket, name, _refuse_socket)
    yield


def fresh_period(min_left_s: float = 7200.0, longer_than: str | None = None) -> str:
    """A spend-budget period text (``"1d"``, ``"2d"``, ``"3d"`` ...) whose current period has ``min_left_s`` left.

    Budget periods are aligned on Unix time (actors/core/periods.py): any fixed length ends at
    some UTC midnight, and a test running across it sees its spend reset and its refusals lift, so
    the length is chosen from the clock and the test derives what names the period from the text.
    ``longer_than`` asks for a longer one than another (budgets told apart by their periods).
    """
    now = time.time()
    min_days = 1 if longer_than is None else int(parse_period(longer_than).nominal_s // 86400) + 1
    for days in range(min_days, min_days + 60):
        if period_end(f"{days}d", now) - now >= min_left_s:
            return f"{days}d"
    raise AssertionError(f"no period of {min_days} to {min_days + 59} days has {min_left_s} s left")


def period_end(text: str, now: float | None = None) -> float:
    """The Unix time at which the budget period ``text`` current at ``now`` ends."""
    period = parse_period(text)
    return period.end(period.index(time.time() if now is None else now))


def upstream_caller_pid(mock) -> int:
    """The pid of the process whose request is in flight at the mock: the worker serving it."""
    from actors.ops.procs import connected_pids

    peers = wait_for(lambda: mock.stats()["peers_in_flight"], message="an upstream request in flight")
    mock_port = int(mock.url.rsplit(":", 1)[1])
    return wait_for(lambda: next(iter(connected_pids(peers[0], mock_port)), None), message="the worker's pid")
