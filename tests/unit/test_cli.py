"""The CLI: every command works, and bad input exits non-zero with one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from offload.cli import main

APP = "tests.cliapp:app"


@pytest.fixture
def cli(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFLOAD_BROKER", f"sqlite:///{tmp_path / 'cli.db'}")
    import importlib

    import tests.cliapp

    importlib.reload(tests.cliapp)
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    yield invoke
    tests.cliapp.app.close()


def test_send_queues_dead_requeue_pause_purge(cli):
    r = cli("send", APP, "send_email", "--args", '["a@b.c"]', "--kwargs", '{"subject": "hi"}')
    assert r.exit_code == 0, r.output
    assert "enqueued cli.send_email" in r.output
    r = cli("send", APP, "cli.send_email", "--args", '["boom"]', "--name", "n1", "--delay", "0")
    assert r.exit_code == 0, r.output
    r = cli("send", APP, "cli.send_email", "--args", '["boom"]', "--name", "n1")
    assert r.exit_code == 1 and "already exists" in r.output
    rows = {q["queue"]: q for q in json.loads(cli("queues", APP, "--json").output)}
    assert rows["emails"]["ready"] == 2 and rows["emails"]["rate"] == 20.0
    assert "emails" in cli("queues", APP).output

    r = cli("pause", APP, "emails")
    assert r.exit_code == 0 and json.loads(cli("queues", APP, "--json").output)[1]["paused"]
    assert cli("resume", APP, "emails").exit_code == 0

    import tests.cliapp as mod
    from offload import Retry

    mod.app.queue("emails", retry=Retry(limit=0))
    from offload.testing.apps import run_until_idle

    run_until_idle(mod.app)
    dead = json.loads(cli("dead", APP, "emails", "--json").output)
    assert len(dead) == 1 and "mail server said no" in dead[0]["error"]
    assert dead[0]["args"] == ["boom"]
    assert "mail server said no" in cli("dead", APP, "emails").output
    r = cli("requeue", APP, "emails", dead[0]["id"])
    assert r.exit_code == 0 and "requeued 1" in r.output
    r = cli("purge", APP, "emails", "--yes")
    assert r.exit_code == 0 and "purged 1" in r.output
    r = cli("metrics", APP, "--json")
    assert json.loads(r.output)[0]["task"] == "cli.send_email"


def test_every_command_has_help(cli):
    for cmd in (
        "worker",
        "run",
        "send",
        "queues",
        "dead",
        "requeue",
        "pause",
        "resume",
        "purge",
        "delete",
        "metrics",
    ):
        r = cli(cmd, "--help")
        assert r.exit_code == 0 and "Usage:" in r.output, cmd


def test_console_script_runs(tmp_path):
    env = {**os.environ, "OFFLOAD_BROKER": f"sqlite:///{tmp_path / 'c.db'}"}
    out = subprocess.run(
        [sys.executable, "-m", "offload", "queues", APP, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert {q["queue"] for q in json.loads(out.stdout)} == {"default", "emails"}


# -- user text is printed as text, never as markup ------------------------------------------

MARKUP_APP = "tests.cliapp_markup:app"


@pytest.fixture
def markup_app(cli):
    import importlib

    import tests.cliapp_markup

    importlib.reload(tests.cliapp_markup)
    yield tests.cliapp_markup
    tests.cliapp_markup.app.close()


def test_bracketed_user_text_is_printed_verbatim(cli, markup_app):
    r = cli("send", MARKUP_APP, "job[/x][red]", "--args", '["disk [red] full"]', "--name", "n[/x]")
    assert r.exit_code == 0, r.output
    assert "enqueued job[/x][red] as " in r.stdout and "(name n[/x])" in r.stdout
    markup_app.explode.send("closing tag [/x] here")
    from offload.testing.apps import run_until_idle

    run_until_idle(markup_app.app)
    r = cli("dead", MARKUP_APP, "ops:fire:")
    assert r.exit_code == 0, r.output
    assert "2 dead letter(s) in ops:fire:" in r.stdout
    assert "disk [red] full" in r.stdout and "closing tag [/x] here" in r.stdout
    assert "job[/x][red]" in r.stdout and "name=n[/x]" in r.stdout
    for cmd in ("queues", "metrics"):
        r = cli(cmd, MARKUP_APP)
        assert r.exit_code == 0, r.output
        assert ("ops:fire:" if cmd == "queues" else "job[/x][red]") in r.stdout, r.stdout
    for cmd in ("pause", "resume", "requeue", "purge"):
        r = cli(cmd, MARKUP_APP, "ops:fire:", *(["--yes"] if cmd == "purge" else []))
        assert r.exit_code == 0 and "ops:fire:" in r.stdout, r.output


def test_bracketed_text_in_an_error_is_printed_verbatim(cli, markup_app):
    r = cli("send", MARKUP_APP, "nosuch[/x]")
    assert r.exit_code == 1
    assert "task 'nosuch[/x]' is not registered" in r.stderr and "job[/x][red]" in r.stderr
    assert "Traceback" not in r.output


# -- --json is strict JSON -------------------------------------------------------------------


def _strict_json(text: str):
    def refuse(constant: str):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_json_output_is_strict_json(cli, markup_app):
    import datetime as dt
    import math

    when = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    markup_app.explode.send("nan", math.nan, math.inf, -math.inf, b"\x00\xff", when, {1: b"k"})
    from offload.testing.apps import run_until_idle

    run_until_idle(markup_app.app)
    for args in (
        ("dead", MARKUP_APP, "ops:fire:"),
        ("queues", MARKUP_APP),
        ("metrics", MARKUP_APP),
    ):
        r = cli(*args, "--json")
        assert r.exit_code == 0, r.output
        _strict_json(r.stdout)
    [d] = _strict_json(cli("dead", MARKUP_APP, "ops:fire:", "--json").stdout)
    assert d["args"] == [
        "nan",
        None,
        None,
        None,
        "AP8=",
        "2024-05-06T07:08:09+00:00",
        {"1": "aw=="},
    ]
    assert d["task"] == "job[/x][red]" and "RuntimeError: nan" in d["traceback"]


# -- --queues on the worker --------------------------------------------------------------------


@pytest.fixture
def started(monkeypatch):
    """Records the workers the CLI would start, instead of running them."""
    import offload.cli

    calls: list[list[str] | None] = []
    monkeypatch.setattr(
        offload.cli, "_run_worker", lambda app, queues, *a, **k: calls.append(queues)
    )
    return calls


@pytest.mark.parametrize("given", [",,", "", " , ", ","])
def test_worker_refuses_queues_that_name_no_queue(cli, started, given):
    r = cli("worker", APP, "--queues", given, "--burst")
    assert r.exit_code == 2, r.output
    [line] = r.stderr.strip().splitlines()
    assert f"--queues {given!r} names no queue" in line and "leave --queues out" in line
    assert started == []


def test_worker_serves_each_named_queue_once(cli, started):
    assert cli("worker", APP, "--queues", "emails, default,emails", "--burst").exit_code == 0
    assert cli("worker", APP, "--burst").exit_code == 0
    assert started == [["emails", "default"], None]


# -- a careless user gets one clear line, a non-zero exit, and nothing enqueued ----------------

_NEEDS = {  # the arguments each command needs after MODULE:APP
    "worker": ["--burst"],
    "run": [],
    "send": ["send_email", "--args", '["a@b.c"]'],
    "queues": [],
    "dead": ["emails"],
    "requeue": ["emails"],
    "pause": ["emails"],
    "resume": ["emails"],
    "purge": ["emails", "--yes"],
    "delete": ["emails", "--id", "x"],
    "metrics": [],
}
_BAD_SPECS = {
    "nomodule:app": "no module named 'nomodule'",
    "tests.cliapp:nope": "has no attribute 'nope'",
    "tests.cliapp": "expected MODULE:APP",
    "tests.cliapp:": "expected MODULE:APP",
    "tests/cliapp.py:app": "dotted module name",
    ".cliapp:app": "dotted module name",
    "tests.cliapp:not_an_app": "not an offload.App",
}
SEND = ["send", APP, "send_email"]
CARELESS = [
    *(
        ([cmd, spec, *rest], needle)
        for cmd, rest in _NEEDS.items()
        for spec, needle in _BAD_SPECS.items()
    ),
    (["worker", APP, "-c", "0"], "0 is not in the range x>=1"),
    (["worker", APP, "-c", "-1"], "-1 is not in the range x>=1"),
    (["worker", APP, "-c", "many"], "'many' is not a valid integer"),
    (["run", APP, "-c", "0"], "0 is not in the range x>=1"),
    (["worker", APP, "--grace", "-5"], "'-5': must be a finite number of seconds >= 0"),
    (["worker", APP, "--grace", "nan"], "'nan': must be a finite number of seconds >= 0"),
    (["worker", APP, "--grace", "inf"], "'inf': must be a finite number of seconds >= 0"),
    (["run", APP, "--grace", "nan"], "'nan': must be a finite number of seconds >= 0"),
    (["worker", APP, "--grace", "soon"], "'soon' is not a number of seconds"),
    ([*SEND, "--args", '["x"]', "--delay", "nan"], "must be a finite number of seconds"),
    ([*SEND, "--args", '["x"]', "--delay", "inf"], "must be a finite number of seconds"),
    ([*SEND, "--args", '["x"]', "--delay", "-1"], "must be a finite number of seconds"),
    (["dead", APP, "emails", "--limit", "0"], "0 is not in the range"),
    ([*SEND, "--args", "not json"], "--args: invalid JSON 'not json'"),
    ([*SEND, "--args", ""], "--args: invalid JSON ''"),
    ([*SEND, "--args", '{"to": "x"}'], "must be a JSON array"),
    ([*SEND, "--args", '"x"'], "must be a JSON array"),
    ([*SEND, "--args", "[NaN]"], "NaN is not JSON"),
    ([*SEND, "--args", '["x"]', "--kwargs", "[1]"], "must be a JSON object"),
    ([*SEND, "--args", '["x"]', "--kwargs", "1"], "must be a JSON object"),
    ([*SEND, "--args", '["x"]', "--kwargs", "{subject: 1}"], "--kwargs: invalid JSON"),
    ([*SEND, "--args", '["x"]', "--kwargs", '{"nope": 1}'], "unexpected keyword argument 'nope'"),
    ([*SEND, "--args", '["x"]', "--name", ""], "must be a 1-500 char string"),
    (["send", APP, "nosuch", "--args", '["x"]'], "task 'nosuch' is not registered"),
    ([*SEND, "--args", '["x"]', "--queue", "nope"], "queue 'nope' is not declared"),
    (["worker", APP, "--queues", "emails,nope"], "queue 'nope' is not declared"),
    (["worker", APP, "--queues", ",,"], "names no queue"),
    *(
        ([cmd, APP, "nope", *_NEEDS[cmd][1:]], "queue 'nope' is not declared")
        for cmd in ("dead", "requeue", "pause", "resume", "purge", "delete")
    ),
    (["delete", APP, "emails", "--id", ""], "no task '' in queue 'emails'"),
    (["delete", APP, "emails", "--id", "zzz"], "no task 'zzz' in queue 'emails'"),
    (["delete", APP, "emails"], "give exactly one of --id or --name"),
    (["requeue", APP, "emails", "zzz"], "no dead task 'zzz' in queue 'emails'"),
    ([*SEND, "--args", "[]"], "1 required positional argument: 'to'"),
    (["queues", "tests.cliapp_badpolicy:app"], "rate '20/x': unit must be s, m or h"),
]


@pytest.mark.parametrize(("args", "needle"), CARELESS, ids=[" ".join(a) for a, _ in CARELESS])
def test_careless_input_is_one_clear_line_and_changes_nothing(cli, started, args, needle):
    r = cli(*args)
    assert r.exit_code != 0, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert needle in lines[0], lines[0]
    assert r.stdout == "" and started == []
    import tests.cliapp as mod

    assert {q: mod.app.stats(q).ready for q in mod.app.queues} == {"default": 0, "emails": 0}


def test_queues_shows_what_the_broker_enforces_and_flags_a_differing_declaration(
    cli, tmp_path
):
    # Another deploy (or another app) declared "emails" differently, and its workers run.
    from offload import App

    other = App("cli", broker=f"sqlite:///{tmp_path / 'cli.db'}")
    other.queue("emails", rate="5/s", max_concurrent=2, lease=30)
    other.open()
    other.close()
    rows = {q["queue"]: q for q in json.loads(cli("queues", APP, "--json").output)}
    emails = rows["emails"]
    assert emails["rate"] == 5.0 and emails["lease"] == 30.0  # the broker's, not ours
    assert emails["differs"] == {
        "rate": {"declared": 20.0, "enforced": 5.0},
        "bucket": {"declared": 20.0, "enforced": 5.0},
        "lease": {"declared": 60.0, "enforced": 30.0},
    }
    text = cli("queues", APP).output
    assert "rate is 5 in the broker but 20 in this app's declaration" in text
    # reading changed nothing: the broker still enforces the other declaration
    again = {q["queue"]: q for q in json.loads(cli("queues", APP, "--json").output)}
    assert again["emails"]["rate"] == 5.0
