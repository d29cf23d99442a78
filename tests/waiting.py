"""Waiting on a condition, the one way tests wait (never a fixed sleep: two busy cores)."""

import time


def wait_for(condition, timeout, what, every=0.05, explain=None):
    """Poll ``condition`` until truthy; its value, or fail saying what did not happen (and
    ``explain()``, e.g. the end of a log, read at that moment)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g} s" + (f"; {explain()}" if explain else ""))
        time.sleep(every)
