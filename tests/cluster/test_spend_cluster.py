"""Three nodes sharing a team budget at 10x the load it allows: approximate and strict, and a SIGKILL."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from actors import errors as E
from actors.testing.load import open_loop
from actors.types import Completed, Failed

from conftest import deployment, free_port, fresh_period, wait_for

ROOT = Path(__file__).resolve().parents[2]
FAST_CLUSTER = {"heartbeat_s": 0.5, "failure_timeout_s": 3.0, "reregistration_s": 2}
# mock-gpt ($0.15 in, $0.60 out per million): "hi" with max_tokens 1 costs 4 in + 1 out = $0.0000012.
COST = 0.0000012
CALLS = 40
BUDGET = CALLS * COST


def ledger_rows(path):
    if not Path(path).exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT cost_usd, charged_usd, outcome, slot FROM spend WHERE team = 'search'").fetchall()
    finally:
        db.close()


def flood(client, model, rate_per_s, seconds, results, stop=None, deadline_s=1.0):
    """An open loop with the team's metadata on every request."""
    open_loop(client, model, rate_per_s, seconds, results, deadline_s, stop=stop,
              metadata=lambda n: {"http_key": f"bot-{n % 3}", "http_team": "search"})


@pytest.fixture
def spend_cluster(gateway, mock, tmp_path):
    def make(mode, n=3):
        dep = deployment(mock.url, "d1", workers=2, queue_capacity=1024)
        budgets = [{"team": "search", "usd": BUDGET, "period": fresh_period(), "mode": mode}]
        nodes, leader_port = [], free_port()
        for i in range(n):
            ledger = str(tmp_path / f"n{i}.db")
            node, client = gateway([dep], name=f"n{i}", port=leader_port if i == 0 else None, cluster=FAST_CLUSTER,
                                   leader=None if i == 0 else f"127.0.0.1:{leader_port}", budgets=budgets,
                                   node={"ledger": ledger})
            nodes.append((node, client, ledger))
        wait_for(lambda: len(nodes[0][1].cluster_status(members_only=True).members) == n, timeout_s=20,
                 message=f"{n} members")
        return nodes, dep, budgets

    return make


def run_flood(nodes, seconds=4.0, kill_after_s=None, by_node=None):
    """Every node's terminals, in one list (and each node's in ``by_node``, when given)."""
    by_node = [[] for _ in nodes] if by_node is None else by_node
    rate = 10 * CALLS / seconds / len(nodes)  # ten times what the budget allows, spread over the nodes
    stop = threading.Event()
    threads = [threading.Thread(target=flood, args=(client, "d1", rate, seconds, by_node[i],
                                                     stop if i == len(nodes) - 1 else None))
               for i, (_, client, _) in enumerate(nodes)]
    for t in threads:
        t.start()
    if kill_after_s is not None:
        time.sleep(kill_after_s)
        stop.set()
        nodes[-1][0].kill()  # SIGKILL to every process of the last node, mid-load
    for t in threads:
        t.join(60)
    return [r for results in by_node for r in results]


def spent(rows):
    return sum(c for c, _, _, _ in rows if c is not None)


def test_approximate_team_budget_stays_within_5_percent_and_a_killed_node_s_flushed_spend_counts(
        spend_cluster, gateway, mock):
    nodes, dep, budgets = spend_cluster("approximate")
    assert nodes[1][1].complete("d1", [{"role": "user", "content": "warm"}], max_tokens=1).text  # no team: free
    results = run_flood(nodes, kill_after_s=2.0)
    refused = [r for r in results if isinstance(r, Failed) and isinstance(r.error, E.BudgetExceeded)]
    assert refused and all(not r.error.retryable or "share" in r.error.message for r in refused)
    victim, _, victim_ledger = nodes[-1]
    for _, client, _ in nodes[:-1]:
        client.status()  # the survivors answer
    for node, _, _ in nodes[:-1]:
        node.drain(5)  # flush their ledgers
    wait_for(lambda: all(client.status().spend["ledger"]["queued"] == 0 for _, client, _ in nodes[:-1]),
             message="the ledgers to be written")
    victim_rows = ledger_rows(victim_ledger)
    total = sum(spent(ledger_rows(ledger)) for _, _, ledger in nodes)
    assert total <= BUDGET * 1.05, (total, BUDGET)
    assert total >= BUDGET * 0.8, (total, BUDGET)  # and the budget was really used
    assert mock.stats()["total"] - 1 <= CALLS * 1.05
    # The killed node had flushed part of its spend; restarted on its port (alone: nobody else's
    # memory helps), it seeds its counters from its ledger and counts that spend again.
    assert victim_rows, "the killed node had flushed nothing in 2 s"
    charged = sum(ch for _, ch, _, _ in victim_rows)
    _, again = gateway([dep], name=victim.name, port=victim.admin_port, cluster=FAST_CLUSTER, budgets=budgets,
                       node={"ledger": victim_ledger})

    def seen():
        lines = {b["budget"]: b["spent_usd"] for b in again.status().spend["budgets"]}
        return lines.get(f"team=search/{budgets[0]['period']}", 0) >= charged * 0.999
    wait_for(seen, message="the restarted node to count its flushed spend")


