"""Routing across deployments: the strategies, the pre-call check, the fallback plan, the config.

Everything here is a pure function of the state it is given (candidate deployments with
the load their engines last pushed, a random source, the request's token estimate), so a
strategy is tested with fixed inputs and the client applies the same code for every
caller and both HTTP dialects. ``docs/routing.md`` says what each strategy reads and how
fresh that state is.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml

from actors.core import refusals
from actors.core.pricing import _match, _names, families
from actors.errors import (AuthenticationError, BadRequest, Cancelled, CircuitOpen, ContentFiltered,
                           ContextLengthExceeded, CredentialUnavailable, DeadlineExceeded, GatewayTimeout,
                           InferenceError, NotFound, PermissionDenied, QueueFull, BudgetExceeded)

__all__ = ["STRATEGIES", "Strategy", "CROSS_NODE", "CrossNode", "HealthCheck", "ModelRouting", "RoutingPolicy", "Candidate",
           "order", "skip_reason", "refusal_of", "input_estimate", "output_estimate", "GroupPlan", "plan_group", "reaches_other_nodes",
           "Step", "after_failure", "held_until", "held_refusal", "fallback_kind", "FallbackPlan", "RequestRetries",
           "context_window", "context_windows", "check_models"]

STRATEGIES = ("weighted", "least-busy", "latency", "cost", "usage")
Strategy = Literal["weighted", "least-busy", "latency", "cost", "usage"]
# Where a call may be served (docs/routing.md, "Across a cluster"): this node's deployments
# before other nodes' (the default), this node's only, or all of them alike by the strategy.
CROSS_NODE = ("prefer_local", "local_only", "any")
CrossNode = Literal["prefer_local", "local_only", "any"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --- configuration values (the settings schema imports these) ---------------------------

@dataclass(frozen=True)
class HealthCheck:
    """Active probes of one deployment: a one-token call every ``interval_s`` while it is idle."""

    interval_s: float = 30.0
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("interval_s", "timeout_s"):
            if not _number(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class ModelRouting:
    """Per-model overrides of the routing section."""

    strategy: Strategy = "weighted"
    cross_node: CrossNode | None = None     # None: the section's


@dataclass(frozen=True)
class RoutingPolicy:
    """The ``routing`` section: strategy per model group and the three kinds of fallback.

    ``num_retries`` is the one retry budget of a request across every deployment and
    fallback it visits (default: the ``retry.max_retries`` of the first deployment tried).
    Fallback lists belong to the model the caller asked for; a fallback model's own lists
    are not followed, so a chain cannot loop.
    """

    strategy: Strategy = "weighted"
    models: dict[str, ModelRouting] = field(default_factory=dict)
    fallbacks: dict[str, list[str]] = field(default_factory=dict)
    context_window_fallbacks: dict[str, list[str]] = field(default_factory=dict)
    content_policy_fallbacks: dict[str, list[str]] = field(default_factory=dict)
    num_retries: int | None = None
    cross_node: CrossNode = "prefer_local"

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.cross_node not in CROSS_NODE:
            raise ValueError(f"cross_node: expected one of {', '.join(CROSS_NODE)}, got {self.cross_node!r}")
        for model, override in self.models.items():
            if override.strategy not in STRATEGIES:
                raise ValueError(f"models.{model}.strategy: expected one of {', '.join(STRATEGIES)}, "
                                 f"got {override.strategy!r}")
            if override.cross_node is not None and override.cross_node not in CROSS_NODE:
                raise ValueError(f"models.{model}.cross_node: expected one of {', '.join(CROSS_NODE)}, "
                                 f"got {override.cross_node!r}")
        for kind in FALLBACK_FIELDS:
            for model, targets in getattr(self, kind).items():
                if not isinstance(targets, list) or not all(isinstance(t, str) and t.strip() for t in targets):
                    raise ValueError(f"{kind}.{model}: expected a list of model names, got {targets!r}")
                if model in targets:
                    raise ValueError(f"{kind}.{model}: a model cannot fall back to itself, got {targets!r}")
        if self.num_retries is not None and (not isinstance(self.num_retries, int) or self.num_retries < 0):
            raise ValueError(f"num_retries: must be >= 0, got {self.num_retries!r}")

    def strategy_for(self, model: str) -> str:
        override = self.models.get(model)
        return override.strategy if override is not None else self.strategy

    def cross_node_for(self, model: str) -> str:
        override = self.models.get(model)
        return override.cross_node if override is not None and override.cross_node is not None \
            else self.cross_node


FALLBACK_FIELDS = ("fallbacks", "context_window_fallbacks", "content_policy_fallbacks")


def check_models(policy: RoutingPolicy, models: Iterable[str], deployments: Iterable[str] = ()) -> None:
    """Every model the routing section names must be served: ValueError naming the field otherwise."""
    known = set(models) | set(deployments)
    shown = ", ".join(sorted(set(models)))
    for model in policy.models:
        if model not in known:
            raise ValueError(f"routing.models.{model}: no deployment serves model {model!r} (models: {shown})")
    for kind in FALLBACK_FIELDS:
        for model, targets in getattr(policy, kind).items():
            if model not in known:
                raise ValueError(f"routing.{kind}.{model}: no deployment serves model {model!r} (models: {shown})")
            for i, target in enumerate(targets):
                if target not in known:
                    raise ValueError(f"routing.{kind}.{model}[{i}]: unknown model {target!r} "
                                     f"(models: {shown})")


# --- the state a strategy reads ----------------------------------------------------------

@dataclass(frozen=True)
class Candidate:
    """One deployment replica as the router sees it: config plus the load its engine last pushed.

    ``latency_s``/``ttft_s`` are time-decayed averages (None: no call finished yet);
    ``headroom`` is the fraction of the rate-limit window left (None: no limit configured).
    ``price_in``/``price_out`` are USD per million tokens (None: unknown price).
    """

    deployment: str
    key: Any = None               # the engine, opaque here
    weight: float = 1.0
    queued: int = 0
    in_flight: int = 0
    circuit: str = "closed"
    latency_s: float | None = None
    ttft_s: float | None = None
    headroom: float | None = None
    price_in: float | None = None
    price_out: float | None = None
    max_input_tokens: int | None = None
    retry_at_unix: float | None = None   # an open circuit admits a probe from then on
    budget_spent: tuple[str, ...] = ()   # USD budgets (docs/spend.md) with no room left this period
    provider: str = ""
    # What its engine refuses a typical request with now (an open circuit, a spent window or spend
    # budget: core/refusals.py), pushed with its load, and when that lifts (unix; None: unknown).
    refusal: InferenceError | None = None
    refusal_until_unix: float | None = None
    # Another node's deployment (reached through this node's relay), and that node's name.
    remote: bool = False
    node: str = ""

    @property
    def label(self) -> str:
        """The deployment as a refusal names it: ``name``, or ``name@node`` on another node."""
        return f"{self.deployment}@{self.node}" if self.remote else self.deployment

    @property
    def busy(self) -> int:
        return self.queued + self.in_flight


def input_estimate(messages: Iterable[Mapping[str, Any]]) -> int:
    """The prompt's size for the pre-call check: its text at ~4 characters a token.

    It errs low on purpose (images, tool definitions and framing are not counted; CJK text
    has more tokens than this says): a prompt near a window is sent, and the provider's own
    ContextLengthExceeded then takes ``context_window_fallbacks``. Skipping a deployment that
    would have served is the worse mistake.
    """
    chars = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(part["text"]) for part in content
                         if isinstance(part, Mapping) and isinstance(part.get("text"), str))
    return chars // 4


def refusal_of(c: Candidate, input_tokens: int | None, now_unix: float) -> InferenceError | None:
    """The refusal ``c`` answers now without calling its provider, or None; nothing is sent to it then.

    Its engine's own refusal as pushed (retry-after as of ``now_unix``), until it lifts: an open
    circuit past its retry time is not refused, since the next call there is the breaker's
    half-open probe (skipping it would keep an idle circuit open for good). Else a prompt
    longer than its window, refused as its engine would refuse it.
    """
    if c.refusal is not None and (c.refusal_until_unix is None or now_unix < c.refusal_until_unix):
        return refusals.as_of(c.refusal, c.refusal_until_unix, now_unix)
    if input_tokens is not None and c.max_input_tokens is not None and input_tokens > c.max_input_tokens:
        return refusals.context_too_long(c.deployment, c.provider, input_tokens, c.max_input_tokens)
    return None


_REASONS = {CircuitOpen: "circuit_open", BudgetExceeded: "no_budget", ContextLengthExceeded: "context_window"}


def skip_reason(c: Candidate, input_tokens: int | None = None, now_unix: float = 0.0) -> str | None:
    """Why ``c`` is left out before any strategy runs (circuit_open, no_budget, context_window), or None."""
    refused = refusal_of(c, input_tokens, now_unix)
    return None if refused is None else _REASONS.get(type(refused), refused.kind)


def _weighted(cands: list[Candidate], rand: Callable[[], float]) -> list[Candidate]:
    """Weighted random order without replacement: the first is picked with probability weight/sum."""
    left, out = list(cands), []
    while left:
        total = sum(max(0.0, c.weight) for c in left)
        if total <= 0:
            out.extend(left)  # all zero weight: kept, in config order, after every weighted one
            break
        point, chosen = rand() * total, left[-1]
        for c in left:
            point -= max(0.0, c.weight)
            if point < 0:
                chosen = c
                break
        left.remove(chosen)
        out.append(chosen)
    return out


def _ranked(cands: list[Candidate], score: Callable[[Candidate], float], rand: Callable[[], float]) -> list[Candidate]:
    """Lowest score first; equal scores in random order (so idle replicas share the load)."""
    keyed = [(score(c), rand(), i, c) for i, c in enumerate(cands)]
    keyed.sort()  # the index is unique: candidates themselves are never compared
    return [item[3] for item in keyed]


_UNKNOWN_LAST = float("inf")


def order(strategy: str, candidates: Sequence[Candidate], *, rand: Callable[[], float], streamed: bool = False,
          input_tokens: int = 0, output_tokens: int = 0) -> list[Candidate]:
    """The candidates in the order to try them under ``strategy`` (the first is the pick).

    Callers drop skipped candidates first (:func:`skip_reason`).
    """
    cands = list(candidates)
    if strategy == "weighted":
        return _weighted(cands, rand)
    if strategy == "least-busy":
        return _ranked(cands, lambda c: c.busy, rand)
    if strategy == "latency":
        def timed(c: Candidate) -> float | None:
            return c.ttft_s if streamed and c.ttft_s is not None else c.latency_s
        known = [t for c in cands if (t := timed(c)) is not None]
        # A deployment not timed yet ties with the fastest: it gets tried (and timed) without
        # taking every call at once, as it would if unknown ranked first (a restarted engine).
        fastest = min(known, default=0.0)
        return _ranked(cands, lambda c: fastest if (t := timed(c)) is None else t, rand)
    if strategy == "cost":
        def cost(c: Candidate) -> float:
            if c.price_in is None or c.price_out is None:
                return _UNKNOWN_LAST  # an unknown price is never taken for a cheap one
            return (input_tokens * c.price_in + output_tokens * c.price_out) / 1_000_000
        return _ranked(cands, cost, rand)
    if strategy == "usage":
        return _ranked(cands, lambda c: -(1.0 if c.headroom is None else c.headroom), rand)
    raise ValueError(f"unknown routing strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")


# --- one model group: the plan, and what a failure there leads to -------------------------

DEFAULT_OUTPUT_TOKENS = 256   # the cost strategy's output estimate when the call sets no max_tokens


def output_estimate(max_tokens: object) -> int:
    """The answer's size for the cost strategy: the call's ``max_tokens``, else a typical answer."""
    return max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) else DEFAULT_OUTPUT_TOKENS


@dataclass(frozen=True)
class GroupPlan:
    """How the router takes one model group: the deployments to try, in order, and those it refuses.

    ``refused`` holds one refusal per deployment (the first of its replicas; another node's
    deployment named ``name@node``), sorted by name: its engine's own, as pushed
    (:func:`refusal_of`). Nothing is sent to a refused deployment. ``skipped`` is the same
    per candidate refused, so an attempt list can name the node of each.
    """

    model: str
    ordered: list[Candidate]
    refused: list[tuple[str, InferenceError]]
    skipped: list[tuple[Candidate, InferenceError]] = field(default_factory=list)

    @property
    def refusal(self) -> InferenceError | None:
        """What the call fails with here when no deployment may be tried (None while one may, or
        when the group has no deployment at all): the group's refusal, as an engine builds it."""
        if self.ordered or not self.refused:
            return None
        return refusals.for_group(self.model, self.refused)


