"""Deterministic clocks and random sources for the pure core."""


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FixedRandom:
    def __init__(self, *values: float) -> None:
        self.values = list(values) or [0.5]
        self.i = 0

    def __call__(self) -> float:
        value = self.values[self.i % len(self.values)]
        self.i += 1
        return value
