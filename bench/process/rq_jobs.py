"""RQ's side: the same bodies, run by two ``rq worker`` processes (a fork per job)."""

from __future__ import annotations

from _body import burn, hit


def noop(n: int, sent: float = 0.0) -> None:
    hit(n, sent)


def cpu(n: int, seconds: float) -> None:
    burn(seconds)
    hit(n, 0.0)
