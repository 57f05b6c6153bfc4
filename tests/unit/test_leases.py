"""Leases of a strict budget (core/leases.py): the arithmetic on fake clocks, and the safety property."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from actors.core.leases import INCARNATION_SHIFT, LeaseAsk, LeaseGrant, LeaseHolder, LeaseTable, fits
from actors.core.ratelimit import RateLimits


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def table(rpm=100, tpm=None, window_s=60.0, learning_s=0.0, clock=None, **kw):
    clock = clock or Clock()
    return LeaseTable(RateLimits(rpm=rpm, tpm=tpm, window_s=window_s, mode="strict"), clock=clock,
                      wall=clock, learning_s=learning_s, **kw), clock


def ask(client, seq, window, want=(10, 0), spent=(0, 0), holding=0, held=(None, None), need=(0, 0)):
    return LeaseAsk(client, seq, window, holding, held, spent, want, need)


def test_a_lone_client_gets_what_it_wants_and_only_that():
    t, clock = table(rpm=100)
    w = int(clock() // 60)
    g = t.ask(ask("a", 1, w, want=(30, 0)))
    assert g.lease == (30, None) and g.left == (100, None)
    assert t.counted(w) == (30, 0)


def test_oversubscribed_shares_follow_demand_and_the_leaders_own_node_is_one_client_among_others():
    t, clock = table(rpm=120)
    w = int(clock() // 60)
    wants = {"leader-node": (40, 0), "m1": (80, 0), "m2": (120, 0)}   # 240 wanted of 120
    for name, want in wants.items():
        t.ask(ask(name, 1, w, want=want))                          # demand heard first
    grants = {name: t.ask(ask(name, 2, w, want=want)) for name, want in wants.items()}
    # Grants the first asks made are counted until acknowledged: acknowledge, then ask again.
    grants = {name: t.ask(ask(name, 3, w, want=wants[name], holding=2, held=g.lease)) for name, g in grants.items()}
    shares = {name: g.lease[0] for name, g in grants.items()}
    assert sum(shares.values()) <= 120
    assert shares["leader-node"] < shares["m1"] < shares["m2"]
    assert abs(shares["m2"] - 60) <= 15 and abs(shares["leader-node"] - 20) <= 10


@pytest.mark.parametrize("rpm", [59, 61, 64])
def test_the_windows_last_requests_are_someones_share_when_every_client_wants_more(rpm):
    # Three clients that want more than the window has. Shares rounded down would leave the last
    # one or two requests to nobody (1 left, 30 wanted: 0 each), every client waiting on them until
    # its callers' deadlines instead of spending them or being told the window is spent.
    t, clock = table(rpm=rpm)
    w = int(clock() // 60)
    wants = {"a": (5, 0), "b": (10, 0), "c": (15, 0)}
    spent = dict.fromkeys(wants, 0)
    held: dict[str, tuple[int, tuple]] = dict.fromkeys(wants, (0, (None, None)))
    seq = 0
    for round_ in range(1, 40):
        for name, want in wants.items():
            seq += 1
            g = t.ask(ask(name, seq, w, want=want, spent=(spent[name], 0), holding=held[name][0], held=held[name][1]))
            held[name] = (seq, g.lease)
            if round_ % 2 or round_ > 8:   # between spending rounds, asks that only report (blocked clients)
                spent[name] = g.lease[0]   # spends all it holds
        assert sum(spent.values()) <= rpm
    assert sum(spent.values()) == rpm and spent["a"] < spent["b"] < spent["c"], spent

def test_a_lease_shrinks_only_after_the_client_acknowledges_it():
    t, clock = table(rpm=100)
    w = int(clock() // 60)
    big = t.ask(ask("a", 1, w, want=(80, 0)))
    assert big.lease[0] == 80
    small = t.ask(ask("a", 2, w, want=(0, 0), spent=(5, 0), holding=1, held=big.lease))
    assert small.lease[0] == 5
    # "a" may still spend under the grant of 80 until it says it holds the small one:
    assert t.ask(ask("b", 1, w, want=(100, 0))).lease[0] == 20
    t.ask(ask("a", 3, w, want=(0, 0), spent=(5, 0), holding=2, held=small.lease))
    assert t.ask(ask("b", 2, w, want=(100, 0), holding=1, held=(20, None))).lease[0] == 95


def test_an_expired_grant_stays_counted_and_a_lost_clients_demand_stops_counting():
    t, clock = table(rpm=100, ttl_s=3.0)
    w = int(clock() // 60)
    t.ask(ask("a", 1, w, want=(60, 0)))
    clock.t += 4          # "a" went silent: its grant expired, what it spent under it is unknown
    g = t.ask(ask("b", 1, w, want=(100, 0)))
    assert g.lease[0] == 40 and t.counted(w)[0] == 100


def test_a_new_leader_renews_what_clients_hold_while_it_learns_then_seeds_the_rest():
    t, clock = table(rpm=100, learning_s=3.0)
    w = int(clock() // 60)
    g = t.ask(ask("a", 7, w, want=(50, 0), spent=(10, 0), holding=6, held=(30, None)))
    assert g.lease == (30, None)                           # renewed, nothing new
    clock.t += 3.1
    t.seed(w, {"gone": (40, 0)})                            # a slot that never asked this leader
    g = t.ask(ask("a", 8, w, want=(100, 0), spent=(10, 0), holding=7, held=(30, None)))
    assert g.lease[0] == 60                                 # 100 - 40 spent by "gone"


def test_burst_paces_what_a_window_allows():
    clock = Clock(6000.0)                                   # the start of a 60 s window
    t, _ = table(rpm=100, clock=clock)
    t.limits = RateLimits(rpm=100, burst=0.2, window_s=60, mode="strict")
    assert t.ask(ask("a", 1, 100, want=(100, 0))).lease[0] == 20


def test_tokens_and_requests_are_leased_together():
    t, clock = table(rpm=10, tpm=1000)
    w = int(clock() // 60)
    g = t.ask(ask("a", 1, w, want=(5, 2000)))
    assert g.lease == (5, 1000)
    assert fits(g.lease, (4, 900), (1, 100)) and not fits(g.lease, (4, 901), (1, 100))


# -- the holder ---------------------------------------------------------------------------

def test_a_holder_spends_only_its_grant_and_only_until_it_expires():
    clock = Clock()
    h = LeaseHolder("a", clock=clock)
    h.arrive((1, 10))
    a = h.ask(clock(), 5, (0, 0), (0, 0))
    clock.t += 0.01
    assert h.granted(LeaseGrant("a", a.seq, 5, (2, None), 3.0), clock())
    assert h.allows(5, clock(), (1, 0), (1, 10)) and not h.allows(5, clock(), (2, 0), (1, 10))
    assert not h.allows(6, clock(), (0, 0), (1, 10))        # another window
    clock.t = 1000.0 + 3.0                                  # 3 s after the ask was sent
    assert not h.allows(5, clock(), (0, 0), (1, 10))


def test_a_holder_ignores_stale_duplicate_and_foreign_grants():
    clock = Clock()
    h = LeaseHolder("a", clock=clock)
    first = h.ask(clock(), 5, (0, 0), (0, 0))
    second = h.ask(clock(), 5, (0, 0), (0, 0))
    assert h.granted(LeaseGrant("a", second.seq, 5, (9, None), 3.0), clock())
    assert not h.granted(LeaseGrant("a", first.seq, 5, (1, None), 3.0), clock())    # older than the one held
    assert not h.granted(LeaseGrant("a", second.seq, 5, (1, None), 3.0), clock())   # answered already
    assert not h.granted(LeaseGrant("b", 3, 5, (1, None), 3.0), clock())
    assert h.grant is not None and h.grant.lease == (9, None)


def test_a_holder_asks_at_once_when_blocked_on_its_interval_while_active_and_not_at_all_when_idle():
    clock = Clock()
    h = LeaseHolder("a", clock=clock, refresh_s=0.2)
    assert h.due(clock()) is None
    h.blocked = True
    assert h.due(clock()) == clock()
    a = h.ask(clock(), 5, (0, 0), (1, 8))
    assert a.want == (1, 8) and h.due(clock()) == clock() + 0.2   # one in flight: no second at once
    h.blocked = False
    h.granted(LeaseGrant("a", a.seq, 5, (1, None), 3.0), clock())
    assert h.due(clock()) == clock() + 0.2                      # acknowledges the grant on the next ask


def test_a_blocked_holder_asks_a_slow_leader_once_an_interval_not_once_a_poll():
    # Answers slower than an interval (a loaded leader) must not draw more asks: at one per
    # refresh_s / 8 the leader's queue grew, every answer came older than a lease lasts and was
    # refused, and a fresh cluster's first request waited for its deadline.
    clock = Clock()
    h = LeaseHolder("a", clock=clock, refresh_s=0.2)
    h.blocked = True
    asked = 0
    for _ in range(400):                       # 2 s blocked, the leader answering nothing
        due = h.due(clock())
        if due is not None and due <= clock():
            h.ask(clock(), 5, (0, 0), (1, 8))
            asked += 1
        clock.t += 0.005
    assert asked <= 2 / 0.2 + 1, asked

def test_demand_is_what_arrives_not_what_was_admitted():
    clock = Clock()
    h = LeaseHolder("a", clock=clock, refresh_s=0.2, horizon_s=1.0)
    h.ask(clock(), 5, (0, 0), (0, 0))
    for _ in range(20):
        h.arrive((1, 100))
    clock.t += 0.2
    assert h.ask(clock(), 5, (0, 0), (0, 0)).want == (50, 5000)      # 100/s, smoothed over two intervals
    for _ in range(20):
        h.arrive((1, 100))
    clock.t += 0.2
    assert h.ask(clock(), 5, (0, 0), (3, 300)).want == (75 + 3, 7500 + 300)   # and the queue on top


# -- the property -------------------------------------------------------------------------

def test_room_too_small_for_the_request_a_client_waits_on_goes_to_one_it_fits_or_back():
    # A spend budget's costs are not one unit: 3 clients each holding 9 unspent of a cap of 90,
    # each blocked on a request of 10, would wait on their fragments for ever and none be refused.
    t, clock = table(rpm=None, tpm=90)
    w = int(clock() // 60)
    held = {}
    for name in ("a", "b", "c"):
        held[name] = t.ask(ask(name, 1, w, want=(0, 9), spent=(0, 21))).lease     # 21 spent, 9 more each
    for name in ("a", "b", "c"):
        held[name] = t.ask(ask(name, 2, w, want=(0, 9), spent=(0, 21), holding=1, held=held[name])).lease
    assert [lease[1] for lease in held.values()] == [30, 30, 30]                 # 27 left between them
    grants = {}
    for seq, name in ((3, "a"), (3, "b"), (3, "c")):                             # every one blocked on 10
        grants[name] = t.ask(ask(name, seq, w, want=(0, 30), spent=(0, 21), holding=2, held=held[name],
                                 need=(0, 10)))
    for name in ("a", "b", "c"):                                                 # acknowledged
        grants[name] = t.ask(ask(name, 4, w, want=(0, 30), spent=(0, 21), holding=3, held=grants[name].lease,
                                 need=(0, 10)))
    rooms = sorted(g.lease[1] - 21 for g in grants.values())
    assert rooms in ([0, 10, 10], [0, 0, 10]) and sum(rooms) <= 27 and max(rooms) == 10
    assert t.counted(w)[1] <= 90


def test_what_a_restarted_holders_predecessor_held_beyond_its_count_stays_counted_on_top():
    from actors.core.leases import incarnation

    t, clock = table(rpm=None, tpm=100)
    w = int(clock() // 60)
    old = LeaseHolder("slot", clock=clock, first_seq=incarnation(clock()))
    g = t.ask(old.ask(clock(), w, (0, 10), (0, 60)))
    assert g.lease == (None, 70) and old.granted(g, clock())
    t.ask(old.ask(clock(), w, (0, 10), (0, 60)))             # acknowledged: 70 counted
    clock.t += 1.0                                            # it dies having spent 50, 40 of them never counted
    new = LeaseHolder("slot", clock=clock, first_seq=incarnation(clock()))
    g = t.ask(new.ask(clock(), w, (0, 10), (0, 80)))          # its count knows only the 10
    assert new.granted(g, clock())
    assert g.lease == (None, 40)              # 100 less the 60 its predecessor may have spent beyond the 10
    assert t.counted(w)[1] == 100 and g.left == (None, 30)
    late = t.ask(replace(old.ask(clock(), w, (0, 10), (0, 60))))   # the predecessor's ask, arriving late
    assert late.lease == (None, 0) and t.counted(w)[1] == 100
    # Its own grants are superseded as before: a smaller one acknowledged lets the larger one go.
    small = t.ask(new.ask(clock(), w, (0, 10), (0, 0)))
    assert new.granted(small, clock()) and small.lease == (None, 10)
    t.ask(new.ask(clock(), w, (0, 10), (0, 0)))
    assert t.counted(w)[1] == 70


CAP = 30
WINDOW_S = 10.0

step = st.one_of(
    st.tuples(st.just("ask"), st.integers(0, 2), st.sampled_from([0, 5, 15, 40])),  # client asks with a demand
    st.tuples(st.just("deliver"), st.integers(0, 2), st.integers(0, 2)),     # leader answers one ask in flight
    st.tuples(st.just("receive"), st.integers(0, 2), st.integers(0, 2)),     # a grant in flight arrives
    st.tuples(st.just("spend"), st.integers(0, 2), st.integers(1, 5)),
    st.tuples(st.just("refund"), st.integers(0, 2), st.integers(1, 2)),
    st.tuples(st.just("time"), st.integers(0, 2), st.sampled_from([0.05, 0.5, 1.5, 3.5])),
    st.tuples(st.just("lose"), st.integers(0, 2), st.just(0)),               # node gone: its messages too
    st.tuples(st.just("leader"), st.integers(0, 2), st.just(0)),             # the leader restarts
    st.tuples(st.just("restart"), st.integers(0, 2), st.integers(0, 5)),     # a client restarts, its count short
)


@settings(max_examples=200, deadline=None)
@given(st.lists(step, max_size=120))
def test_whatever_happens_the_clients_may_never_spend_more_than_the_cap(steps):
    """For any sequence of demands, refreshes, acknowledgements, expiries, losses and leader
    restarts: in every window, what the clients spent plus what their grants still let them
    spend never exceeds the cap."""
    clock = Clock(10_000.0)
    limits = RateLimits(rpm=CAP, window_s=WINDOW_S, mode="strict")
    leader = LeaseTable(limits, clock=clock, wall=clock, learning_s=0.0)
    holders = [LeaseHolder(f"c{i}", clock=clock, first_seq=1 << INCARNATION_SHIFT) for i in range(3)]
    generation = [1, 1, 1]
    spent: list[dict[int, int]] = [{} for _ in holders]        # spend per window, as the client counts it
    hidden: list[dict[int, int]] = [{} for _ in holders]       # spent, and missing from a restarted client's count
    asks: list[list[LeaseAsk]] = [[] for _ in holders]
    grants: list[list[LeaseGrant]] = [[] for _ in holders]
    lost: set[int] = set()
    restarted_at: float | None = None

    def window() -> int:
        return int(clock() // WINDOW_S)

    for kind, i, arg in steps:
        now = clock()
        if restarted_at is not None and not leader.learning:
            # ready: the cluster's counters give what every slot spent (before any new grant)
            leader.seed(window(), {h.client: (spent[j].get(window(), 0) + hidden[j].get(window(), 0), 0)
                                   for j, h in enumerate(holders)})
            restarted_at = None
        h = holders[i]
        if i in lost and kind != "time" and kind != "leader":
            continue
        if kind == "ask":
            w = window()
            need = {0: 0, 5: 3, 15: 0, 40: 7}[arg]       # blocked on a request of that cost, or not
            asks[i].append(replace(h.ask(now, w, (spent[i].get(w, 0), 0), (0, 0)), want=(arg, 0), need=(need, 0)))
        elif kind == "deliver" and asks[i]:
            grants[i].append(leader.ask(asks[i].pop(min(arg, len(asks[i]) - 1))))
        elif kind == "receive" and grants[i]:
            h.granted(grants[i].pop(min(arg, len(grants[i]) - 1)), now)
        elif kind == "spend":
            w = window()
            if h.allows(w, now, (spent[i].get(w, 0), 0), (arg, 0)):
                spent[i][w] = spent[i].get(w, 0) + arg
        elif kind == "refund":
            w = window()
            spent[i][w] = max(0, spent[i].get(w, 0) - arg)
        elif kind == "time":
            clock.t += arg
        elif kind == "lose":
            lost.add(i)
            asks[i], grants[i] = [], []
            leader.lose(h.client)
        elif kind == "restart":
            generation[i] += 1
            holders[i] = LeaseHolder(h.client, clock=clock, first_seq=generation[i] << INCARNATION_SHIFT)
            grants[i] = []                                # its predecessor's asks may still be delivered
            w = window()
            short = min(arg, spent[i].get(w, 0))          # spent, but never reached the new one's count
            spent[i][w] = spent[i].get(w, 0) - short
            hidden[i][w] = hidden[i].get(w, 0) + short
        elif kind == "leader":
            leader = LeaseTable(limits, clock=clock, wall=clock)     # learns for one lease length
            restarted_at = clock()
            for pending in asks:
                pending.clear()
            for pending in grants:
                pending.clear()
        now = clock()
        for w in {window(), window() - 1}:
            may = 0
            for j, holder in enumerate(holders):
                g = holder.usable(w, now)
                may += max(spent[j].get(w, 0), g.lease[0] if g is not None else 0) + hidden[j].get(w, 0)
            assert may <= CAP, (w, may)
