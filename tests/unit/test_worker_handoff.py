"""A hand-off reaches the worker inside its wait; the worker must refuse one it has no slot
for, or that arrives while it stops, so the broker keeps it for a claim (or gives it back)
instead of the worker running more than its concurrency or starting work it will abandon."""

from __future__ import annotations

from offload import App, Worker
from offload.brokers.base import Claimed


def _claimed(i: int) -> Claimed:
    return Claimed(f"t{i}", "default", None, b"", 1, 0.0, 0.0, 0.0, f"tok{i}", 60.0)


def test_a_hand_off_beyond_free_slots_or_while_stopping_is_refused(tmp_path):
    app = App("handoff", broker=f"sqlite:///{tmp_path / 'h.db'}")
    w = Worker(app, concurrency=2)
    w._running["busy"] = object()  # one of two slots taken
    assert w._handed([_claimed(1), _claimed(2)]) is False  # two would exceed it
    assert w.stats.claimed == 0
    w._running.clear()
    w.stop()
    assert w._handed([_claimed(3)]) is False
    assert w.stats.claimed == 0 and not w._running
