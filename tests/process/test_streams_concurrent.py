"""256 concurrent streams through one node's Python client: every chunk arrives once and in
order, one terminal each (the node holds them as slot threads of two worker processes)."""

from __future__ import annotations

import threading
import time

from actors.types import Completed, Failed, TokenChunk

from conftest import deployment

STREAMS = 256
WORDS = 20
SILENCE_S = 1.0  # after its terminal, a request's endpoint must stay quiet this long


def _prompt(tag: str) -> list[dict]:
    # The mock echoes the first words of the prompt ("You said: <tag> ..."): a chunk filed
    # under the wrong request would show up in the text.
    return [{"role": "user", "content": f"[[mock drip_ms=25 words={WORDS}]] {tag}"}]


def _run_threads(target, count: int) -> list:
    results: list = [None] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            start.wait(30)
            results[i] = target(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), "a stream never ended"
    return results


def _check_text(tag: str, texts: list[str], terminal: Completed) -> None:
    text = "".join(texts)
    assert text == terminal.text
    assert text.startswith(f"You said: {tag} ") and len(text.split()) == WORDS


def test_256_concurrent_streams_each_get_every_chunk_once_in_order_and_one_terminal(gateway, mock):
    node, client = gateway([deployment(mock.url, "d1", workers=STREAMS, worker_processes=2, coalesce_ms=0,
                                       queue_capacity=2 * STREAMS)], deploy_timeout_s=120)
    engine = client.routes("d1")[0].engine

    def raw(i: int) -> dict:
        """Every message that reaches this thread's own endpoint, in arrival order."""
        tag = f"raw{i}"
        request = client.request("d1", _prompt(tag), stream=True, timeout_s=60)
        endpoint = client._endpoint()  # private to this thread: nothing else is delivered here
        endpoint.tell(engine, request)
        seen: list = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            quiet = SILENCE_S if any(isinstance(m, (Completed, Failed)) for m in seen) else 5.0
            message = endpoint.listen(quiet)
            if message is None:
                if any(isinstance(m, (Completed, Failed)) for m in seen):
                    break
                continue
            seen.append(message)
        return {"tag": tag, "rid": request.request_id, "seen": seen}

    for outcome in _run_threads(raw, STREAMS):
        assert not isinstance(outcome, BaseException), outcome
        seen, rid = outcome["seen"], outcome["rid"]
        assert all(m.request_id == rid for m in seen), "a message of another request reached this endpoint"
        chunks = [m for m in seen if isinstance(m, TokenChunk)]
        terminals = [m for m in seen if isinstance(m, (Completed, Failed))]
        assert len(terminals) == 1, f"{rid}: {len(terminals)} terminal messages"
        assert isinstance(terminals[0], Completed), terminals[0]
        assert [c.seq for c in chunks] == list(range(len(chunks))), f"{rid}: chunks out of order or repeated"
        assert terminals[0].chunks == len(chunks) >= 1
        _check_text(outcome["tag"], [c.text for c in chunks], terminals[0])

    # The same through the public Stream API (the correlator per thread), all at once again.
    def public(i: int) -> tuple[str, list[TokenChunk], Completed]:
        tag = f"pub{i}"
        with client.stream("d1", _prompt(tag), timeout_s=60) as stream:
            chunks = list(stream)
        return tag, chunks, stream.result

    for outcome in _run_threads(public, STREAMS):
        assert not isinstance(outcome, BaseException), outcome
        tag, chunks, result = outcome
        assert isinstance(result, Completed)
        assert [c.seq for c in chunks] == list(range(result.chunks))
        _check_text(tag, [c.text for c in chunks], result)

    status = client.status().engines[0]
    assert status.in_flight == 0 and status.completed == 2 * STREAMS and status.failed == 0
