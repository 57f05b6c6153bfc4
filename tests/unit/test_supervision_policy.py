"""The restart policy on a fake clock."""

from actors.core.supervision import Supervisor


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_repeated_deaths_back_off_and_a_stable_child_starts_over():
    clock = Clock()
    sup = Supervisor(base_s=0.2, max_s=1.0, stable_s=10.0, clock=clock, wall=lambda: 5.0)
    delays = []
    for _ in range(5):
        delays.append(sup.exited("e"))
        assert sup.restarting("e")
        clock.t += delays[-1]
        sup.restarted("e")
        clock.t += 0.5  # dies again soon after each start
    assert delays == [0.2, 0.4, 0.8, 1.0, 1.0]
    clock.t += 10.0  # up for longer than stable_s
    assert sup.exited("e") == 0.2
    line = sup.lines()[0]
    assert line["child"] == "e" and line["restarts"] == 5 and line["state"] == "restarting"
    assert line["last_exit_unix"] == 5.0 and line["next_restart_s"] == 0.2
    sup.restarted("e")
    assert sup.lines()[0]["state"] == "running" and not sup.restarting("e")
    assert not sup.restarting("other") and len(sup.lines()) == 1


def test_a_child_up_for_exactly_stable_s_starts_over():
    clock = Clock()
    sup = Supervisor(base_s=0.2, max_s=1.0, stable_s=10.0, clock=clock, wall=lambda: 5.0)
    clock.t += sup.exited("e")
    sup.restarted("e")
    clock.t += 10.0
    assert sup.exited("e") == 0.2


def test_status_lists_children_by_name_whatever_their_key_type_and_the_defaults_are_documented():
    clock = Clock()
    sup = Supervisor(clock=clock, wall=lambda: 5.0)
    assert (sup.base_s, sup.max_s, sup.stable_s) == (0.2, 30.0, 60.0)
    for key in ("w2", 10, "w1"):
        sup.exited(key)
    assert [line["child"] for line in sup.lines()] == [10, "w1", "w2"]
    assert sup.lines()[0]["next_restart_s"] == 0.2
