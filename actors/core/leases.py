"""Leases of a strict budget: the leader hands each engine a share of a window it spends locally.

Learned from YouTube's Doorman (clients ask for capacity with what they *want*, the server
answers what they *have* for a lease that expires and is refreshed on an interval, shares
follow demand, a new server learns for one lease length before it hands out anything) and
from Gubernator's GLOBAL behaviour (hits are decided locally, the owner is told
asynchronously); unlike GLOBAL, a lease is a hard bound, never an overshoot.

A budget is a cap per window (``rpm``/``tpm`` of :class:`~actors.core.ratelimit.RateLimits`,
or a strict spend budget's nano-USD over its period, requests unlimited), so a lease is an
amount of one window, cumulative: "this client may have spent up to ``lease`` in window
``w``", what it spent included.

The invariant the :class:`LeaseTable` keeps, per window and limited dimension::

    sum over clients of counted(client) <= cap

where ``counted`` is the most the client may spend: the largest grant it may still be
spending under (every grant sent and not yet superseded by a later one the client says it
holds; an expired grant stays counted, at its amount, because what was spent under it is
unknown), and what it reported spent, whichever is larger. A client never spends beyond the
grant it holds (:class:`LeaseHolder`), so the cluster never spends beyond the cap. A lease
shrinks only once the client acknowledges the smaller grant; until then the larger one counts.

Expiry is safe without synchronised clocks: a client's lease ends ``ttl_s`` after it *sent*
the ask the grant answers, the leader's ``ttl_s`` after it *answered*, which is later.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from actors.core.ratelimit import RateLimits, window_at

__all__ = ["LeaseAsk", "LeaseGrant", "LeaseTable", "LeaseHolder", "Pair", "LEASE_TTL_S", "REFRESH_S", "HORIZON_S",
           "fits", "incarnation"]

INCARNATION_SHIFT = 28  # a client's asks are numbered ``incarnation << 28 | n`` (see ``incarnation``)
LEASE_TTL_S = 3.0   # how long a grant may be spent without a newer one (and how long a new leader learns)
REFRESH_S = 0.2     # how often an active client asks again
HORIZON_S = 1.0     # a client wants what it expects to be asked for in this long, plus its queue

Pair = tuple[int, int]                      # (requests, tokens)
Limit = tuple[int | None, int | None]       # None: that dimension is unlimited


@dataclass(frozen=True)
class LeaseAsk:
    """A client's refresh: what it spent in ``window``, which grant it spends under, what it wants."""

    client: str
    seq: int
    window: int
    holding: int        # seq of the grant it spends under in ``window`` (0: none)
    held: Limit         # that grant's amounts (a new leader counts them while it learns)
    spent: Pair
    want: Pair          # more than ``spent`` it would like to have
    need: Pair = (0, 0)  # the request it is blocked on: less room than this is no use to it


@dataclass(frozen=True)
class LeaseGrant:
    """The answer to ask ``seq``: may have spent up to ``lease`` in ``window`` for ``ttl_s`` from the ask."""

    client: str
    seq: int
    window: int
    lease: Limit
    ttl_s: float
    left: Limit = (None, None)   # the window's room not yet spent anywhere (unspent leases included)


def incarnation(wall: float) -> int:
    """The ``first_seq`` of a holder whose client name outlives it (a spend budget's stable counter
    slot): numbered from the wall clock in tenths of a second, so a restarted holder's asks are
    all later than its predecessor's and the table knows a new incarnation when it asks
    (``_Client.restarted``). Holders numbered from 0 are one incarnation for ever."""
    return int(wall * 10) << INCARNATION_SHIFT


def fits(lease: Limit, spent: Pair, cost: Pair) -> bool:
    return all(cap is None or used + more <= cap for cap, used, more in zip(lease, spent, cost))


def _max(*values: Pair) -> Pair:
    return (max(v[0] for v in values), max(v[1] for v in values))


