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

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

from actors.core.breaker import probe_outcome
from actors.errors import Cancelled, DeadlineExceeded, InferenceError, Overloaded, Timeout, UpstreamRejected
from actors.types import InferenceRequest

if TYPE_CHECKING:
    from actors.core.admission import BreakerGate
    from actors.core.jobs import Attempt, Job
    from actors.core.timer_heap import TimerHeap

__all__ = ["PROBE_PREFIX", "CALLER", "DEPLOYMENT", "UNJUDGED", "JUDGE_WAIT_S", "is_suspect", "probe_request",
           "Suspect", "Fault", "Judge", "Hearing", "HearingHost", "upstream_rejected"]

PROBE_PREFIX = "probe_"       # request ids of the gateway's own known-good calls (health and confirmation probes)
Verdict: TypeAlias = Literal["caller", "deployment", "unjudged"]
CALLER: Verdict = "caller"
DEPLOYMENT: Verdict = "deployment"
UNJUDGED: Verdict = "unjudged"
JUDGE_WAIT_S = 10.0           # how long a failed request's answer waits for the verdict on a suspect 5xx
_GATEWAY_STATUSES = (502, 503, 504)   # a proxy or load balancer saying the backend is unavailable


def is_suspect(error: InferenceError | None) -> bool:
    """An answered server error that may be about the request's content rather than the deployment."""
    if error is None or not error.counts_for_breaker or isinstance(error, Overloaded):
        return False
    status = error.status
    return status is not None and 500 <= status <= 599 and status not in _GATEWAY_STATUSES


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


@dataclass(eq=False)
class Fault:
    """What the breaker has heard of one request: it counts once."""

    counted: bool = False              # one of its failures reached the breaker
    suspect: Suspect | None = None     # its last answer was a suspect 5xx, not counted (nor judged) yet
    last_sent: int | None = None       # the dispatch number of its last attempt


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

    def register(self, suspect: Suspect) -> Verdict | None:
        """CALLER or DEPLOYMENT at once from what was seen, else None (it waits for evidence)."""
        if max(self.served, self.sick) > suspect.sent:
            return CALLER if self.served >= self.sick else DEPLOYMENT
        self.pending[suspect.request_id] = suspect
        return None

    def evidence(self, sent: int, ok: bool) -> list[tuple[Suspect, Verdict]]:
        """A call sent as ``sent`` succeeded (``ok``), or a known-good probe sent as ``sent`` failed."""
        if ok:
            self.served = max(self.served, sent)
        else:
            self.sick = max(self.sick, sent)
        verdict: Verdict = CALLER if ok else DEPLOYMENT
        judged = [s for s in self.pending.values() if s.sent < sent]
        for s in judged:
            del self.pending[s.request_id]
        return [(s, verdict) for s in judged]

    def probe_over(self, sent: int | None) -> list[tuple[Suspect, Verdict]]:
        """The probe ended (after its evidence, if it gave any). Suspects it should have judged and
        did not (it was refused, cancelled, rate limited: it proves nothing) stay unjudged: they are
        not counted. ``sent`` is None when the probe never went out."""
        self.probing = False
        dropped = [s for s in self.pending.values() if sent is None or s.sent < sent]
        for s in dropped:
            del self.pending[s.request_id]
        return [(s, UNJUDGED) for s in dropped]

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


class HearingHost(Protocol):
    """What the hearing needs of its engine."""

    def answer(self, request_id: str, error: InferenceError) -> None:
        """End the held request ``request_id``, failed with ``error``."""

    def probe(self) -> None:
        """Send the known-good probe now, if the judge wants one (:meth:`Hearing.next_probe`)."""