def reaches_other_nodes(cross_node: str) -> bool:
    """Whether a call may be served by another node's deployment under ``cross_node`` (:data:`CROSS_NODE`)."""
    return cross_node != "local_only"


def plan_group(model: str, candidates: Sequence[Candidate], *, strategy: str, rand: Callable[[], float],
               streamed: bool, input_tokens: int, output_tokens: int, now_unix: float,
               cross_node: str = "prefer_local") -> GroupPlan:
    """Drop the candidates that would refuse the call now; order the rest by ``strategy``.

    ``cross_node`` (:data:`CROSS_NODE`): ``prefer_local`` orders this node's deployments first
    and other nodes' after them (each part by the strategy), so another node serves only when
    no local one could; ``local_only`` leaves other nodes' out; ``any`` orders them all alike.
    """
    usable: list[Candidate] = []
    refused: dict[str, InferenceError] = {}
    skipped: list[tuple[Candidate, InferenceError]] = []
    for candidate in candidates:
        if candidate.remote and not reaches_other_nodes(cross_node):
            continue
        refusal = refusal_of(candidate, input_tokens, now_unix)
        if refusal is None:
            usable.append(candidate)
        else:
            refused.setdefault(candidate.label, refusal)
            skipped.append((candidate, refusal))

    def ranked(part: list[Candidate]) -> list[Candidate]:
        return order(strategy, part, rand=rand, streamed=streamed, input_tokens=input_tokens,
                     output_tokens=output_tokens) if part else []

    if cross_node == "prefer_local":
        ordered = ranked([c for c in usable if not c.remote]) + ranked([c for c in usable if c.remote])
    else:
        ordered = ranked(usable)
    return GroupPlan(model, ordered, sorted(refused.items(), key=lambda item: item[0]), skipped)