def test_strict_team_budget_is_never_over_and_every_node_is_served(spend_cluster, mock, tmp_path):
    """Leased (core/leases.py): each engine admits locally under its lease of the period's
    nano-USD, so what reaches the provider, counted where it arrives, never costs more than the cap."""
    nodes, _, _ = spend_cluster("strict")
    # A new strict limiter first learns for a lease length (SETTLE_S) and seeds from the cluster's counters.
    assert nodes[1][1].complete("d1", [{"role": "user", "content": "hi"}], max_tokens=1, timeout_s=20,
                                metadata={"http_team": "search"}).text
    by_node: list[list] = [[] for _ in nodes]
    results = run_flood(nodes, by_node=by_node)
    refused = [r for r in results if isinstance(r, Failed) and isinstance(r.error, E.BudgetExceeded)]
    assert refused and all(not r.error.retryable and r.error.limit.startswith("team=search/") for r in refused)
    assert all("resets at" in r.error.message for r in refused)
    served = [sum(isinstance(r, Completed) for r in results) for results in by_node]
    assert all(n > 0 for n in served), served                     # every node got a share
    # Every call that reached the provider (the warm-up's included) cost exactly COST.
    assert mock.stats()["total"] <= CALLS, (mock.stats()["total"], CALLS)
    for node, _, _ in nodes:
        node.drain(5)
    wait_for(lambda: all(client.status().spend["ledger"]["queued"] == 0 for _, client, _ in nodes),
             message="the ledgers to be written")
    total = sum(spent(ledger_rows(ledger)) for _, _, ledger in nodes)
    assert total <= BUDGET + 1e-12, (total, BUDGET)
    assert total >= BUDGET * 0.8, (total, BUDGET)
    assert total == pytest.approx(mock.stats()["total"] * COST, abs=1e-9)
    # launch.py spend --cluster asks every node and sums what their ledgers say.
    config = tmp_path / "ask.yaml"
    config.write_text("deployments:\n  - {name: x, model: x, provider: openai, endpoint: 'http://127.0.0.1:9/v1'}\n"
                      f"node: {{admin_port: {nodes[0][0].admin_port}}}\n")
    out = subprocess.run([sys.executable, str(ROOT / "launch.py"), "spend", "--cluster", "--config", str(config),
                          "--since", "1h", "--by", "team"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "3 node(s)" in out.stdout
    search = next(line for line in out.stdout.splitlines() if line.startswith("search"))
    assert int(search.split()[1]) == sum(len(ledger_rows(ledger)) for _, _, ledger in nodes)
    assert float(search.split()[3]) == pytest.approx(total, abs=1e-6)


def test_strict_spend_with_its_leader_killed_fails_closed_then_leases_from_a_restarted_one(spend_cluster, gateway,
                                                                                           mock):
    nodes, dep, budgets = spend_cluster("strict", n=2)
    member = nodes[1][1]
    team = {"http_team": "search"}
    assert member.complete("d1", [{"role": "user", "content": "hi"}], max_tokens=1, timeout_s=20, metadata=team).text
    leader, _, leader_ledger = nodes[0]
    port = leader.admin_port
    leader.kill()

    def refused():
        try:
            member.complete("d1", [{"role": "user", "content": "hi"}], max_tokens=1, timeout_s=5, metadata=team)
        except E.LeaderUnavailable as error:
            return "strict spend budget needs the convention leader" in error.message
        return False
    # What its lease still held may be spent first; then it fails closed, with a typed error.
    wait_for(refused, timeout_s=20, interval_s=0.2, message="strict spend admission to fail closed")
    _, again = gateway([dep], name="n0", port=port, cluster=FAST_CLUSTER, budgets=budgets,
                       node={"ledger": leader_ledger})
    wait_for(lambda: len(again.cluster_status(members_only=True).members) == 2, timeout_s=20,
             message="the member to rejoin")

    def admitted():
        try:
            return member.complete("d1", [{"role": "user", "content": "hi"}], max_tokens=1, timeout_s=10,
                                   metadata=team).text
        except E.LeaderUnavailable:
            return False
    # The new leader learns for a lease length, seeds from the cluster's counters, then leases.
    wait_for(admitted, timeout_s=30, interval_s=0.2, message="strict spend admission to work again")
    assert mock.stats()["total"] <= CALLS
