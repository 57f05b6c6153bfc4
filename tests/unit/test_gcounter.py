import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.core.gcounter import GCounter

nodes = st.sampled_from(["a", "b", "c", "d"])
states = st.dictionaries(nodes, st.integers(min_value=0, max_value=10**12), max_size=4)


def merged(*counters):
    out = GCounter()
    for c in counters:
        out.merge(c)
    return out


@settings(max_examples=300)
@given(states, states, states)
def test_merge_is_commutative_associative_idempotent(x, y, z):
    a, b, c = GCounter(x), GCounter(y), GCounter(z)
    assert merged(a, b) == merged(b, a)
    assert merged(merged(a, b), c) == merged(a, merged(b, c))
    assert merged(a, a) == a
    ab = merged(a, b)
    assert merged(ab, b) == ab  # re-delivery changes nothing


@settings(max_examples=200)
@given(st.lists(st.tuples(nodes, st.integers(0, 50)), max_size=40), st.randoms(use_true_random=False))
def test_deltas_in_any_order_with_duplicates_converge(increments, rnd):
    """Each node increments its own replica and ships deltas; receivers see them shuffled and duplicated."""
    replicas = {n: GCounter() for n in "abcd"}
    deltas = []
    for node, amount in increments:
        replicas[node].increment(node, amount)
        deltas.append(replicas[node].take_delta())
    expected = sum(amount for _, amount in increments)
    shipped = deltas + deltas[: len(deltas) // 2]
    rnd.shuffle(shipped)
    receiver = GCounter()
    for delta in shipped:
        receiver.merge_state(delta)
    assert receiver.value == expected
    assert receiver == merged(*replicas.values())


@settings(max_examples=200)
@given(states, states)
def test_merge_is_monotone(x, y):
    a = GCounter(x)
    before = a.value
    a.merge(GCounter(y))
    assert a.value >= before
    assert all(a.get(n) >= c for n, c in y.items())


def test_increment_value_and_delta_tracking():
    c = GCounter()
    c.increment("n1", 3)
    c.increment("n1", 2)
    c.increment("n2")
    assert c.value == 6 and c.get("n1") == 5
    assert c.take_delta() == {"n1": 5, "n2": 1}
    assert c.take_delta() == {}
    c.merge_state({"n3": 7})  # merged-in state is not re-broadcast as our delta
    assert c.take_delta() == {}
    c.increment("n1", 0)
    assert c.take_delta() == {}


def test_rejects_negative_values():
    with pytest.raises(ValueError):
        GCounter().increment("a", -1)
    with pytest.raises(ValueError):
        GCounter().merge_state({"a": -5})


def test_pickles():
    c = GCounter({"a": 1, "b": 2})
    assert pickle.loads(pickle.dumps(c)) == c


def test_a_counter_reads_zero_for_a_slot_it_never_heard_of_and_equals_only_counters():
    counter = GCounter()
    assert counter.get("nobody") == 0 and counter != object() and counter == GCounter()
    with pytest.raises(ValueError, match="only grows"):
        counter.increment("a", -1)


def test_a_merge_says_whether_anything_grew_and_refuses_a_negative_count():
    counter = GCounter()
    assert counter.merge_state({"a": 2, "b": 1}) is True
    assert counter.merge_state({"a": 1, "b": 1}) is False          # nothing new
    assert counter.merge_state({}) is False
    with pytest.raises(ValueError) as info:
        counter.merge_state({"c": -1})
    assert str(info.value) == "negative count for 'c'"


def test_a_negative_increment_is_refused_saying_why():
    with pytest.raises(ValueError) as info:
        GCounter().increment("a", -1)
    assert str(info.value) == "a GCounter only grows; amount must be >= 0"
