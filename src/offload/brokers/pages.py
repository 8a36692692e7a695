"""Pages of :meth:`~offload.brokers.base.TaskInspection.list_tasks`, and where the next one
starts, the same for every broker.

A listing returns tasks in any order (as Cloud Tasks' ListTasks does). Over a full
iteration while the queue does not change, each task comes back once; a task added or
removed meanwhile may or may not; a page costs O(limit), not O(tasks in the queue).
SQLite and PostgreSQL page in id order: the next page starts after the last id. Redis scans
its task hash with HSCAN, keeping no index for the listing on the hot path (enqueue, ack):
its position is a cursor, not an id, so its pages carry their own opaque token
(:class:`TaskPage`), and, as HSCAN allows, a task may come back twice when the queue's hash
was resized between two pages (the queue grew or shrank several-fold meanwhile).
:func:`next_page_after` reads the token from either kind of page, so callers (the Cloud
Tasks surface, the conformance checks) page every broker alike."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .base import TaskRecord

__all__ = ["TaskPage", "next_page_after"]


class TaskPage(list[TaskRecord]):
    """A page of ``list_tasks`` that says where the next one starts: ``after``, an opaque
    token to pass back as ``after``, None when this page was the last. Such a page may be
    short, even empty, with more to come: only ``after`` says the listing is over."""

    __slots__ = ("after",)

    def __init__(self, records: Iterable[TaskRecord] = (), after: str | None = None) -> None:
        super().__init__(records)
        self.after = after


def next_page_after(page: Sequence[TaskRecord], limit: int) -> str | None:
    """The ``after`` that asks ``list_tasks`` for the page following ``page`` (which was
    asked with ``limit``), or None when ``page`` was the last: a :class:`TaskPage` carries
    its own token; a plain list comes from a broker paging in id order, whose token is the
    last id while pages come back full (so a full last page is followed by an empty one)."""
    if isinstance(page, TaskPage):
        return page.after
    return page[-1].id if page and len(page) >= limit else None