Step = Literal["end", "next", "fallback"]


def after_failure(error: InferenceError, *, streamed: bool, idempotent: bool, sent: bool,
                  deadline_passed: bool) -> Step:
    """Where a call goes after a deployment of its group failed it with ``error``.

    ``end``: nowhere, the caller gets ``error``: a token already reached the caller (retries happen
    only before the first), the deadline's grace is spent (GatewayTimeout), or the call is not
    idempotent and may have run upstream (``sent``). ``next``: the group's next deployment, when
    the error says something about the deployment, not the request. ``fallback``: the model's
    fallbacks for that error, if any (:class:`FallbackPlan`), else the caller gets it.
    """
    if streamed or isinstance(error, GatewayTimeout) or (sent and not idempotent):
        return "end"
    if deadline_passed or not moves_within_group(error):
        return "fallback"
    return "next"


CIRCUIT_HOLD_S = 1.0      # an engine that answered CircuitOpen is skipped this long when it gave no retry time
MAX_CIRCUIT_HOLD_S = 30.0


def held_until(error: CircuitOpen, now_unix: float) -> float:
    """Until when (unix) to skip an engine that answered ``error``: its retry time, within bounds."""
    hold = error.retry_at_unix_ms / 1000 - now_unix if error.retry_at_unix_ms else CIRCUIT_HOLD_S
    return now_unix + max(0.05, min(hold, MAX_CIRCUIT_HOLD_S))


