"""The verdict of a finished handler (core.verdict): pure, and unbreakable by what a
handler raises."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from offload import BadArguments, ConfigError, Fail, Retry, RetryPolicy, TaskTimeout
from offload.core.verdict import describe, judge, judge_expired_claim, safe_text


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


class BadBoth(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")

    def __repr__(self) -> str:
        raise RuntimeError("no either")


@given(st.text())
def test_safe_text_is_storable_anywhere(text):
    out = safe_text(text)
    out.encode("utf-8")  # no lone surrogates
    assert "\x00" not in out and len(out) <= 2_000


def test_safe_text_escapes_and_bounds():
    assert safe_text("a\udcffb\x00c") == "a\\udcffb\\x00c"
    long = safe_text("h" * 3000 + "T" * 3000, limit=100)
    assert len(long) <= 100 and long.startswith("h") and long.endswith("T")
    assert "characters cut" in long


def test_describe_survives_exceptions_whose_str_raises():
    assert describe(BadStr("x")).startswith("BadStr: BadStr(")
    assert describe(BadBoth()) == "BadBoth: <unprintable BadBoth>"
    assert describe(ValueError()) == "ValueError"


P = RetryPolicy(limit=2, min_backoff=1, max_backoff=10, max_doublings=3)


def test_judge_maps_each_ending():
    assert judge(None, "", P, 1, 0).kind == "ack"
    assert judge(Fail("stop"), "tb", P, 1, 0) == judge(Fail("stop"), "tb", P, 1, 0)
    assert judge(Fail("stop"), "tb", P, 1, 0).kind == "dead"
    assert judge(BadArguments("x"), "tb", P, 1, 0).error == "BadArguments: x"
    r = judge(Retry(after=dt.timedelta(seconds=7)), "tb", P, 1, 0)
    assert (r.kind, r.delay) == ("retry", 7.0)
    assert judge(ValueError("v"), "tb", P, 2, 0).delay == 2.0  # the policy's 2nd backoff
    last = judge(ValueError("v"), "tb", P, 3, 0)
    assert last.kind == "dead" and "exhausted after 3 attempts" in last.error
    assert judge(TaskTimeout("slow"), "", P, 1, 0).error == "TaskTimeout: slow"


def test_a_retry_whose_after_was_tampered_with_uses_the_backoff():
    r = Retry(after=3)
    r.after = "soon"  # type: ignore[assignment]
    assert judge(r, "", P, 1, 0).delay == 1.0


@pytest.mark.parametrize("after", ["5", float("nan"), -1, True, float("inf"), object()])
def test_retry_after_refuses_what_is_not_seconds(after):
    with pytest.raises(ConfigError, match="Retry\\(after="):
        Retry(after=after)


def test_an_expired_claim_is_judged_only_once_its_policy_is_spent():
    assert judge_expired_claim(P, 2, 0) is None  # attempt 1 died; 2 retries allowed
    assert judge_expired_claim(P, 3, 0) is None
    v = judge_expired_claim(P, 4, 0)
    assert v is not None and v.kind == "dead" and "never reported back" in v.error
    assert judge_expired_claim(RetryPolicy(limit=0), 2, 0) is not None
