"""Cross-node routing, the pure parts: the plan's ranking of other nodes' deployments, the
``routing.cross_node`` setting, and the relay's book (docs/routing.md, "Across a cluster")."""

from __future__ import annotations

import random

import pytest

from actors import errors as E
from actors.core import routing as R
from actors.core.relay import RelayBook
from actors.errors import ConfigError
from actors.settings.loader import parse_config


def cand(name, node="a", remote=False, **kw):
    return R.Candidate(name, node=node, remote=remote, **kw)


def plan(cands, cross_node="prefer_local", strategy="least-busy", now=10.0):
    return R.plan_group("m", cands, strategy=strategy, rand=random.Random(7).random, streamed=False,
                        input_tokens=10, output_tokens=10, now_unix=now, cross_node=cross_node)


def labels(ordered):
    return [c.label for c in ordered]


def test_prefer_local_tries_every_usable_local_deployment_before_any_other_nodes_whatever_their_load():
    cands = [cand("d1", "b", True), cand("busy", in_flight=50), cand("d1", "c", True, in_flight=2),
             cand("idle")]
    # least-busy orders each part: this node's by load, then the others' by load.
    assert labels(plan(cands).ordered) == ["idle", "busy", "d1@b", "d1@c"]


def test_another_node_serves_when_no_local_deployment_can_take_the_call():
    circuit = E.CircuitOpen("circuit open for openai a", provider="openai", retryable=True)
    cands = [cand("d1", refusal=circuit, refusal_until_unix=50.0), cand("d1", "b", True)]
    got = plan(cands)
    assert labels(got.ordered) == ["d1@b"] and got.refusal is None
    # The local one is skipped (listed by the client when the call leaves the node), by node.
    assert [(c.label, type(e)) for c, e in got.skipped] == [("d1", E.CircuitOpen)]
    # Not deployed here at all: only other nodes' candidates.
    assert labels(plan([cand("x", "b", True), cand("x", "c", True, in_flight=1)]).ordered) == ["x@b", "x@c"]


def test_local_only_never_names_another_node_and_any_ranks_all_alike():
    cands = [cand("busy", in_flight=9), cand("d1", "b", True)]
    assert labels(plan(cands, "local_only").ordered) == ["busy"]
    assert labels(plan(cands, "any").ordered) == ["d1@b", "busy"]       # the strategy says so
    only_remote = plan([cand("d1", "b", True)], "local_only")
    assert only_remote.ordered == [] and only_remote.refusal is None   # the caller's NotFound: nothing serves here


def test_a_group_refused_everywhere_names_each_node_and_fails_with_the_engines_own_error():
    budget = E.BudgetExceeded("no budget", retryable=True)
    circuit = E.CircuitOpen("open", provider="openai", retryable=True)
    got = plan([cand("d1", refusal=budget, refusal_until_unix=60.0),
                cand("d1", "b", True, refusal=circuit, refusal_until_unix=20.0)])
    assert got.ordered == [] and [name for name, _ in got.refused] == ["d1", "d1@b"]
    assert isinstance(got.refusal, E.CircuitOpen)          # the one that lifts first
    assert "d1@b (circuit open)" in str(got.refusal)


def config(routing):
    deps = [{"name": "east", "model": "gpt-4o", "provider": "openai", "endpoint": "http://127.0.0.1:9/v1"}]
    return parse_config({"deployments": deps, "routing": routing}, "deploy.yaml", credentials=False)


def test_cross_node_is_read_per_section_and_per_model():
    cfg = config({"cross_node": "any", "models": {"gpt-4o": {"cross_node": "local_only"}}})
    assert cfg.routing.cross_node_for("gpt-4o") == "local_only" and cfg.routing.cross_node_for("other") == "any"
    assert R.RoutingPolicy().cross_node_for("m") == "prefer_local"    # the default (docs/routing.md)
    cfg = config({"cross_node": "prefer_local", "models": {"gpt-4o": {"strategy": "cost"}}})
    assert cfg.routing.cross_node_for("gpt-4o") == "prefer_local"


@pytest.mark.parametrize("routing, field", [
    ({"cross_node": "remote_first"}, "routing.cross_node"),
    ({"cross_node": True}, "routing.cross_node"),
    ({"models": {"gpt-4o": {"cross_node": "everywhere"}}}, "routing.models.gpt-4o.cross_node"),
])
def test_a_bad_cross_node_is_a_config_error_naming_file_field_and_value(routing, field):
    with pytest.raises(ConfigError) as info:
        config(routing)
    assert info.value.path == f"deploy.yaml: {field}", (info.value.path, info.value.message)
    assert "'prefer_local', 'local_only', 'any'" in info.value.message and "got " in info.value.message


# -- the relay's book ---------------------------------------------------------------------------

def test_the_relay_forwards_only_to_engines_of_other_nodes_it_was_told_of():
    book = RelayBook()
    assert book.open("r1", "caller", "engine-b", 100.0, 0.0) is not None     # told of nothing yet
    book.targets = ["engine-b"]
    assert book.open("r1", "caller", "engine-x", 100.0, 0.0) is not None     # not an open proxy
    assert book.open("r1", "caller", None, 100.0, 0.0) is not None
    assert book.open("r1", "caller", "engine-b", 100.0, 0.0) is None and book.calls["r1"].engine == "engine-b"


def test_answers_go_to_their_caller_once_terminal_and_stragglers_pass_until_it_is_forgotten():
    book = RelayBook(linger_s=5.0, grace_s=30.0)
    book.targets = ["e"]
    book.open("r1", "caller", "e", 100.0, 0.0)
    assert book.answer("r1", False, 1.0) == "caller"          # a chunk
    assert book.answer("r1", True, 2.0) == "caller"           # the terminal
    assert book.answer("r1", True, 2.5) is None               # never a second terminal
    assert book.answer("r1", False, 3.0) == "caller"          # a chunk the terminal overtook
    assert book.cancel("r1") is None                          # over: nothing to cancel
    assert book.sweep(6.9) == 0 and book.sweep(7.0) == 1      # forgotten linger_s after its terminal
    assert book.answer("r1", False, 8.0) is None and book.answer("nobody", True, 8.0) is None


def test_a_request_id_stays_its_callers_a_resend_is_forwarded_and_a_silent_call_is_forgotten_after_its_deadline():
    book = RelayBook(linger_s=5.0, grace_s=30.0)
    book.targets = ["e"]
    assert book.open("r1", "alice", "e", 100.0, 0.0) is None
    assert book.open("r1", "mallory", "e", 100.0, 1.0) is not None   # someone else's call
    assert book.cancel("r1") == "e" and book.cancel("nobody") is None
    assert book.open("r1", "alice", "e", 100.0, 1.0) is None          # the caller's own resend
    assert book.sweep(129.9) == 0 and book.sweep(130.0) == 1          # no terminal: deadline + grace
