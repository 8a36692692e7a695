"""Every conformance check against every broker: adding a broker adds a column of tests."""

from __future__ import annotations

import dataclasses

import pytest

from offload.brokers import broker_from_url
from offload.testing import ConformanceFailure, CouldNotCheck, check_broker
from offload.testing.conformance import CHECKS
from offload.testing.conformance_queues import check_stats_exact


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
async def test_conformance(check, broker_url):
    try:
        await check(lambda: broker_from_url(broker_url))
    except CouldNotCheck as exc:
        # Not a pass: the machine was too slow for the timing the rule needs. Say so.
        pytest.skip(str(exc))


async def test_check_broker_reports_each_failed_check(tmp_path):
    """check_broker runs what is not skipped and names every check a broken broker fails."""
    url = f"sqlite:///{tmp_path / 'broker.db'}"

    class IgnoresEta(type(broker_from_url(url))):
        async def enqueue(self, tasks):
            return await super().enqueue(
                [dataclasses.replace(t, eta=None, delay=0.0) for t in tasks]
            )

    keep = {"check_protocol_shape", "check_eta_not_claimable_before_due", "fifo_by_eta"}
    skip = [
        c.__name__
        for c in CHECKS
        if c.__name__.removeprefix("check_") not in {k.removeprefix("check_") for k in keep}
    ]
    with pytest.raises(ConformanceFailure) as info:
        await check_broker(lambda: IgnoresEta(url), skip=skip)
    assert set(info.value.failures) == {"check_eta_not_claimable_before_due", "check_fifo_by_eta"}
    assert "before their eta" in str(info.value)
    passed = await check_broker(lambda: broker_from_url(url), skip=skip)
    assert passed == [
        "check_protocol_shape",
        "check_fifo_by_eta",
        "check_eta_not_claimable_before_due",
    ]


async def test_a_check_too_slow_to_assert_says_so(tmp_path):
    """A timing check whose leases always run out before it can read exact counts does not
    pass silently: it retries with longer leases, then raises CouldNotCheck."""
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    readings = []

    class Stalling(type(broker_from_url(url))):
        async def now(self):
            # Every reading comes 5 s after the last, as on a machine that stalls.
            readings.append(None)
            return await super().now() + 5.0 * len(readings)

    with pytest.raises(CouldNotCheck, match="too slow") as info:
        await check_stats_exact(lambda: Stalling(url))
    assert "x1: " in str(info.value) and "x9: " in str(info.value), str(info.value)
