"""Retry and rate math: the rules of DESIGN.md, checked exactly and by property."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload import PolicyError, QueuePolicy, Retry, RetryPolicy
from offload.core.policy import parse_rate


def test_backoff_matches_the_design_example():
    p = RetryPolicy(limit=None, min_backoff=10, max_backoff=300, max_doublings=3)
    assert [p.backoff(n) for n in range(1, 9)] == [10, 20, 40, 80, 160, 240, 300, 300]


@given(
    min_b=st.floats(0.001, 100),
    extra=st.floats(0, 10_000),
    doublings=st.integers(0, 20),
    n=st.integers(1, 200),
)
def test_backoff_formula_properties(min_b, extra, doublings, n):
    p = RetryPolicy(
        limit=None, min_backoff=min_b, max_backoff=min_b + extra, max_doublings=doublings
    )
    d = p.backoff(n)
    assert min_b <= d <= p.max_backoff + 1e-9
    # never shrinks
    assert p.backoff(n + 1) >= d - 1e-9
    if n <= doublings + 1:
        expected = min_b * 2 ** (n - 1)
    else:
        expected = min_b * 2**doublings * (n - doublings)
    assert math.isclose(d, min(expected, p.max_backoff), rel_tol=1e-9)


@given(limit=st.integers(0, 50), retries=st.integers(0, 60))
def test_limit_counts_retries_after_the_first_attempt(limit, retries):
    p = RetryPolicy(limit=limit)
    assert p.exhausted(retries, age=0.0) == (retries >= limit)


@given(
    limit=st.integers(0, 10),
    age_limit=st.floats(0, 100),
    retries=st.integers(0, 20),
    age=st.floats(0, 200),
)
def test_limit_and_age_limit_must_both_be_exceeded(limit, age_limit, retries, age):
    p = RetryPolicy(limit=limit, age_limit=age_limit)
    assert p.exhausted(retries, age) == (retries >= limit and age >= age_limit)


def test_unlimited_never_exhausts():
    assert not RetryPolicy(limit=None).exhausted(10**9, 10**9)


def test_public_retry_spelling_maps_to_policy():
    p = RetryPolicy.from_retry(
        Retry(limit=3, min_backoff=0.1, max_backoff=1.0, max_doublings=2, age_limit=None)
    )
    assert (p.limit, p.min_backoff, p.max_backoff, p.max_doublings, p.age_limit) == (
        3,
        0.1,
        1.0,
        2,
        None,
    )
    assert RetryPolicy.from_retry(Retry(limit=None)).limit is None
    assert RetryPolicy.from_retry(Retry()).limit == RetryPolicy().limit


@pytest.mark.parametrize(
    ("text", "per_s"),
    [("20/s", 20), ("60/m", 1), ("3600/h", 1), ("0.5/s", 0.5), (" 10 / min ", 10 / 60), (7, 7)],
)
def test_parse_rate(text, per_s):
    assert math.isclose(parse_rate(text), per_s)


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("20/x", "unit must be s, m or h"),
        ("fast", "N/s"),
        ("0/s", "more than zero"),
        (-1, "more than zero"),
        (True, "string like"),
        ([1], "string like"),
    ],
)
def test_bad_rate_names_the_value(bad, needle):
    with pytest.raises(PolicyError, match=needle) as info:
        parse_rate(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_concurrent": 0}, "max_concurrent 0"),
        ({"bucket_size": 0, "rate": "1/s"}, "bucket_size 0"),
        ({"lease": 0.001}, "lease"),
        ({"lease": "long"}, "lease 'long'"),
        ({"dedup_window": -1}, "dedup_window -1"),
        ({"retry": "yes"}, "retry 'yes'"),
    ],
)
def test_bad_policy_values_name_the_field(kwargs, needle):
    with pytest.raises(PolicyError, match=needle):
        QueuePolicy("q", **kwargs)


def test_bad_retry_values():
    with pytest.raises(PolicyError, match="max_backoff"):
        RetryPolicy(min_backoff=5, max_backoff=1)
    with pytest.raises(PolicyError, match="limit"):
        RetryPolicy(limit=-1)
    with pytest.raises(PolicyError, match="whole number"):
        RetryPolicy(max_doublings=1.5)


def test_bucket_defaults_to_one_second_of_rate():
    assert QueuePolicy("q", rate="20/s").bucket == 20
    assert QueuePolicy("q", rate="1/m").bucket == 1
    assert QueuePolicy("q", rate="20/s", bucket_size=5).bucket == 5
    assert QueuePolicy("q").bucket is None


def test_bad_queue_name():
    with pytest.raises(PolicyError, match="queue name"):
        QueuePolicy("has space")


# -- the one give-up rule (core.policy.give_up), used at failure time and at claim time ---


@given(
    limit=st.one_of(st.none(), st.integers(0, 20)),
    age_limit=st.one_of(st.none(), st.floats(0, 100)),
    attempt=st.integers(1, 40),
    age=st.floats(0, 200),
)
def test_give_up_is_monotonic_and_matches_app_engine(limit, age_limit, attempt, age):
    from offload.core.policy import give_up

    p = RetryPolicy(limit=limit, age_limit=age_limit)
    verdict = give_up(p, attempt, age)
    # never un-gives-up: a later attempt, or an older task, is given up too
    if verdict:
        assert give_up(p, attempt + 1, age) and give_up(p, attempt, age + 1)
    if limit is None and age_limit is None:
        assert not verdict
    elif age_limit is None:
        assert verdict == (attempt - 1 >= limit)  # `limit` retries after the first attempt
    elif limit is None:
        assert verdict == (age >= age_limit)
    else:
        assert verdict == (attempt - 1 >= limit and age >= age_limit)


@given(limit=st.integers(0, 10))
def test_a_task_runs_exactly_limit_plus_one_times(limit):
    from offload.core.policy import give_up

    p = RetryPolicy(limit=limit)
    runs = 1
    while not give_up(p, runs, 0.0):
        runs += 1
    assert runs == limit + 1


def test_backoff_never_overflows():
    p = RetryPolicy(limit=None, min_backoff=0.5, max_backoff=60, max_doublings=10**6)
    assert p.backoff(5000) == 60 and p.backoff(10**9) == 60
    assert RetryPolicy(min_backoff=0, max_backoff=0).backoff(10**6) == 0


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"max_concurrent": 10**30}, "max_concurrent"),
        ({"bucket_size": 10**12, "rate": "1/s"}, "bucket_size"),
        ({"lease": 1e12}, "lease"),
        ({"dedup_window": float("inf")}, "dedup_window"),
        ({"rate": 1e300}, "rate"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"retry": Retry(limit=10**30)}, "retry.limit"),
        ({"retry": Retry(max_doublings=1.5)}, "retry.max_doublings"),
    ],
)
def test_values_no_broker_can_hold_fail_at_declaration(kw, field):
    with pytest.raises(PolicyError, match=field.replace(".", r"\.")):
        QueuePolicy("q", **kw)
