import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.core.priority_queue import Priority, RequestQueue


def drain(q):
    out = []
    while (entry := q.pop()) is not None:
        out.append(entry[0])
    return out


def test_priority_first_then_fifo():
    q = RequestQueue(10)
    q.push("n1", "a", Priority.NORMAL)
    q.push("n2", "b", Priority.NORMAL)
    q.push("h1", "c", Priority.HIGH)
    q.push("bg", "d", Priority.BACKGROUND)
    q.push("c1", "e", Priority.CRITICAL)
    q.push("l1", "f", Priority.LOW)
    assert drain(q) == ["c1", "h1", "n1", "n2", "l1", "bg"]


def test_full_queue_rejects_without_queueing():
    q = RequestQueue(2)
    assert q.push(1, "a") and q.push(2, "b")
    assert not q.push(3, "c", Priority.CRITICAL)
    assert len(q) == 2 and 3 not in q
    assert not RequestQueue(0).push(1, "a")


def test_push_front_for_retries_bypasses_capacity():
    q = RequestQueue(1)
    q.push("a", 1)
    q.push_front("retry", 2)
    assert drain(q) == ["retry", "a"]


def test_remove_by_key_and_reinsert():
    q = RequestQueue(10)
    for k in "abc":
        q.push(k, k.upper())
    assert q.remove("b") == "B"
    assert q.remove("b") is None
    q.push("b", "B2", Priority.NORMAL)
    assert [k for k, _ in q.items()] == ["a", "c", "b"]
    assert drain(q) == ["a", "c", "b"]


def test_remove_where_for_deadlines():
    q = RequestQueue(10)
    for i in range(6):
        q.push(i, {"deadline": i}, Priority(i % 5))
    expired = q.remove_where(lambda item: item["deadline"] < 3)
    assert sorted(k for k, _ in expired) == [0, 1, 2]
    assert sorted(drain(q)) == [3, 4, 5]


def test_duplicate_keys_refused():
    q = RequestQueue(3)
    q.push("a", 1)
    with pytest.raises(KeyError):
        q.push("a", 2)


def test_depth_and_parse():
    q = RequestQueue(5)
    q.push(1, "x", Priority.HIGH)
    q.push(2, "y", Priority.HIGH)
    assert q.depth_by_priority()["high"] == 2
    assert Priority.parse("critical") is Priority.CRITICAL and Priority.parse(0) is Priority.BACKGROUND
    for bad in ("urgent", 9, True):
        with pytest.raises(ValueError):
            Priority.parse(bad)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.sampled_from(["push", "pop", "remove"]), st.integers(0, 4), st.integers(0, 30)),
                max_size=80))
def test_matches_a_reference_model(ops):
    q = RequestQueue(12)
    model = []  # list of (priority, seq, key)
    seq = 0
    for op, prio, key in ops:
        if op == "push":
            accepted = q.push(key, key, Priority(prio)) if key not in q else None
            if accepted is None:
                continue
            assert accepted == (len(model) < 12)
            if accepted:
                model.append((prio, seq, key))
                seq += 1
        elif op == "pop":
            got = q.pop()
            if not model:
                assert got is None
                continue
            best = min(model, key=lambda e: (-e[0], e[1]))
            model.remove(best)
            assert got == (best[2], best[2])
        else:
            removed = q.remove(key)
            match = [e for e in model if e[2] == key]
            assert (removed is not None) == bool(match)
            for e in match:
                model.remove(e)
        assert len(q) == len(model)
