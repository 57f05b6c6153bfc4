"""The node's side of routing on simpleSystemBase: route entries carry the config and the
load the engines push, and the node's routing policy."""

from __future__ import annotations

from actors.core.load import LoadState
from actors.core.routing import RoutingPolicy
from actors.runtime.protocol import Deploy, Deployed, EngineLoad, Route, Routes
from harness import ask, deployment


def test_routes_carry_config_pushed_load_and_the_policy(node):
    asys, registry = node
    policy = RoutingPolicy(strategy="least-busy", fallbacks={"m": ["d2"]})
    deps = [deployment(name="d1", model="m", workers=1, weight=2.5, max_input_tokens=500),
            deployment(name="d2", model="d2", workers=1, upstream_model="gpt-4o-mini-2024-07-18")]
    ask(asys, registry, Deploy("n1", deps, admin_port=1900, routing=policy), Deployed, 15)
    routes = ask(asys, registry, Route("m", token="a"), Routes)
    (entry,) = routes.entries
    assert routes.policy == policy
    assert (entry.deployment, entry.weight, entry.max_input_tokens, entry.max_retries) == ("d1", 2.5, 500, 2)
    # The engine pushed its state when it started: price known, an age given.
    assert entry.load_age_s is not None and entry.circuit == "closed" and entry.queue_depth == 0
    (other,) = ask(asys, registry, Route("d2", token="b"), Routes).entries
    assert other.max_input_tokens == 128000        # from actors/data/context_windows.yaml

    asys.tell(registry, EngineLoad("d1", 0, LoadState(queued=3, in_flight=1, circuit="open", latency_s=0.25,
                                                      ttft_s=0.05, headroom=0.4, price_in=1.0, price_out=2.0)))
    (entry,) = ask(asys, registry, Route("m", token="c"), Routes).entries
    assert (entry.queue_depth, entry.in_flight, entry.circuit) == (3, 1, "open")
    assert (entry.latency_s, entry.ttft_s, entry.headroom, entry.price_in, entry.price_out) == (0.25, 0.05, 0.4, 1.0, 2.0)
    assert entry.load_age_s < 5

    asys.tell(registry, EngineLoad("nobody", 0, LoadState(queued=99)))   # not an engine of this node: ignored
    assert all(e.queue_depth != 99 for e in ask(asys, registry, Route("nobody", token="d"), Routes).entries)
