"""Test and rehearsal hooks of the emulator (not part of pyACL): counters, reset, run mode, failure injection.

    import acl
    acl._sim.counters()["calls"]["acl.mdl.execute"]
"""
from __future__ import annotations

from ._state import STATE


def counters() -> dict:
    """A copy of the counters: calls per function, errors returned (with reasons), live resources, allocations
    after the first execute, bytes copied per memcpy kind, leaks reported at finalize."""
    with STATE.lock:
        return STATE.snapshot()


def reset() -> None:
    """Forget everything (resources, counters) and re-read the ATLAS_KD_SIM_ACL_* environment."""
    with STATE.lock:
        STATE.reset()


def set_run_mode(mode: int) -> None:
    """What acl.rt.get_run_mode reports: 0 ACL_DEVICE (default, the 200 DK) or 1 ACL_HOST."""
    with STATE.lock:
        STATE.run_mode = mode


def inject_failure(call: str, code: int, nth: int | None = None) -> None:
    """Make `call` (e.g. "acl.mdl.execute") return `code` on its nth call (every call if nth is None)."""
    with STATE.lock:
        STATE.failures[call] = (code, nth)


def dump_stats() -> None:
    """Write the counters to $ATLAS_KD_SIM_ACL_STATS now (also done at acl.finalize and at exit)."""
    with STATE.lock:
        STATE.dump_stats()