class Hearing:
    """One engine's side of the judge: what the breaker hears of each attempt, the failed
    requests whose answer waits for a verdict (at most ``JUDGE_WAIT_S``), and the known-good
    probe sent to get one."""

    def __init__(self, host: HearingHost, breaker: BreakerGate, timers: TimerHeap, *, slot: str,
                 provider: str) -> None:
        self.host = host
        self.breaker = breaker
        self.timers = timers
        self.slot = slot
        self.provider = provider
        self.judge = Judge()
        self.held: dict[str, tuple[InferenceError, int]] = {}   # request id -> the upstream's answer, its attempts
        self.probe_id: str | None = None   # the known-good probe in flight
        self._probes = itertools.count(1)

    def heard(self, attempt: Attempt, error: InferenceError | None, now: float) -> None:
        """What the breaker hears of one attempt: each request counts once, and an answered 5xx
        only once the judge says it is the deployment's."""
        job = attempt.job
        if error is not None and error.counts_for_breaker and attempt.deadline_capped and isinstance(error, Timeout):
            # The caller's own short deadline cut the call: not a sign of an unhealthy provider.
            error = DeadlineExceeded("the caller's deadline bounded the call", provider=self.provider)
        if attempt.probe:
            error = probe_outcome(error, delivered=job.chunks > 0)
        if error is None:
            if attempt.probe:
                self.breaker.report(attempt.generation, None)   # a probe's success closes the circuit now
            else:
                self.breaker.succeeded(attempt.generation, now)
            return self._rule(self.judge.evidence(attempt.seq, ok=True))
        if not error.counts_for_breaker:
            if attempt.probe:
                self.breaker.report(attempt.generation, error)  # frees its half-open slot
            return
        if job.known_good:
            self._rule(self.judge.evidence(attempt.seq, ok=False))
        elif is_suspect(error):
            job.fault.suspect = Suspect(job.request_id, error, attempt.generation, attempt.seq)
            if attempt.probe:  # its slot goes to the next call; the verdict decides what this one says
                self.breaker.report(attempt.generation, Cancelled("a suspect answer waits for its verdict"))
            return
        if attempt.probe or not job.fault.counted:
            job.fault.counted = True
            self.breaker.report(attempt.generation, error)

    def hold(self, job: Job, error: InferenceError, now: float) -> bool:
        """The request failed after its attempts. If the upstream's last answer was a suspect 5xx,
        whose fault it is decides what the caller is told: True when its answer is held for the
        verdict (or was given at once from one), False when the caller gets ``error`` now."""
        suspect = job.fault.suspect
        if suspect is None or suspect.error is not error or job.fault.counted:
            return False  # (a suspect is still judged, for the breaker, at its terminal)
        job.fault.suspect = None
        self.held[job.request_id] = (error, job.attempts)
        verdict = self.judge.register(suspect)
        if verdict is not None:
            self._rule([(suspect, verdict)])
            return True
        self.timers.at(now + JUDGE_WAIT_S, "judging", job)   # (its deadline, if sooner, ends it the same way)
        self.host.probe()
        return True

    def ended(self, job: Job, failed: bool) -> None:
        """At a request's terminal: a suspect that ended another way (deadline, cancel, a refusal at
        its retry) is still judged, for the breaker; the probe's end judges what it did not."""
        if failed and job.fault.suspect is not None and not job.fault.counted:
            suspect, job.fault.suspect = job.fault.suspect, None
            verdict = self.judge.register(suspect)
            self._rule([(suspect, verdict)] if verdict is not None else [])  # or a probe for it
        if job.request_id == self.probe_id:
            self.probe_id = None
            self._rule(self.judge.probe_over(job.fault.last_sent))

    def expired(self, request_id: str) -> InferenceError:
        """No verdict in time for a held request: its answer as the upstream gave it (the judge still
        counts it or not)."""
        return self.held.pop(request_id)[0]

    def next_probe(self, model: str, taken: Callable[[str], bool]) -> InferenceRequest | None:
        """The known-good call the judge wants now, named apart from every id in use (``taken``)."""
        if not self.judge.wants_probe:
            return None
        request_id = f"{PROBE_PREFIX}{self.slot}/{next(self._probes)}"
        while taken(request_id):  # a caller chose that id: it is only a name
            request_id = f"{PROBE_PREFIX}{self.slot}/{next(self._probes)}"
        self.probe_id = request_id
        self.judge.probing = True
        return probe_request(model, request_id)

    def _rule(self, verdicts: list[tuple[Suspect, Verdict]]) -> None:
        """Carry out verdicts: the deployment's failures count once; held requests get their answer."""
        for suspect, verdict in verdicts:
            if verdict == DEPLOYMENT:
                self.breaker.report(suspect.generation, suspect.error)
            held = self.held.pop(suspect.request_id, None)
            if held is not None:
                error, attempts = held
                self.host.answer(suspect.request_id, upstream_rejected(suspect.error, attempts)
                                 if verdict == CALLER else error)
        self.host.probe()