def held_refusal(held: tuple[float, CircuitOpen], now_unix: float) -> tuple[CircuitOpen, float] | None:
    """An engine's own CircuitOpen answer, held until ``held[0]``: the refusal the router repeats
    (until its retry time when that is later than ``now_unix``, else the hold's end), or None once over."""
    until, error = held
    if until <= now_unix:
        return None
    retry_at = error.retry_at_unix_ms / 1000
    return error, retry_at if retry_at > now_unix else until


# --- fallbacks and the shared retry budget -----------------------------------------------

# Errors that say something about the deployment, not about the request: another model may serve it.
_REQUEST_ERRORS = (BadRequest, ContentFiltered, Cancelled, DeadlineExceeded)
_DEPLOYMENT_ERRORS = (CircuitOpen, QueueFull, BudgetExceeded, AuthenticationError, PermissionDenied, NotFound,
                      CredentialUnavailable)


def fallback_kind(error: InferenceError) -> str | None:
    """Which fallback list ``error`` triggers: one of FALLBACK_FIELDS, or None (no fallback)."""
    if isinstance(error, ContextLengthExceeded):
        return "context_window_fallbacks"
    if isinstance(error, ContentFiltered):
        return "content_policy_fallbacks"
    if isinstance(error, _REQUEST_ERRORS):
        return None
    if isinstance(error, _DEPLOYMENT_ERRORS) or error.retryable:
        return "fallbacks"
    return None


