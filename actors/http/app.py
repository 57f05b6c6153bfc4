"""The front door as a WSGI application: routing, keys, limits, and one call per request.

Every request is served on one of the server's worker threads from start to end (a stream
included), because a GatewayClient keeps one endpoint per thread. A watcher thread checks
each call's connection: a caller that goes away cancels its call upstream, so an abandoned
stream stops being generated and billed.

Past a stream's first chunk, when the server offers ``environ["atomr.write_now"]`` (a write
of body bytes that any thread may make while the application writes nothing, and that never
blocks: ``server.py``), each chunk is rendered and written by the thread that receives it
(``Stream.push_to``): the request's thread sleeps until the call ends instead of waking per
chunk. Without it (any other WSGI server), the thread yields each chunk.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any, cast

from actors.client import GatewayClient, Stream
from actors.errors import InferenceError, ShuttingDown
from actors.http import (anthropic_dialect, completions_dialect, embeddings_dialect, openai_dialect,
                         responses_dialect)
from actors.http.errors import FrontDoorError, HttpError, anthropic_body, encode, http_error, openai_body, status_line
from actors.core.records import KEY_METADATA, TEAM_METADATA
from actors.http import models as model_cards
from actors.core.validation import MAX_NESTING, param_problem, too_deep
from actors.http.key_limits import NO_HOLD, KeyHold, KeyLimits
from actors.http.keys import Caller, KeyRing, presented_key
from actors.http.spend import spend_document
from actors.http.observe import Observatory
from actors.http.translate import Call, Served, parse_json
from actors.http.usage import shown_usage, usage_header
from actors.http.watcher import Watcher
from actors.params import MessageParam
from actors.settings.schema import HttpConfig
from actors.types import new_request_id

log = logging.getLogger("atomr.http")

__all__ = ["FrontDoor"]

_CLIENT_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "tools", "tool_choice", "seed",
                  "presence_penalty", "frequency_penalty", "response_format", "user")
READY_CACHE_S = 1.0
WRITE_NOW = "atomr.write_now"   # the environ key of the server's write from any thread (module docstring)
MODELS_TTL_S = 2.0      # how long GET /v1/models lists what the node last said it reaches
MODELS_LOOKUP_S = 2.0


class _Body:
    """A streamed body whose clean-up runs even when the server closes it before the first read."""

    def __init__(self, body: Generator[bytes, None, None], cleanup: Callable[[], Any]) -> None:
        self._body = body
        self._cleanup = cleanup

    def __iter__(self) -> Iterator[bytes]:
        return self._body

    def close(self) -> None:
        try:
            self._body.close()
        finally:
            self._cleanup()  # idempotent: each step is a no-op the second time


class _Dialect:
    def __init__(self, name: str, module: Any, body: Callable[[HttpError], dict]) -> None:
        self.name, self.module, self.body = name, module, body


OPENAI = _Dialect("openai", openai_dialect, openai_body)
ANTHROPIC = _Dialect("anthropic", anthropic_dialect, anthropic_body)
RESPONSES = _Dialect("responses", responses_dialect, openai_body)      # OpenAI's error shape
COMPLETIONS = _Dialect("completions", completions_dialect, openai_body)
EMBEDDINGS = _Dialect("embeddings", embeddings_dialect, openai_body)
# Calls to the node, by endpoint; GET /v1/models/{id} is matched by its prefix.
_CALLS = {"/v1/chat/completions": OPENAI, "/v1/messages": ANTHROPIC, "/v1/responses": RESPONSES,
          "/v1/completions": COMPLETIONS, "/v1/embeddings": EMBEDDINGS}


def _caller_metadata(caller: Caller) -> dict[str, str]:
    metadata = {KEY_METADATA: caller.name}
    if caller.team:
        metadata[TEAM_METADATA] = caller.team
    return metadata


class FrontDoor:
    """``FrontDoor(config, client, models)`` is the WSGI callable the server runs."""

    def __init__(self, config: HttpConfig, client: GatewayClient, models: list[str], keys: KeyRing | None = None,
                 upstreams: dict[str, str] | None = None) -> None:
        self.config = config
        self.client = client
        self.keys = keys if keys is not None else KeyRing(config)
        self.watcher = Watcher()
        self.key_limits = KeyLimits(config.keys)
        self.key_sync = None
        if self.key_limits:
            from actors.http.key_sync import KeySync

            self.key_sync = KeySync(client.link, self.key_limits)
        self.draining = False
        self._lock = threading.Lock()
        self.in_flight = 0      # requests of any kind being answered (the drain waits for 0)
        self.calls = 0          # of which calls to the node (bounded by config.call_limit)
        self.served = 0
        self._ready: tuple[float, bool, str] = (0.0, False, "")
        self._local = threading.local()
        self.observe = Observatory(client, self.keys)   # /metrics, /v1/status, /ui
        # The models a call through the node reaches: the configured ones until the node is asked.
        self.cards = model_cards.ModelCards(sorted(set(models)), upstreams or {})
        self._models_at = -math.inf   # when the node was last asked which models it reaches

    # -- WSGI ------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterator[bytes]:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        headers = {k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")}
        if path in _CALLS and path != "/v1/messages":
            dialect = _CALLS[path]
        elif path.startswith("/v1/messages") or "anthropic-version" in headers:
            dialect = ANTHROPIC
        else:
            dialect = OPENAI
        request_id = new_request_id()
        started = time.monotonic()
        with self._lock:
            self.in_flight += 1
        counted = [True]
        self._local.caller = "-"
        self._local.started = started

        def done(status: int, caller: str | None = None) -> None:
            caller = caller or self._local.caller
            if counted[0]:
                counted[0] = False
                with self._lock:
                    self.in_flight -= 1
                    self.served += 1
                elapsed = time.monotonic() - started
                log.info("%s %s %d key=%s id=%s %.1fms", method, path, status, caller, request_id, elapsed * 1000,
                         extra={"request_id": request_id, "method": method, "path": path, "http_status": status,
                                "key": caller, "latency_s": round(elapsed, 6)})

        try:
            body = self._route(method, path, headers, environ, dialect, request_id, start_response, done)
        except FrontDoorError as exc:
            body = self._error(start_response, dialect, http_error(exc), request_id)
            done(exc.status)
        except InferenceError as exc:
            err = http_error(exc)
            body = self._error(start_response, dialect, err, request_id)
            done(err.status)
        except Exception:  # noqa: BLE001 - a bug must still be an answer, and logged
            log.exception("front door failed on %s %s (%s)", method, path, request_id)
            body = self._error(start_response, dialect, http_error(RuntimeError()), request_id)
            done(500)
        return body

    def _route(self, method: str, path: str, headers: dict[str, str], environ: dict[str, Any], dialect: _Dialect,
               request_id: str, start_response: Callable, done: Callable[[int, str | None], None]) -> Any:
        if path == "/health/live":
            done(200, "-")
            return self._json(start_response, 200, {"status": "live"}, request_id)
        if path == "/health/ready":
            ready, why = self._is_ready()
            done(200 if ready else 503, "-")
            return self._json(start_response, 200 if ready else 503,
                              {"status": "ready" if ready else "not ready", "detail": why}, request_id)
        if self.observe.handles(path):
            return self.observe.serve(method, path, headers, environ, request_id, start_response, done)
        routes = {**{p: ("POST", d) for p, d in _CALLS.items()}, "/v1/messages/count_tokens": ("POST", ANTHROPIC),
                  "/v1/models": ("GET", dialect), "/v1/spend": ("GET", OPENAI)}
        card = path[len("/v1/models/"):] if path.startswith("/v1/models/") else None
        if path not in routes and not card:
            raise FrontDoorError(404, f"no such endpoint {path!r}; this gateway serves {', '.join(sorted(routes))} "
                                 f"and /v1/models/{{model}}", kind="not_found_error", code="unknown_url")
        wanted, _ = routes.get(path, ("GET", dialect))
        if method != wanted:
            raise FrontDoorError(405, f"{path} takes {wanted}, not {method}", kind="invalid_request_error",
                                 code="method_not_allowed")
        caller = self._authenticate(headers)
        if path == "/v1/models" or card is not None or path == "/v1/messages/count_tokens":
            self._reachable_models()
        if path == "/v1/models":
            done(200, caller.name)
            return self._json(start_response, 200, self._models(caller, dialect), request_id)
        if card:
            doc = self.cards.card(card, caller, dialect is ANTHROPIC)
            done(200, caller.name)
            return self._json(start_response, 200, doc, request_id)
        if path == "/v1/messages/count_tokens":
            doc = model_cards.count_tokens(parse_json(self._body(environ)), self.cards.models, caller)
            done(200, caller.name)
            return self._json(start_response, 200, doc, request_id)
        if path == "/v1/spend":
            doc = spend_document(self.client, environ.get("QUERY_STRING", ""))
            done(200, caller.name)
            return self._json(start_response, 200, doc, request_id)
        if self.draining:
            raise ShuttingDown("this node's HTTP listener is draining; send to another node", retryable=True)
        call = dialect.module.parse(self._document(environ))
        problem = param_problem(getattr(call, "params", {}))   # an embeddings call has no generation params
        if problem is not None:
            # Before the key's budget: an absurd max_tokens is the caller's mistake, not a spend.
            raise FrontDoorError(400, problem[1], kind="invalid_request_error", code="invalid_value", param=problem[0])
        if not caller.may_use(call.model):
            raise FrontDoorError(403, f"key {caller.name!r} may not use model {call.model!r}",
                                 kind="permission_error", code="model_not_allowed", param="model")
        for i, model in enumerate(call.fallbacks or ()):
            if not caller.may_use(model):  # a caller's own fallbacks stay within its allow-list
                raise FrontDoorError(403, f"key {caller.name!r} may not use model {model!r}",
                                     kind="permission_error", code="model_not_allowed", param=f"fallbacks[{i}]")
        call.timeout_s = self._timeout(headers)
        with self._lock:
            full = self.calls >= self.config.call_limit
            if not full:
                self.calls += 1
        if full:
            # Refused at once rather than queued behind the streams that hold every thread.
            raise FrontDoorError(429, f"this listener is serving its limit of {self.config.call_limit} calls; "
                                 f"retry shortly", kind="rate_limit_error", code="queue_full", retry_after_s=1.0)
        released = [False]

        def release() -> None:
            with self._lock:
                if not released[0]:
                    released[0] = True
                    self.calls -= 1

        def finished(status: int, who: str | None = None) -> None:
            release()
            done(status, who)

        hold = NO_HOLD
        try:
            # The key's own budget, cluster-wide (key_limits.py): before any work reaches the node.
            if dialect is EMBEDDINGS:
                hold = self.key_limits.admit(caller.name, call.messages, 0)
                return self._serve_embed(call, caller, request_id, start_response, finished, hold)
            hold = self.key_limits.admit(caller.name, call.messages, call.params.get("max_tokens"))
            return self._serve(call, dialect, caller, environ, request_id, start_response, finished, hold)
        except BaseException as exc:
            hold.settle(exc)
            release()
            raise

    # -- pieces ----------------------------------------------------------------------

    def _authenticate(self, headers: dict[str, str]) -> Caller:
        caller = self.keys.check(presented_key(headers))
        self._local.caller = caller.name if caller is not None else "-"
        if caller is None:
            missing = presented_key(headers) is None
            raise FrontDoorError(401, "no API key given: send Authorization: Bearer <key> or x-api-key"
                                 if missing else "invalid API key", kind="authentication_error",
                                 code="missing_api_key" if missing else "invalid_api_key")
        return caller

    def _body(self, environ: dict[str, Any]) -> bytes:
        limit = self.config.max_body_bytes
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise FrontDoorError(400, "Content-Length is not a number", kind="invalid_request_error") from None
        if length > limit:
            raise FrontDoorError(413, f"the request body is {length} bytes; the limit is {limit}",
                                 kind="request_too_large", code="request_too_large")
        raw = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read(limit + 1)
        if len(raw) > limit:
            raise FrontDoorError(413, f"the request body is over the limit of {limit} bytes",
                                 kind="request_too_large", code="request_too_large")
        return raw

    def _document(self, environ: dict[str, Any]) -> dict[str, Any]:
        """The request's JSON object, or a 400: not JSON, not an object, or nested too deeply."""
        try:
            doc = parse_json(self._body(environ))
        except RecursionError:  # deeper than the parser itself goes (about a thousand levels)
            raise FrontDoorError(400, f"the request body nests deeper than {MAX_NESTING} levels",
                                 kind="invalid_request_error", code="invalid_json") from None
        for name, value in doc.items():
            if too_deep(value, MAX_NESTING - 1):
                raise FrontDoorError(400, f"{name}: nests deeper than {MAX_NESTING} levels",
                                     kind="invalid_request_error", code="invalid_json", param=str(name)[:64])
        return doc

    def _timeout(self, headers: dict[str, str]) -> float:
        # The openai and anthropic SDKs announce their own timeout: no point running past it.
        timeout = self.config.request_timeout_s
        try:
            announced = float(headers.get("x-stainless-timeout", "inf"))
        except ValueError:
            announced = float("inf")
        return min(timeout, announced) if announced > 0 else timeout

    def _reachable_models(self) -> None:
        """What the node can reach now (other nodes' models join and leave with them), asked at most every
        MODELS_TTL_S; the last answer stands while the node does not answer."""
        if time.monotonic() - self._models_at < MODELS_TTL_S:
            return
        self._models_at = time.monotonic()
        try:
            models = sorted(set(self.client.models(timeout_s=MODELS_LOOKUP_S)))
        except InferenceError:
            return
        self.cards.models = models

    def _models(self, caller: Caller, dialect: _Dialect) -> dict[str, Any]:
        return self.cards.listing(caller, dialect is ANTHROPIC)

    def _serve_embed(self, call: Any, caller: Caller, request_id: str, start_response: Callable,
                     done: Callable[[int, str | None], None], hold: KeyHold = NO_HOLD) -> Any:
        """Embeddings: one whole answer (no stream to watch); GatewayClient.embed batches per provider."""
        kw = {"dimensions": call.dimensions} if call.dimensions is not None else {}
        if call.user is not None:
            kw["user"] = call.user
        result = self.client.embed(call.model, call.texts, timeout_s=call.timeout_s, request_id=request_id,
                                   metadata=_caller_metadata(caller), extra_body=call.extra or None,
                                   fallbacks=call.fallbacks, **kw)
        hold.settle(result.calls[-1] if len(result.calls) == 1 else dataclasses.replace(
            result.calls[-1], charged_tokens=sum(c.charged_tokens for c in result.calls)))
        done(200, caller.name)
        last = result.calls[-1]
        routes = {e.deployment for e in self.client.routes(call.model)}
        served = Served(last.deployment, last.deployment not in routes)
        extra = served.headers() + [usage_header(embeddings_dialect.shown(result, call))]
        return self._json(start_response, 200, embeddings_dialect.render(result, call), request_id, extra)

    def _is_ready(self) -> tuple[bool, str]:
        at, ready, why = self._ready
        if time.monotonic() - at < READY_CACHE_S:
            return ready, why
        if self.draining:
            ready, why = False, "draining"
        else:
            try:
                status = self.client.status(timeout_s=5)
                usable = [e for e in status.engines if e.circuit in ("closed", "half_open") and not e.draining]
                refused = str(status.membership or "").startswith("refused")
                ready = bool(usable) and not refused
                why = (status.membership if refused else
                       f"{len(usable)} of {len(status.engines)} engines have a closed or half-open circuit")
            except InferenceError as exc:
                ready, why = False, f"the node does not answer: {exc.message}"
        self._ready = (time.monotonic(), ready, why)
        return ready, why

    def _start_call(self, call: Call, caller: Caller, request_id: str) -> Stream:
        kw = {k: call.params[k] for k in _CLIENT_PARAMS if k in call.params}
        extra = {k: v for k, v in call.params.items() if k not in _CLIENT_PARAMS}
        # The dialect's parser checked each message's shape (openai_dialect.py, anthropic_dialect.py).
        messages = cast("list[MessageParam]", call.messages)
        request = self.client.request(call.model, messages, stream=call.stream, timeout_s=call.timeout_s,
                                      metadata=_caller_metadata(caller), request_id=request_id,
                                      extra_body=extra or None, fallbacks=call.fallbacks, **kw)
        return self.client.start(request, call.timeout_s)

    def _serve(self, call: Call, dialect: _Dialect, caller: Caller, environ: dict[str, Any], request_id: str,
               start_response: Callable, done: Callable[[int, str | None], None], hold: KeyHold = NO_HOLD) -> Any:
        stream = self._start_call(call, caller, request_id)
        self.watcher.add(request_id, environ.get("waitress.client_disconnected"), stream)
        if not call.stream:
            try:
                with stream:
                    for _ in stream:
                        pass
            finally:
                self.watcher.remove(request_id)
            result = stream.result
            assert result is not None, "an exchange that ends without raising has set its result"
            self._overhead(stream)
            hold.settle(result)
            done(200, caller.name)
            served = self._served(stream, call)
            doc = dialect.module.render(result, call, served)
            extra = served.headers() + [usage_header(shown_usage(result, call.messages, call.params))]
            return self._json(start_response, 200, doc, request_id, extra)
        # Read up to the first chunk before answering: an error before any output is a real
        # HTTP status (what the SDKs retry on), not a 200 with an error event.
        chunks = iter(stream)
        try:
            first = next(chunks, None)
        except BaseException:
            self.watcher.remove(request_id)
            stream.close()
            raise
        start_response(status_line(200), [("Content-Type", "text/event-stream; charset=utf-8"),
                                          ("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no"),
                                          *self._id_headers(request_id), *self._served(stream, call).headers()])
        body = self._stream_body(stream, chunks, first, call, dialect, caller, request_id, done, hold,
                                 environ.get(WRITE_NOW))

        def cleanup() -> None:
            self.watcher.remove(request_id)
            stream.close()
            hold.settle()
            done(499, caller.name)
        return _Body(body, cleanup)

    def _stream_body(self, stream: Stream, chunks: Iterator, first: Any, call: Call, dialect: _Dialect,
                     caller: Caller, request_id: str, done: Callable[[int, str | None], None],
                     hold: KeyHold = NO_HOLD, write_now: Callable[[bytes], object] | None = None
                     ) -> Generator[bytes, None, None]:
        encoder = dialect.module.StreamEncoder(request_id, call, self._served(stream, call))
        status = 200
        try:
            with stream:
                head = encoder.start()
                try:
                    if first is not None:
                        head += encoder.chunk(first)
                    yield head
                    if write_now is not None:   # written once the head is: the server has sent it on by now
                        stream.push_to(lambda chunk: write_now(encoder.chunk(chunk)))
                    for chunk in chunks:        # pushed: yields nothing, and ends with the call
                        data = encoder.chunk(chunk)
                        if data:
                            yield data
                except InferenceError as exc:
                    hold.settle(exc)
                    err = http_error(exc)
                    status = err.status
                    log.warning("stream %s failed after its first byte: %s", request_id, exc)
                    yield b"".join(encoder.error(err))   # one write, one send: they are due together
                    return
                self._overhead(stream)
                hold.settle(stream.result)
                yield b"".join(encoder.end(stream.result))
        finally:
            hold.settle()  # left early (the caller went away): the estimate stays charged
            self.watcher.remove(request_id)
            done(status, caller.name)

    def _served(self, stream: Stream, call: Call) -> Served:
        """The deployment serving the call (known once it streams or ends), and whether it was a fallback."""
        return Served(stream.deployment, stream.fallback)

    def _overhead(self, stream: Stream) -> None:
        result = stream.result
        latency = getattr(result, "latency_s", None)
        if result is not None and latency is not None:
            self.observe.overhead.observe(result.deployment, time.monotonic() - self._local.started - latency)

    @staticmethod
    def _id_headers(request_id: str) -> list[tuple[str, str]]:
        # openai reads x-request-id, anthropic request-id.
        return [("x-request-id", request_id), ("request-id", request_id)]

    def _json(self, start_response: Callable, status: int, doc: dict[str, Any], request_id: str,
              extra: list[tuple[str, str]] | None = None) -> list[bytes]:
        data = encode(doc)
        start_response(status_line(status), [("Content-Type", "application/json"), ("Content-Length", str(len(data))),
                                             *self._id_headers(request_id), *(extra or [])])
        return [data]

    def _error(self, start_response: Callable, dialect: _Dialect, err: HttpError, request_id: str) -> list[bytes]:
        return self._json(start_response, err.status, dialect.body(err), request_id, err.headers())

    def close(self) -> None:
        if self.key_sync is not None:
            self.key_sync.stop()
        self.watcher.stop()
