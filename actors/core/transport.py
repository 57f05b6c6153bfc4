"""Transport failures by phase: which typed error, and whether the attempt reached the provider.

The HTTP layer reports where an attempt was when it failed; this module alone decides what
that means. ``sent`` drives settlement: an attempt that never reached the provider gives its
budget back, one that did stays charged (the provider may have billed it). The rule follows
urllib3's own retry logic: only a failure to connect is a connection error; once the request
body is written, anything that goes wrong is a read error, and the provider has the request.

======================  ================  =====  ==========================================
phase                   failure           sent   error (retryable)
======================  ================  =====  ==========================================
connect                 refused, DNS      no     NetworkError (yes)
connect                 timeout           no     Timeout (yes)
send (body unwritten)   reset, closed     no     NetworkError (yes)
send                    timeout           no     Timeout (yes)
await headers           closed, reset     yes    NetworkError (yes)
await headers           timeout           yes    Timeout (yes)
body                    closed, truncated yes    StreamError (yes; no once tokens went out)
body                    stall (timeout)   yes    Timeout (yes; no once tokens went out)
any                     caller deadline   as     DeadlineExceeded (no)
                                          above
any                     total_s           as     Timeout (yes; no once tokens went out)
                                          above
======================  ================  =====  ==========================================

A body that was never written cannot be acted on, so a failed send is not sent. The engine
retries only before the first token; an error after tokens were delivered says so itself
(``retryable=False``), so nobody downstream reads it as safe to replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from actors.errors import DeadlineExceeded, InferenceError, NetworkError, StreamError, Timeout

__all__ = ["Phase", "TransportVerdict", "classify_transport", "deadline_verdict"]


class Phase(str, Enum):
    CONNECT = "connect"
    SEND = "send"
    AWAIT_HEADERS = "await_headers"
    BODY = "body"

    @property
    def reached_provider(self) -> bool:
        return self in (Phase.AWAIT_HEADERS, Phase.BODY)


@dataclass(frozen=True)
class TransportVerdict:
    error: InferenceError
    sent: bool


_WHERE = {
    Phase.CONNECT: "connecting",
    Phase.SEND: "sending the request",
    Phase.AWAIT_HEADERS: "waiting for the response headers",
    Phase.BODY: "reading the response body",
}


def classify_transport(phase: Phase, *, timed_out: bool, detail: str = "", provider: str = "",
                       delivered: bool = False) -> TransportVerdict:
    """The typed error for a transport failure in ``phase``.

    ``timed_out``: a read/connect/write timeout rather than a refused or broken connection.
    ``delivered``: tokens already went to the caller, so the error must not invite a replay.
    """
    where = _WHERE[phase]
    suffix = f" ({detail})" if detail else ""
    if timed_out:
        error: InferenceError = Timeout(f"timed out {where}{suffix}", provider=provider)
    elif phase is Phase.BODY:
        error = StreamError(f"connection broke {where}{suffix}", provider=provider)
    else:
        error = NetworkError(f"connection failed {where}{suffix}", provider=provider)
    if delivered:
        error.retryable = False
    return TransportVerdict(error, phase.reached_provider)


def deadline_verdict(phase: Phase, *, caller_deadline: bool, total_s: float, provider: str = "",
                     delivered: bool = False) -> TransportVerdict:
    """The attempt ran out of time as a whole: the caller's own deadline (never the provider's
    fault, so not counted against it) or the deployment's ``timeouts.total_s``."""
    if caller_deadline:
        error: InferenceError = DeadlineExceeded(f"the request's deadline passed {_WHERE[phase]}",
                                                 provider=provider)
    else:
        error = Timeout(f"total timeout {total_s:g}s exceeded {_WHERE[phase]}", provider=provider)
        if delivered:
            error.retryable = False
    return TransportVerdict(error, phase.reached_provider)