def moves_within_group(error: InferenceError) -> bool:
    """Another deployment of the same group may still serve after this error."""
    return fallback_kind(error) == "fallbacks"


class FallbackPlan:
    """Which model group to try next. Each group is visited once; lists of the asked model only."""

    def __init__(self, model: str, policy: RoutingPolicy, request_fallbacks: Sequence[str] | None = None) -> None:
        self.model = model
        self.policy = policy
        # The caller's own list replaces the configured one; an empty list means none for this call.
        self.request_fallbacks = list(request_fallbacks) if request_fallbacks is not None else None
        self.visited: list[str] = [model]

    def targets(self, kind: str) -> list[str]:
        if kind == "fallbacks" and self.request_fallbacks is not None:
            return self.request_fallbacks  # the caller's own list replaces the configured one
        return list(getattr(self.policy, kind).get(self.model, ()))

    def next_model(self, error: InferenceError) -> str | None:
        kind = fallback_kind(error)
        if kind is None:
            return None
        for target in self.targets(kind):
            if target not in self.visited:
                self.visited.append(target)
                return target
        return None


@dataclass
class RequestRetries:
    """The retries one request may still make, across every deployment it visits (not
    ``core.retry.RetryBudget``, the engine's cap on retries against retry storms): every deployment tried gets its first
    attempt; a second attempt anywhere (a retry on the same deployment, or the engine's
    crash retry) spends one. So attempts <= deployments tried + retries, never their product."""

    retries: int | None = None     # None until the first deployment's policy is known
    spent: int = 0

    def start(self, default_retries: int) -> None:
        if self.retries is None:
            self.retries = max(0, default_retries)

    @property
    def left(self) -> int:
        return max(0, (self.retries or 0) - self.spent)

    def charge(self, attempts: int) -> None:
        """A deployment made ``attempts`` upstream attempts: all but the first were retries."""
        self.spent += max(0, attempts - 1)


# --- context windows ---------------------------------------------------------------------

@functools.cache
def context_windows() -> dict[str, dict[str, int]]:
    raw = yaml.safe_load(resources.files("actors").joinpath("data/context_windows.yaml").read_text(encoding="utf-8"))
    return {family: {model: int(size) for model, size in models.items()} for family, models in raw.items()}


def context_window(family: str | None, model: str) -> int | None:
    """The model's input window in tokens from the package table, or None when unknown
    (``family``: the runner's, ``ModelRunner.family``)."""
    table = context_windows()
    for name in _names(model):
        for name_of_table in families(family, table):
            size = _match(table.get(name_of_table, {}), name)
            if size is not None:
                return size
    return None
