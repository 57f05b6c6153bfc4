"""Whose fault is a failure the upstream answered: the request's, or the deployment's.

llama.cpp's server, vLLM and many internal OpenAI-compatible servers answer HTTP 500, with a
message, to input they cannot handle (a JSON schema they cannot compile, a ``logit_bias`` with
a non-numeric key, a tool message they cannot parse). Counted against the deployment's
circuit, one caller's bad input would take the deployment away from everyone. So such an
answer is *suspect* (:func:`is_suspect`): it is not counted when it arrives, the request is
retried as usual (a 500 is usually transient), and when the request ends failed the first
evidence sent after its last attempt decides (:class:`Judge`):

- a call sent to the deployment after that attempt succeeded (another caller's, or the
  gateway's own known-good probe, sent at once when none is in flight): the deployment
  serves, so the request is what it rejects: :func:`upstream_rejected`, a 400-class error
  naming what the upstream said, never counted, never retried;
- the known-good probe failed: the deployment is sick, and the request counts once.

Needing no verdict, and counted at once: refused connections, resets, timeouts, cut streams
(Envoy's local-origin errors), and answers that speak of the deployment itself: 502, 503 and
504 (Envoy's gateway errors) and 529 / ``overloaded_error``. A probe's own failure is never
suspect: its content is known good. docs/reliability.md states the rule and what resilience4j,
Envoy and LiteLLM do instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from actors.errors import InferenceError, Overloaded, UpstreamRejected
from actors.types import InferenceRequest

__all__ = ["PROBE_PREFIX", "CALLER", "DEPLOYMENT", "UNJUDGED", "is_suspect", "is_probe", "probe_request",
           "Suspect", "Judge", "upstream_rejected", "judged_outcome"]

PROBE_PREFIX = "probe_"       # request ids of the gateway's own known-good calls (health and confirmation probes)
CALLER, DEPLOYMENT, UNJUDGED = "caller", "deployment", "unjudged"
_GATEWAY_STATUSES = (502, 503, 504)   # a proxy or load balancer saying the backend is unavailable


def is_suspect(error: InferenceError | None) -> bool:
    """An answered server error that may be about the request's content rather than the deployment."""
    if error is None or not error.counts_for_breaker or isinstance(error, Overloaded):
        return False
    status = error.status
    return status is not None and 500 <= status <= 599 and status not in _GATEWAY_STATUSES


def is_probe(request_id: str) -> bool:
    return str(request_id).startswith(PROBE_PREFIX)


def probe_request(model: str, request_id: str, deadline_unix: float | None = None) -> InferenceRequest:
    """The known-good call: one short user turn, one output token, nothing optional."""
    return InferenceRequest(model=model, messages=[{"role": "user", "content": "ping"}], params={"max_tokens": 1},
                            priority="critical", deadline_unix=deadline_unix, request_id=request_id, retry_budget=0)


@dataclass(frozen=True)
class Suspect:
    """A request that ended failed with a suspect answer, not counted yet."""

    request_id: str
    error: InferenceError     # the upstream's answer to its last attempt
    generation: int           # the breaker generation that attempt was admitted under
    sent: int                 # the engine's dispatch number of that attempt (dispatches are numbered in order)


class Judge:
    """Evidence about one deployment, and the suspects waiting for it.

    Dispatch numbers order calls by when they were sent. A success of a call sent after a
    suspect's attempt says the deployment serves; a failed known-good probe sent after it says
    the deployment is sick. Evidence arriving later resolves waiting suspects in arrival order;
    a suspect registered late is judged by the newest evidence already seen.
    """

    def __init__(self) -> None:
        self.served = -1     # newest dispatch number of a call that succeeded
        self.sick = -1       # newest dispatch number of a known-good probe that failed
        self.pending: dict[str, Suspect] = {}
        self.probing = False  # a known-good probe is queued or in flight

    def register(self, suspect: Suspect) -> str | None:
        """CALLER or DEPLOYMENT at once from what was seen, else None (it waits for evidence)."""
        if max(self.served, self.sick) > suspect.sent:
            return CALLER if self.served >= self.sick else DEPLOYMENT
        self.pending[suspect.request_id] = suspect
        return None

    def evidence(self, sent: int, ok: bool) -> list[tuple[Suspect, str]]:
        """A call sent as ``sent`` succeeded (``ok``), or a known-good probe sent as ``sent`` failed."""
        if ok:
            self.served = max(self.served, sent)
        else:
            self.sick = max(self.sick, sent)
        verdict = CALLER if ok else DEPLOYMENT
        judged = [s for s in self.pending.values() if s.sent < sent]
        for s in judged:
            del self.pending[s.request_id]
        return [(s, verdict) for s in judged]

    def probe_over(self, sent: int | None) -> list[tuple[Suspect, str]]:
        """The probe ended (after its evidence, if it gave any). Suspects it should have judged and
        did not (it was refused, cancelled, rate limited: it proves nothing) stay unjudged: they are
        not counted. ``sent`` is None when the probe never went out."""
        self.probing = False
        dropped = [s for s in self.pending.values() if sent is None or s.sent < sent]
        for s in dropped:
            del self.pending[s.request_id]
        return [(s, UNJUDGED) for s in dropped]

    def forget(self, request_id: str) -> None:
        self.pending.pop(request_id, None)

    @property
    def wants_probe(self) -> bool:
        return bool(self.pending) and not self.probing


def upstream_rejected(error: InferenceError, attempts: int) -> UpstreamRejected:
    """The caller's error for a suspect the evidence disproved: what the upstream said, and why it is the request."""
    said = error.message or error.kind
    times = "once" if attempts == 1 else f"on each of {attempts} attempts"
    return UpstreamRejected(f"the upstream answered HTTP {error.status} to this request {times} while it served "
                            f"calls sent after it, so it is this request it cannot handle; it said: {said}",
                            provider=error.provider, status=error.status, request_id=error.request_id)


def judged_outcome(verdict: str, suspect: Suspect) -> tuple[int, InferenceError] | None:
    """The breaker outcome a verdict reports: the deployment's failures count once, the rest not at all."""
    return (suspect.generation, suspect.error) if verdict == DEPLOYMENT else None

