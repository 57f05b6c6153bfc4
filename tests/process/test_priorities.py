"""Priorities that hold under overload (docs/reliability.md, "Priorities under overload"): a flood of
low traffic fills a deployment's queue, then high traffic arrives and takes the low requests' places.
"""

from __future__ import annotations

import threading
import time

from actors import errors as E
from actors.client import GatewayClient

from conftest import deployment, wait_for


def test_high_requests_displace_queued_low_ones_and_are_all_served_first(gateway, mock):
    # 2 workers, a queue of 8: 20 low fill it (the two on the workers are held upstream), 20 high arrive.
    node, client = gateway([deployment(mock.url + "/mock:delay_ms=50", "busy", workers=2, queue_capacity=8,
                                       retry={"max_retries": 0})])
    lock = threading.Lock()
    served: list[str] = []                     # in the order the calls completed
    ended: dict[str, list[object]] = {}        # every outcome of each call (each must end exactly once)

    def call(name: str, priority: str, resubmit: bool = False) -> None:
        with GatewayClient(node.admin_port, timeout_s=60) as own:
            for attempt in range(2 if resubmit else 1):
                try:
                    own.complete("busy", [{"role": "user", "content": name}], max_tokens=2, priority=priority)
                    outcome: object = "completed"
                except E.InferenceError as exc:
                    outcome = exc
                with lock:
                    ended.setdefault(f"{name}#{attempt}", []).append(outcome)
                    if outcome == "completed":
                        served.append(name)
                if not (isinstance(outcome, E.QueueFull) and "took this request's place" in outcome.message):
                    return
                time.sleep(outcome.retry_after_s)   # a displaced call comes back once, as an SDK would

    lows = [threading.Thread(target=call, args=(f"low {i} [[mock hold=gate]]", "low", True)) for i in range(20)]
    for t in lows:
        t.start()
    # Two on the workers, eight queued, ten refused at once.
    wait_for(lambda: sum(1 for k, v in ended.items() if isinstance(v[0], E.QueueFull)) == 10, timeout_s=30,
             message="ten lows refused by a full queue")
    wait_for(lambda: client.status().engines[0].queued == 8, message="the queue full of lows")
    highs = [threading.Thread(target=call, args=(f"high {i}", "high")) for i in range(20)]
    for t in highs:
        t.start()
    wait_for(lambda: sum(1 for k, v in ended.items() if k.startswith("high") and isinstance(v[0], E.QueueFull)) == 12,
             timeout_s=30, message="twelve highs refused by a queue full of highs")
    mock.release("gate")
    for t in lows + highs:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in lows + highs)
    assert all(len(outcomes) == 1 for outcomes in ended.values())          # each call ended exactly once
    first = {name.split("#")[0]: outcomes[0] for name, outcomes in ended.items() if name.endswith("#0")}
    displaced = sorted(n for n, o in first.items() if isinstance(o, E.QueueFull) and "took this" in o.message)
    high_served = [n for n in served if n.startswith("high")]
    # Eight highs took the eight queued lows' places; the other twelve found a queue full of highs.
    assert len(displaced) == 8 and all(n.startswith("low") for n in displaced)
    assert len(high_served) == 8 and sum(1 for n, o in first.items() if n.startswith("high")
                                         and isinstance(o, E.QueueFull)) == 12
    assert all(o.retryable and o.retry_after_s for o in first.values() if isinstance(o, E.QueueFull))
    # Every high was served before any displaced low (the two lows on the workers when they came finish first).
    order = [n.split()[0] for n in served]
    assert order[:2] == ["low", "low"] and order[2:10] == ["high"] * 8, order
    assert set(served[10:]) <= set(displaced)   # whatever else was served: displaced lows that came back
    stats = client.status().engines[0].stats
    assert stats["outcomes"]["failed"].get("QueueFull", 0) >= 8   # the displaced ones: accepted, then ended
