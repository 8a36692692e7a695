"""The broker conformance suite: the same checks for every broker, yours included.

Each rule of DESIGN.md's "Queue semantics" (and of the broker protocol's docstrings) is one
``async def check_<rule>(factory)``. ``factory`` is a callable taking no arguments that
returns a new, unopened broker, or an awaitable of one; every broker it returns must share
one store, because checks reopen it and run several instances at once. Each check opens
what it needs, exercises it with plain ``assert`` statements whose messages say what was
expected, and closes it. Checks use queue and task function names of their own, so they do
not need an empty store, but a fresh store per check keeps a failure from spilling over.

Timing checks use the broker's clock, short waits and generous tolerances; the whole suite
takes well under a minute per broker. A check whose exact counts only hold while a lease or
an eta lasts runs again with longer times when the machine was too slow, and raises
:class:`CouldNotCheck` (never a silent pass) when even the longest were too short.

Check a third-party broker with::

    from offload.testing import check_broker

    await check_broker(lambda: MyBroker("mybroker://localhost/test"))

or run one rule with ``run_check(check_token_bucket, factory)`` from synchronous code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable

from .conformance_failures import (
    check_claim_expired_flag,
    check_dead_letters_limit,
    check_enqueue_idempotent_by_id,
    check_extend_returns_stored_lease,
    check_late_ack_removes_dead_letter,
    check_late_ack_wins,
    check_release_delay,
    check_stats_policy,
    check_unstorable_error_text,
)
from .conformance_inspect import (
    check_drop_queue,
    check_get_task_states,
    check_list_tasks_pages,
    check_run_task,
    check_stats_oldest_ready_at,
)
from .conformance_limits import (
    check_backlog_batches,
    check_concurrent_claimers_no_duplicates,
    check_fair_across_queues,
    check_max_concurrent,
    check_token_bucket,
    check_token_bucket_idle_cap,
)
from .conformance_queues import (
    check_declare_idempotent_updates,
    check_delete_any_state,
    check_named_batch_reports_duplicates,
    check_named_dedup_while_exists,
    check_named_dedup_window,
    check_names_per_queue,
    check_pause_resume,
    check_purge,
    check_stats_exact,
    check_undeclared_queue_defaults,
)
from .conformance_results import (
    check_result_bad_arguments,
    check_result_expires,
    check_result_stored_and_read,
    check_results_declared,
    check_results_wake_their_channel_only,
)
from .conformance_retry import check_retry_overrides
from .conformance_runtime import (
    check_close_reopen,
    check_closed_broker_raises,
    check_inline_never_suspends,
    check_now_close_to_time,
    check_record_metrics,
    check_wait_times_out,
    check_wait_wakes_for_eta,
    check_wait_wakes_for_lease_expiry,
    check_wait_wakes_for_rate_token,
    check_wait_wakes_on_ack_when_saturated,
    check_wait_wakes_on_enqueue,
    check_wait_wakes_on_retry_release_requeue,
)
from .conformance_support import BrokerFactory, CouldNotCheck
from .conformance_tasks import (
    check_ack_removes,
    check_claim_fields,
    check_claim_limit,
    check_dead_letter,
    check_enqueue_durable,
    check_eta_not_claimable_before_due,
    check_extend,
    check_fifo_by_eta,
    check_lease_expiry_reclaims,
    check_payload_bytes_unchanged,
    check_protocol_shape,
    check_release_not_counted,
    check_requeue_dead,
    check_retry_reschedules,
    check_stale_token_ignored,
)

__all__ = [
    "CHECKS",
    "BrokerFactory",
    "Check",
    "ConformanceFailure",
    "CouldNotCheck",
    "check_broker",
    "run_check",
]

Check = Callable[[BrokerFactory], Awaitable[None]]

#: every check, in a sensible order (cheap and basic first)
CHECKS: list[Check] = [
    check_protocol_shape,
    check_now_close_to_time,
    check_close_reopen,
    check_closed_broker_raises,
    check_inline_never_suspends,
    check_enqueue_durable,
    check_payload_bytes_unchanged,
    check_claim_fields,
    check_claim_limit,
    check_fifo_by_eta,
    check_eta_not_claimable_before_due,
    check_lease_expiry_reclaims,
    check_extend,
    check_stale_token_ignored,
    check_ack_removes,
    check_retry_reschedules,
    check_release_not_counted,
    check_dead_letter,
    check_requeue_dead,
    check_named_dedup_while_exists,
    check_named_dedup_window,
    check_named_batch_reports_duplicates,
    check_names_per_queue,
    check_pause_resume,
    check_purge,
    check_delete_any_state,
    check_stats_exact,
    check_declare_idempotent_updates,
    check_undeclared_queue_defaults,
    check_token_bucket,
    check_token_bucket_idle_cap,
    check_max_concurrent,
    check_fair_across_queues,
    check_backlog_batches,
    check_concurrent_claimers_no_duplicates,
    check_wait_times_out,
    check_wait_wakes_on_enqueue,
    check_wait_wakes_on_retry_release_requeue,
    check_wait_wakes_on_ack_when_saturated,
    check_wait_wakes_for_eta,
    check_wait_wakes_for_lease_expiry,
    check_wait_wakes_for_rate_token,
    check_record_metrics,
    check_results_declared,
    check_result_stored_and_read,
    check_result_expires,
    check_results_wake_their_channel_only,
    check_result_bad_arguments,
    check_claim_expired_flag,
    check_extend_returns_stored_lease,
    check_late_ack_wins,
    check_late_ack_removes_dead_letter,
    check_release_delay,
    check_enqueue_idempotent_by_id,
    check_stats_policy,
    check_dead_letters_limit,
    check_unstorable_error_text,
    check_stats_oldest_ready_at,
    check_get_task_states,
    check_list_tasks_pages,
    check_run_task,
    check_drop_queue,
    check_retry_overrides,
]


class ConformanceFailure(AssertionError):
    """Raised by :func:`check_broker`: ``failures`` maps each failed check's name to the
    exception it raised."""

    def __init__(self, failures: dict[str, BaseException]) -> None:
        lines = [f"{name}: {type(e).__name__}: {e}" for name, e in failures.items()]
        super().__init__(f"{len(failures)} conformance check(s) failed:\n" + "\n".join(lines))
        self.failures = failures


def _short(name: str) -> str:
    return name.removeprefix("check_")


async def check_broker(
    factory: BrokerFactory, *, skip: Iterable[str] = (), timeout: float = 60.0
) -> list[str]:
    """Run every check in :data:`CHECKS` against brokers from ``factory``, one after the
    other, each within ``timeout`` seconds.

    ``skip`` names checks to leave out (``"check_token_bucket"`` or ``"token_bucket"``).
    Returns the names of the checks that passed; raises :class:`ConformanceFailure` listing
    every failed check (each exception is kept, with its traceback, in ``failures``).
    """
    skipped = {_short(s) for s in skip}
    unknown = skipped - {_short(c.__name__) for c in CHECKS}
    if unknown:
        raise ValueError(f"skip names unknown checks: {sorted(unknown)}")
    passed: list[str] = []
    failures: dict[str, BaseException] = {}
    for check in CHECKS:
        if _short(check.__name__) in skipped:
            continue
        try:
            await asyncio.wait_for(check(factory), timeout)
        except TimeoutError as exc:
            failures[check.__name__] = AssertionError(f"did not finish within {timeout}s")
            failures[check.__name__].__cause__ = exc
        except Exception as exc:
            failures[check.__name__] = exc
        else:
            passed.append(check.__name__)
    if failures:
        raise ConformanceFailure(failures)
    return passed


def run_check(check: Check, factory: BrokerFactory) -> None:
    """Run one check from synchronous code, on a new event loop."""
    asyncio.run(check(factory))
