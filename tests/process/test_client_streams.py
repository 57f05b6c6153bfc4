"""The client against a real node: correlation, abandoned streams, the public call signature."""

from __future__ import annotations

import gc
import time

import pytest

from actors import GatewayClient, NOT_GIVEN
from actors import errors as E

from conftest import deployment, free_port, wait_for

LONG = [{"role": "user", "content": "[[mock drip_ms=50 words=4000]] a long answer"}]  # ~200 s if not cancelled
HI = [{"role": "user", "content": "hi"}]


def _upstream_idle(mock):
    return mock.stats()["in_flight"] == 0


def test_an_abandoned_stream_is_cancelled_and_the_client_keeps_working(gateway, mock):
    node, _ = gateway([deployment(mock.url, "d1", workers=2)])
    with GatewayClient(node.admin_port, timeout_s=30, route_ttl_s=0.2) as gw:
        for chunk in gw.stream("d1", LONG):
            break  # leave the loop at the first chunk
        # The upstream call ends long before it would have (4000 words at 50 ms): it was cancelled.
        wait_for(lambda: _upstream_idle(mock), timeout_s=15, message="the abandoned upstream call to end")
        wait_for(lambda: gw.status().engines[0].in_flight == 0, message="the engine to let it go")
        # Past the route cache's TTL: the lookup must not be handed a stray message of the abandoned call.
        wait_for(lambda: time.monotonic() - gw._routes["d1"][0] > gw.route_ttl_s, timeout_s=5,
                 message="the cached route to expire")
        for _ in range(3):
            assert gw.complete("d1", HI, max_tokens=3).text
            assert gw.status().node == "n1"
        assert mock.stats()["total"] == 4


def test_close_with_block_and_a_dropped_stream_all_cancel_upstream(gateway, mock):
    node, gw = gateway([deployment(mock.url, "d1", workers=3)])
    with gw.stream("d1", LONG) as stream:
        first = next(iter(stream))
        assert first.text
    assert stream.closed and stream.result is None
    wait_for(lambda: _upstream_idle(mock), timeout_s=15, message="the with-block's call to end")

    stream = gw.stream("d1", LONG)
    iterator = iter(stream)
    next(iterator)
    stream.close()
    wait_for(lambda: _upstream_idle(mock), timeout_s=15, message="the closed call to end")
    assert list(iterator) == [] and list(stream) == []

    stream = gw.stream("d1", LONG)
    iterator = iter(stream)
    next(iterator)
    del stream, iterator  # dropped without a word
    gc.collect()
    wait_for(lambda: _upstream_idle(mock), timeout_s=15, message="the dropped call to end")
    wait_for(lambda: gw.status().engines[0].failed == 3, message="three cancels")
    assert gw.complete("d1", HI, max_tokens=2).text


def test_lookups_and_calls_interleaved_with_a_stream_on_one_thread_each_get_their_own_messages(gateway, mock):
    node, gw = gateway([deployment(mock.url, "d1", workers=2)])
    stream = gw.stream("d1", [{"role": "user", "content": "[[mock drip_ms=20 words=30]] go"}], max_tokens=30)
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if len(chunks) in (1, 3):
            # While chunks of the stream keep arriving at this thread's endpoint:
            assert gw.status().engines[0].deployment == "d1"
            assert gw.complete("d1", HI, max_tokens=2).usage.output_tokens == 2
            assert gw.routes("d1", refresh=True)[0].deployment == "d1"
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert stream.result.usage.output_tokens == 30
    assert "".join(c.text for c in chunks) == stream.result.text


def test_call_signature_sentinels_and_connection_errors(gateway, mock):
    node, gw = gateway([deployment(mock.url, "d1")])
    with pytest.raises(TypeError):
        gw.complete("d1", HI, max_tokenz=3)
    with pytest.raises(TypeError, match="both as a parameter and in extra_body"):
        gw.complete("d1", HI, max_tokens=3, extra_body={"max_tokens": 4})
    with pytest.raises(E.DeadlineExceeded):
        gw.complete("d1", HI, timeout_s=0)
    with pytest.raises(ValueError):
        gw.complete("d1", HI, timeout_s=float("nan"))
    assert mock.stats()["total"] == 0  # none of those was sent
    # extra_body reaches the provider as is; left-out parameters are not sent at all.
    assert gw.complete("d1", HI, extra_body={"max_tokens": 4}).usage.output_tokens == 4
    request = gw.request("d1", HI, temperature=0.0, stop=None)
    assert request.params == {"temperature": 0.0, "stop": None}
    assert "max_tokens" not in request.params and not NOT_GIVEN
    port = free_port()
    with pytest.raises(E.GatewayUnavailable, match=f"no gateway node is listening on 127.0.0.1:{port}"):
        GatewayClient(port)


def _open_fds() -> int:
    import os
    return len(os.listdir("/proc/self/fd"))


def test_a_thread_per_call_does_not_leave_a_socket_per_thread_behind(gateway, mock):
    """Each thread's endpoint (a Thespian private context) holds a listening socket and connections:
    a server with a thread per request must not keep one per request it ever served."""
    import threading

    node, _ = gateway([deployment(mock.url, "d1", workers=2)])
    with GatewayClient(node.admin_port, timeout_s=30) as gw:
        texts: list[str] = []

        def one_call() -> None:
            texts.append(gw.complete("d1", HI, max_tokens=1).text)

        def calls(n: int) -> None:
            for _ in range(n):
                t = threading.Thread(target=one_call)
                t.start()
                t.join(30)
            gc.collect()

        calls(3)                 # the connections every endpoint shares (the node's, the mock's) are open now
        before = _open_fds()
        calls(30)
        assert len(texts) == 33 and all(texts)
        # Its sockets close when a thread's endpoint is released; a few may be closing still.
        wait_for(lambda: _open_fds() <= before + 3, timeout_s=10,
                 message=f"the ended threads' sockets to close ({_open_fds()} open, {before} before)")
