"""Wall-clock time that never steps back within a process.

NTP, a VM resumed from a snapshot or an operator's `date -s` can step the wall clock backwards.
Whatever brain stamps with the time would then go back with it: a JWT minted after the step
carries an `iat`/`exp` in the past (an API whose clock did not step sees it already expired),
a session gets an expiry earlier than one made a minute before, and an event stored after the
step sorts before the events stored just ahead of it. `steady_time_ns` is the wall clock as long
as it moves forward; when it steps back, time goes on from where it was at the pace of the
monotonic clock (which no step moves) until the wall clock catches up. A step forward is taken
as it comes (it cannot be told from a correction). A backward correction is thus honoured at
the next start of the process; commit order itself never depends on the clock (event ids).
"""

from __future__ import annotations

import threading
import time

__all__ = ["steady_time", "steady_time_ns"]

_lock = threading.Lock()
# (wall ns, monotonic ns) when the wall clock was last seen moving forward.
_anchor = (time.time_ns(), time.monotonic_ns())


def steady_time_ns() -> int:
    """Nanoseconds since the epoch, like time.time_ns(), never less than an earlier answer."""
    global _anchor
    wall, mono = time.time_ns(), time.monotonic_ns()
    with _lock:
        carried = _anchor[0] + (mono - _anchor[1])
        if wall >= carried:
            _anchor = (wall, mono)
            return wall
        return carried


def steady_time() -> float:
    """Seconds since the epoch, like time.time(), never less than an earlier answer."""
    return steady_time_ns() / 1e9
