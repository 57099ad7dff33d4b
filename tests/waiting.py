"""Waiting for the system under test, without timed assertions on speed."""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(condition: Callable[[], bool], seconds: float = 5, interval: float = 0.1) -> bool:
    """True as soon as `condition()` is; False if it still is not after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
