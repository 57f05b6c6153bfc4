"""DeploymentStats: what one engine's terminals add up to, for /metrics, /v1/status and the dashboard.

Fed with the engine core's :class:`TerminalRecord`s (one per accepted request), in the
engine's own process: counting costs a few dictionary updates per request and no message.
A snapshot is plain data (dicts, lists, numbers, strings), so it rides in ``EngineStatus``
across processes and hosts with nothing to allow-list, and snapshots of several replicas
or nodes merge exactly (:func:`merge_snapshots`): counters and fixed-bucket histograms add.

Bounded whatever the traffic: histograms have fixed buckets, per-key counters keep at most
``max_keys`` keys (the rest are counted under ``OTHER_KEY``), error kinds are class names,
and the chart series is a ring of ``points`` buckets of ``step_s`` seconds (15 minutes).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable
from itertools import zip_longest
from typing import TYPE_CHECKING, Any

from actors.core.pricing import Price, cost_usd
from actors.core.records import TerminalRecord, terminal_record
from actors.types import Completed, Failed, Usage

if TYPE_CHECKING:
    from actors.core.jobs import Job

__all__ = ["LATENCY_BOUNDS", "Histogram", "DeploymentStats", "Terminals", "merge_snapshots", "quantile",
           "OTHER_KEY", "SERIES_STEP_S", "SERIES_POINTS"]

# Upper bounds in seconds (Prometheus' "le"); one more bucket holds everything above.
LATENCY_BOUNDS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                                     60.0, 120.0, 300.0)
OTHER_KEY = "(other)"
# Ends without an attempt that are the caller's doing or its deadline's, not a refusal of the gateway's.
_NOT_REFUSALS = ("Cancelled", "DeadlineExceeded")
SERIES_STEP_S = 10
SERIES_POINTS = 90          # 15 minutes of 10 s buckets


class Histogram:
    """Fixed-bucket histogram: ``counts[i]`` observations <= ``bounds[i]`` and > the bound before."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        value = max(0.0, float(value))
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def as_dict(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum, "count": self.count}