@dataclass
class _Client:
    """What the leader counts for one client in one window."""

    grants: dict[int, tuple[Pair, float]] = field(default_factory=dict)   # seq -> (amounts, expires at)
    floor: Pair = (0, 0)     # expired grants and what a new leader learned: spent under them is unknown
    spent: Pair = (0, 0)
    gone: Pair = (0, 0)      # what earlier incarnations may have spent that this one's count lacks
    incarnation: int = 0

    def held(self) -> Pair:
        return _max(self.floor, self.spent, *(amounts for amounts, _ in self.grants.values()))

    def counted(self) -> Pair:
        held = self.held()
        return (held[0] + self.gone[0], held[1] + self.gone[1])

    def restarted(self, incarnation: int, spent: Pair) -> None:
        """A later incarnation of this client asks (a restarted engine on a stable slot): its
        predecessor may have spent up to what it held, and the part the new one does not count
        (``spent`` is its count) stays counted, on top of whatever the new one is granted."""
        held = self.held()
        self.gone = (self.gone[0] + max(0, held[0] - spent[0]), self.gone[1] + max(0, held[1] - spent[1]))
        self.grants, self.floor, self.incarnation = {}, (0, 0), incarnation


class LeaseTable:
    """The leader's side of one budget: every client's grants per window, and the shares."""

    def __init__(self, limits: RateLimits, *, clock: Callable[[], float], wall: Callable[[], float],
                 ttl_s: float = LEASE_TTL_S, learning_s: float | None = None) -> None:
        self.limits = limits
        self.clock, self.wall = clock, wall
        self.ttl_s = ttl_s
        # A new leader does not know the grants its predecessor made: for one lease length it
        # only renews what clients say they hold (then every grant it did not hear of has expired).
        self.ready_at = clock() + (ttl_s if learning_s is None else learning_s)
        self.windows: dict[int, dict[str, _Client]] = {}
        self.wants: dict[str, tuple[Pair, float]] = {}   # client -> (want, when last heard)
        self.needs: dict[str, Pair] = {}

    @property
    def learning(self) -> bool:
        return self.clock() < self.ready_at

    def caps(self, window: int) -> Limit:
        """What the window allows now (``burst`` paces it)."""
        current, elapsed = window_at(self.limits, self.wall())
        fraction = 1.0 if window < current else 0.0 if window > current else elapsed
        return tuple(None if limit is None else math.floor(self.limits.allowed(limit, fraction))  # type: ignore[return-value]
                     for limit in (self.limits.rpm, self.limits.tpm))

    def ask(self, a: LeaseAsk) -> LeaseGrant:
        now = self.clock()
        self.expire(now)
        current, _ = window_at(self.limits, self.wall())
        clients = self.windows.setdefault(a.window, {}) if current - 1 <= a.window <= current + 1 else {}
        c = clients.setdefault(a.client, _Client())
        incarnation = a.seq >> INCARNATION_SHIFT
        if incarnation < c.incarnation:   # a dead predecessor's late ask: nothing for it
            return LeaseGrant(a.client, a.seq, a.window, tuple(None if cap is None else 0  # type: ignore[arg-type]
                                                              for cap in self.caps(a.window)), self.ttl_s)
        if incarnation > c.incarnation:
            c.restarted(incarnation, a.spent)
        c.spent = a.spent
        for seq in [s for s in c.grants if s < a.holding]:
            del c.grants[seq]   # superseded: the client spends under ``holding`` now
        if a.holding and a.holding not in c.grants:
            c.floor = _max(c.floor, tuple(v or 0 for v in a.held))  # type: ignore[arg-type]  # another leader's grant
        self.wants[a.client] = (a.want, now)
        self.needs[a.client] = a.need
        caps = self.caps(a.window)
        if self.learning or a.window not in self.windows:
            lease = tuple(None if cap is None else n for cap, n in zip(caps, c.held()))
        else:
            lease = self._share(a.client, c, clients, caps, now)
        amounts = tuple(n if n is not None else 0 for n in lease)
        if a.window in self.windows:
            c.grants[a.seq] = (amounts, now + self.ttl_s)  # type: ignore[assignment]
        return LeaseGrant(a.client, a.seq, a.window, lease, self.ttl_s, self._left(clients, caps))  # type: ignore[arg-type]

    def _share(self, me: str, c: _Client, clients: Mapping[str, _Client], caps: Limit, now: float) -> Limit:
        """This client's lease: what it spent, and its demand-weighted part of what is left."""
        active = {name: want for name, (want, seen) in self.wants.items() if now - seen <= self.ttl_s}
        out: list[int | None] = []
        for d, cap in enumerate(caps):
            if cap is None:
                out.append(None)
                continue
            others = sum(o.counted()[d] for name, o in clients.items() if name != me)
            free = cap - others - c.spent[d] - c.gone[d]
            # The pool the active clients' wants divide: nobody's spend comes back, and an idle
            # or lost client's unspent lease does only when it says so (or never, once expired).
            base = sum(o.spent[d] + o.gone[d] if name in active else o.counted()[d] for name, o in clients.items())
            pool = cap - base
            wanted = sum(w[d] for w in active.values())
            want = active.get(me, (0, 0))[d]
            # Rounded up: rounded down, the window's last few requests would be nobody's share
            # (1 left, three clients wanting: 0 each) while every client waits for them. At most
            # one over a client's exact part; ``free`` keeps the sum within the cap.
            fair = pool if wanted <= pool else -(-pool * want // max(1, wanted))
            room = max(0, min(want, fair, free))
            need = self.needs.get(me, (0, 0))[d]
            if room < need:
                # Room smaller than the request it waits for is no use to it and no one else's
                # while it holds it: every client would wait on a fragment (costs are not one
                # unit, as a spend budget's are not) and none would be refused. So it gets what
                # that request needs, first come first served, or gives its fragment back.
                room = need if free >= need else 0
            out.append(c.spent[d] + room)
        return tuple(out)  # type: ignore[return-value]

    @staticmethod
    def _left(clients: Mapping[str, _Client], caps: Limit) -> Limit:
        return tuple(None if cap is None else cap - sum(max(o.spent[d], o.floor[d]) + o.gone[d] for o in clients.values())
                     for d, cap in enumerate(caps))  # type: ignore[return-value]

    def expire(self, now: float) -> None:
        """Expired grants stay counted as floors; windows before the last one and silent clients' wants go."""
        current, _ = window_at(self.limits, self.wall())
        for window in [w for w in self.windows if w < current - 1]:
            del self.windows[window]
        for clients in self.windows.values():
            for c in clients.values():
                for seq, (amounts, expires) in list(c.grants.items()):
                    if expires <= now:
                        c.floor = _max(c.floor, amounts)
                        del c.grants[seq]
        for name in [n for n, (_, seen) in self.wants.items() if now - seen > self.ttl_s]:
            del self.wants[name]
            self.needs.pop(name, None)

    def lose(self, client: str) -> None:
        """A client known gone: its demand no longer counts (its grants do, until they expire and after)."""
        self.wants.pop(client, None)
        self.needs.pop(client, None)

    def seed(self, window: int, spent: Mapping[str, Pair]) -> None:
        """After learning: what every slot spent in ``window``, from the cluster's counters (the
        clients that never asked this leader are counted at that)."""
        clients = self.windows.setdefault(window, {})
        for name, amounts in spent.items():
            c = clients.setdefault(name, _Client())
            c.floor = _max(c.floor, amounts)

    def counted(self, window: int) -> Pair:
        """The most the clients may spend in ``window`` between them."""
        clients = self.windows.get(window, {}).values()
        return (sum(c.counted()[0] for c in clients), sum(c.counted()[1] for c in clients))


class LeaseHolder:
    """One client's side: the grant it spends under, when to ask again, and what it wants."""

    def __init__(self, client: str, *, clock: Callable[[], float], refresh_s: float = REFRESH_S,
                 horizon_s: float = HORIZON_S, first_seq: int = 0) -> None:
        self.client = client
        self.clock = clock
        self.refresh_s, self.horizon_s = refresh_s, horizon_s
        self.grant: LeaseGrant | None = None
        self.expires = 0.0
        self.acked = True            # the leader heard which grant we hold
        self.seq = first_seq         # asks are numbered after it
        self.sent: dict[int, float] = {}     # asks not answered yet: seq -> when sent
        self.last_ask = -math.inf
        self.arrived: list[int] = [0, 0]     # asked of this client since the last ask
        self.rate: tuple[float, float] = (0.0, 0.0)   # per second, smoothed
        self.blocked = False          # a request waits for more than the grant allows
        self.need: Pair = (0, 0)      # what that request costs

    # -- spending --------------------------------------------------------------------

    def usable(self, window: int, now: float) -> LeaseGrant | None:
        g = self.grant
        return g if g is not None and g.window == window and now < self.expires else None

    def allows(self, window: int, now: float, spent: Pair, cost: Pair) -> bool:
        g = self.usable(window, now)
        return g is not None and fits(g.lease, spent, cost)

    def arrive(self, cost: Pair) -> None:
        """A request came in: demand, whether or not it is admitted (a lease must follow what is asked)."""
        self.arrived[0] += cost[0]
        self.arrived[1] += cost[1]

    # -- asking ----------------------------------------------------------------------

    def unanswered(self, now: float) -> float:
        """How long the oldest unanswered ask has been out (0: none)."""
        return now - min(self.sent.values()) if self.sent else 0.0

    def due(self, now: float) -> float | None:
        """When to ask next: at once while blocked with nothing in flight, every ``refresh_s`` while
        there is demand, an unspent grant or an unacknowledged one; None when idle. An ask still
        unanswered is repeated once an interval, never sooner: a slow leader asked more only
        answers later, until every answer comes older than a lease lasts."""
        if self.blocked and (not self.sent or now - self.last_ask >= self.refresh_s):
            return max(now, self.last_ask + self.refresh_s / 8)
        active = (self.blocked or any(self.arrived) or any(r > 0.01 for r in self.rate) or not self.acked
                  or (self.grant is not None and now < self.expires))
        return self.last_ask + self.refresh_s if active else None

    def ask(self, now: float, window: int, spent: Pair, backlog: Pair) -> LeaseAsk:
        elapsed = max(now - self.last_ask, 1e-3) if self.last_ask > -math.inf else self.refresh_s
        measured = (self.arrived[0] / elapsed, self.arrived[1] / elapsed)
        weight = min(1.0, elapsed / (2 * self.refresh_s))
        self.rate = tuple(old + weight * (new - old) for old, new in zip(self.rate, measured))  # type: ignore[assignment]
        self.arrived = [0, 0]
        want = tuple(math.ceil(r * self.horizon_s) + b for r, b in zip(self.rate, backlog))
        g = self.usable(window, now)
        self.seq += 1
        self.sent[self.seq] = now
        self.last_ask = now
        self.acked = True
        return LeaseAsk(self.client, self.seq, window, g.seq if g is not None else 0,
                        g.lease if g is not None else (None, None), spent, want,  # type: ignore[arg-type]
                        self.need if self.blocked else (0, 0))

    def granted(self, g: LeaseGrant, now: float) -> bool:
        """Take a grant: only the answer to an ask still out, newer than the one held, not yet expired."""
        sent = self.sent.get(g.seq)
        if g.client != self.client or sent is None:
            return False
        for seq in [s for s in self.sent if s <= g.seq]:
            del self.sent[seq]
        if self.grant is not None and (g.window, g.seq) < (self.grant.window, self.grant.seq):
            return False
        if sent + g.ttl_s <= now:
            return False
        self.grant, self.expires = g, sent + g.ttl_s
        self.acked = False
        return True

    def spent_out(self, window: int, cost: Pair) -> bool:
        """The last grant says the window has no room for ``cost`` anywhere in the cluster."""
        g = self.grant
        return g is not None and g.window == window and any(
            left is not None and more > left for left, more in zip(g.left, cost))
