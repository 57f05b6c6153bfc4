"""Rate windows for tests that cannot roll over while the test runs."""

from __future__ import annotations

import math
import time


def fresh_window_s(min_left_s: float = 120.0) -> float:
    """A rate-limit window length whose current window began a second ago.

    Windows are aligned on ``floor(unix_time / window_s)``: a test that counts a window's
    requests with a fixed length fails whenever a boundary falls inside it (and every round
    length rolls over at the top of an hour), so the length is derived from the clock.
    """
    started = time.time() - 1.0
    window_s = started / math.floor(started / 900.0)
    assert window_s - time.time() % window_s > min_left_s
    return window_s