def quantile(counts: list[int], q: float, bounds: tuple[float, ...] = LATENCY_BOUNDS) -> float | None:
    """The q-quantile of a bucketed distribution, interpolated within its bucket (as PromQL's
    histogram_quantile does); None without observations. Above the last bound: that bound."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i >= len(bounds):
                return bounds[-1]
            lower = bounds[i - 1] if i else 0.0
            return lower + (bounds[i] - lower) * max(0.0, rank - seen) / n
        seen += n
    return bounds[-1]


def _zero_series_point(t0: int, buckets: int) -> list[Any]:
    # [t0, requests, failed, cost_usd, input_tokens, output_tokens, latency counts, ttft counts]
    return [t0, 0, 0, 0.0, 0, 0, [0] * buckets, [0] * buckets]


class DeploymentStats:
    def __init__(self, *, max_keys: int = 64, step_s: int = SERIES_STEP_S, points: int = SERIES_POINTS,
                 bounds: tuple[float, ...] = LATENCY_BOUNDS) -> None:
        self.max_keys = max_keys
        self.step_s = step_s
        self.points = points
        self.bounds = bounds
        self.outcomes: dict[str, dict[str, int]] = {}      # outcome -> error kind ("" on success) -> n
        self.retries = 0                                   # attempts beyond the first, summed
        self.fallbacks = 0                                 # requests that came here as a fallback of another model
        self.latency = Histogram(bounds)
        self.ttft = Histogram(bounds)
        self.tokens = {"input": 0, "cached_input": 0, "output": 0, "reasoning": 0}
        self.cost_usd = 0.0
        self.unpriced = 0                                  # terminals whose cost is unknown
        self.keys: dict[str, dict[str, float]] = {}
        self.last_success_unix: float | None = None
        self.last_failure_unix: float | None = None
        self.failing_since_unix: float | None = None       # first failure after the last success
        self.series: deque[list[Any]] = deque(maxlen=points)
        self.rejected: dict[str, int] = {}                 # error class -> requests refused before acceptance
        # error class -> requests that ended without any attempt, for a reason of the gateway's (queue
        # full, circuit open, budget spent, prompt too long, bad input): rejected ones included.
        self.refused: dict[str, int] = {}
        self.probes = {"ok": 0, "failed": 0}              # the engine's own known-good calls (not requests)

    def reject(self, error_kind: str) -> None:
        """A request refused at admission (bad input, queue full, draining): it has no TerminalRecord."""
        self.rejected[error_kind] = self.rejected.get(error_kind, 0) + 1
        self.refused[error_kind] = self.refused.get(error_kind, 0) + 1

    def probe(self, ok: bool) -> None:
        self.probes["ok" if ok else "failed"] += 1

    def record(self, r: TerminalRecord) -> None:
        kinds = self.outcomes.setdefault(r.outcome, {})
        kinds[r.error_kind] = kinds.get(r.error_kind, 0) + 1
        if r.failed and r.attempts == 0 and r.error_kind not in _NOT_REFUSALS:
            self.refused[r.error_kind] = self.refused.get(r.error_kind, 0) + 1
        self.retries += max(0, r.attempts - 1)
        self.fallbacks += 1 if r.fallback_from else 0   # the client marked it (records.FALLBACK_METADATA)
        self.latency.observe(r.latency_s)
        if r.ttft_s is not None:
            self.ttft.observe(r.ttft_s)
        tokens = self.tokens
        tokens["input"] += r.input_tokens
        tokens["cached_input"] += r.cached_input_tokens
        tokens["output"] += r.output_tokens
        tokens["reasoning"] += r.reasoning_tokens
        cost = r.cost_usd or 0.0
        if r.cost_usd is None:
            self.unpriced += 1
        self.cost_usd += cost
        key = r.key or ""
        if key and key not in self.keys and len(self.keys) >= self.max_keys:
            key = OTHER_KEY
        per = self.keys.get(key)
        if per is None:
            per = self.keys[key] = {"requests": 0, "failed": 0, "input_tokens": 0, "output_tokens": 0,
                                    "cost_usd": 0.0}
        per["requests"] += 1
        per["failed"] += r.failed
        per["input_tokens"] += r.input_tokens
        per["output_tokens"] += r.output_tokens
        per["cost_usd"] += cost
        if r.failed:
            self.last_failure_unix = r.at_unix
            if self.failing_since_unix is None:
                self.failing_since_unix = r.at_unix
        else:
            self.last_success_unix = r.at_unix
            self.failing_since_unix = None
        point = self._point(r.at_unix)
        point[1] += 1
        point[2] += r.failed
        point[3] += cost
        point[4] += r.input_tokens
        point[5] += r.output_tokens
        point[6][bisect.bisect_left(self.bounds, max(0.0, r.latency_s))] += 1
        if r.ttft_s is not None:
            point[7][bisect.bisect_left(self.bounds, max(0.0, r.ttft_s))] += 1

    def _point(self, at_unix: float) -> list[Any]:
        t0 = int(math.floor(at_unix / self.step_s) * self.step_s)
        if self.series and self.series[-1][0] == t0:
            return self.series[-1]
        if self.series and self.series[-1][0] > t0:
            # A record stamped a little in the past (clock step): counted in the bucket it fits, if kept.
            kept: list[Any]
            for kept in reversed(self.series):
                if kept[0] == t0:
                    return kept
            return _zero_series_point(t0, len(self.bounds) + 1)  # too old for the ring: not charted
        point = _zero_series_point(t0, len(self.bounds) + 1)
        self.series.append(point)
        return point

    def snapshot(self, now_unix: float) -> dict[str, Any]:
        horizon = now_unix - self.step_s * self.points
        return {
            "outcomes": {o: dict(k) for o, k in self.outcomes.items()},
            "rejected": dict(self.rejected), "refused": dict(self.refused), "probes": dict(self.probes),
            "retries": self.retries, "fallbacks": self.fallbacks,
            "latency": self.latency.as_dict(), "ttft": self.ttft.as_dict(),
            "tokens": dict(self.tokens), "cost_usd": self.cost_usd, "unpriced": self.unpriced,
            "keys": {k: dict(v) for k, v in self.keys.items()},
            "last_success_unix": self.last_success_unix, "last_failure_unix": self.last_failure_unix,
            "failing_since_unix": self.failing_since_unix,
            "step_s": self.step_s,
            "series": [[p[0], p[1], p[2], p[3], p[4], p[5], list(p[6]), list(p[7])]
                       for p in self.series if p[0] > horizon],
        }


def _add_counts(into: list[int], more: list[int]) -> list[int]:
    return [a + b for a, b in zip_longest(into, more, fillvalue=0)]


def _latest(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def merge_snapshots(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """One deployment's snapshots from several replicas or nodes, added up (empty ones skipped)."""
    snapshots = [s for s in snapshots if s]
    out: dict[str, Any] = {"outcomes": {}, "rejected": {}, "refused": {}, "probes": {"ok": 0, "failed": 0}, "retries": 0, "fallbacks": 0,
                           "latency": {"counts": [], "sum": 0.0, "count": 0},
                           "ttft": {"counts": [], "sum": 0.0, "count": 0},
                           "tokens": {}, "cost_usd": 0.0, "unpriced": 0, "keys": {},
                           "last_success_unix": None, "last_failure_unix": None, "failing_since_unix": None,
                           "step_s": SERIES_STEP_S, "series": []}
    series: dict[int, list[Any]] = {}
    for s in snapshots:
        for outcome, kinds in s.get("outcomes", {}).items():
            mine = out["outcomes"].setdefault(outcome, {})
            for kind, n in kinds.items():
                mine[kind] = mine.get(kind, 0) + n
        for name in ("rejected", "refused", "probes"):
            for kind, n in s.get(name, {}).items():
                out[name][kind] = out[name].get(kind, 0) + n
        out["retries"] += s.get("retries", 0)
        out["fallbacks"] += s.get("fallbacks", 0)
        for name in ("latency", "ttft"):
            h = s.get(name) or {}
            out[name]["counts"] = _add_counts(out[name]["counts"], h.get("counts", []))
            out[name]["sum"] += h.get("sum", 0.0)
            out[name]["count"] += h.get("count", 0)
        for name, n in s.get("tokens", {}).items():
            out["tokens"][name] = out["tokens"].get(name, 0) + n
        out["cost_usd"] += s.get("cost_usd", 0.0)
        out["unpriced"] += s.get("unpriced", 0)
        for key, per in s.get("keys", {}).items():
            mine = out["keys"].setdefault(key, {})
            for name, n in per.items():
                mine[name] = mine.get(name, 0) + n
        out["last_success_unix"] = _latest(out["last_success_unix"], s.get("last_success_unix"))
        out["last_failure_unix"] = _latest(out["last_failure_unix"], s.get("last_failure_unix"))
        out["step_s"] = s.get("step_s", out["step_s"])
        for p in s.get("series", []):
            mine = series.get(p[0])
            if mine is None:
                series[p[0]] = [p[0], p[1], p[2], p[3], p[4], p[5], list(p[6]), list(p[7])]
            else:
                for i in range(1, 6):
                    mine[i] += p[i]
                mine[6], mine[7] = _add_counts(mine[6], p[6]), _add_counts(mine[7], p[7])
    # Failing as a whole only when every replica that served anything is failing: since the latest of them.
    served = [s for s in snapshots if s.get("last_success_unix") or s.get("last_failure_unix")]
    if served and all(s.get("failing_since_unix") is not None for s in served):
        out["failing_since_unix"] = max(s["failing_since_unix"] for s in served)
    out["series"] = [series[t] for t in sorted(series)]
    return out


class Terminals:
    """One engine's requests counted three ways: accepted, completed and failed for its status;
    a :class:`TerminalRecord` per terminal until the shell takes them (the ledger, the request
    log); and the same records in its :class:`DeploymentStats` (the engine's own known-good
    probes apart)."""

    def __init__(self, *, node: str, model: str, provider: str, price: Price | None,
                 clock: Callable[[], float], wall: Callable[[], float]) -> None:
        self.node, self.model, self.provider, self.price = node, model, provider, price
        self.clock, self.wall = clock, wall
        self.accepted = 0
        self.completed = 0
        self.failed = 0
        self.records: list[TerminalRecord] = []
        self.stats = DeploymentStats()

    def ended(self, job: Job, message: Completed | Failed) -> None:
        record = self._record(job, message)
        if record.failed:
            self.failed += 1
        else:
            self.completed += 1
        self.records.append(record)
        if job.known_good:
            self.stats.probe(not record.failed)
        else:
            self.stats.record(record)

    def _record(self, job: Job, message: Completed | Failed) -> TerminalRecord:
        if isinstance(message, Completed):
            cost = message.cost_usd
        else:
            partial = message.error.partial_usage
            cost = cost_usd(Usage.from_fields(partial), self.price) if partial else None
        first = job.first_token_unix
        return terminal_record(message, at_unix=self.wall(), node=self.node, model=self.model,
                               provider=self.provider, metadata=job.request.metadata or {},
                               streamed=bool(job.request.stream), latency_s=self.clock() - job.accepted_mono,
                               ttft_s=(first - job.accepted_unix) if first else None,
                               charged_tokens=job.charged_tokens, cost_usd=cost,
                               charged_usd=job.spend.charged_usd)

    def take(self) -> list[TerminalRecord]:
        records, self.records = self.records, []
        return records
