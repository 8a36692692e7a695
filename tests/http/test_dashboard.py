"""The dashboard's pages and actions, in process, on every broker: what an operator sees
(counts, rate, concurrency, oldest ready age, dead letters, task profiles), what a click
changes, and that no text a user or the broker wrote can run as script in the page."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from markupsafe import escape
from starlette.testclient import TestClient

from offload import App
from offload.errors import Fail
from offload.http import create_app
from offload.http.auth import COOKIE_NAME
from offload.testing import run_until_idle

TOKEN = "dash-token"
HOSTILE = "<script>alert('x')</script><img src=x onerror=alert(1)>"
PACKAGE = Path(__file__).resolve().parents[2] / "src" / "offload" / "http" / "dashboard"


def make_app(url: str) -> App:
    app = App("dashapp", broker=url)
    app.queue("emails", rate="5/s", max_concurrent=3)
    app.queue("reports")

    @app.task(queue="emails", name="dashapp.send_mail")
    def send_mail(to: str) -> None:
        return None

    @app.task(queue="emails", name="dashapp.explode")
    def explode(note: str) -> None:
        raise Fail(f"refused {note}")

    return app


@pytest.fixture
def app(broker_url):
    app = make_app(broker_url)
    yield app
    app.close()


@pytest.fixture
def client(app):
    with TestClient(
        create_app(app, tokens=[TOKEN], parts=("dashboard",)), follow_redirects=False
    ) as c:
        r = c.post("/login", data={"token": TOKEN, "next": "/"})
        assert r.status_code == 303 and COOKIE_NAME in r.headers["set-cookie"]
        yield c


def csrf_of(page: str) -> str:
    """The CSRF token the page's forms carry."""
    token = re.search(r'name="csrf_token" value="([^"]*)"', page).group(1)
    assert token
    return token


def field(page: str, row: str, name: str) -> str:
    """The text of ``data-field=name`` inside the element marked ``row`` (e.g.
    ``data-queue="emails"``)."""
    block = re.search(rf"<(\w+) {row}[^>]*>(.*?)</\1>", page, re.S)
    assert block, f"no {row} on the page"
    cell = re.search(rf'data-field="{name}"[^>]*>(.*?)</(?:td|dd)>', block.group(2), re.S)
    assert cell, f"no {name} in {row}"
    return html.unescape(re.sub(r"<[^>]+>", "", cell.group(1))).strip()


def fill(app: App) -> None:
    """Two dead letters with a hostile message, measured runs, then three waiting tasks."""
    tasks = app.tasks
    tasks["dashapp.explode"].send(HOSTILE)
    tasks["dashapp.explode"].send("twice")
    tasks["dashapp.send_mail"].send("a@example.org")
    run_until_idle(app)
    for to in ("b", "c", "d"):
        tasks["dashapp.send_mail"].send(to)
    tasks["dashapp.send_mail"].send_with(args=("later",), delay=3600)


def test_overview_shows_counts_policy_oldest_age_and_profiles(app, client):
    fill(app)
    page = client.get("/").text
    row = 'data-queue="emails"'
    stats = app.stats("emails")
    assert field(page, row, "ready") == str(stats.ready) == "3"
    assert field(page, row, "scheduled") == "1"
    assert field(page, row, "dead") == "2"
    assert field(page, row, "state") == "active"
    assert field(page, row, "rate") == "5/s"
    assert field(page, row, "concurrency") == "3"
    assert re.fullmatch(r"\d+(\.\d)? s", field(page, row, "oldest"))
    assert field(page, 'data-queue="reports"', "oldest") == "\u2014"  # nothing waits there
    assert field(page, 'data-task="dashapp.explode"', "count") == "2"
    assert field(page, 'data-task="dashapp.explode"', "failures") == "2"
    assert field(page, 'data-task="dashapp.send_mail"', "count") == "1"


def test_the_live_part_is_the_region_alone(app, client):
    fill(app)
    full = client.get("/").text
    live = client.get("/?part=live").text
    assert "<html" in full and "<html" not in live
    assert field(live, 'data-queue="emails"', "ready") == "3"
    queue_live = client.get("/queues/emails?part=live").text
    assert "<html" not in queue_live and queue_live.count('class="letter"') == 2


def test_text_from_users_and_the_broker_is_escaped(app, client):
    fill(app)
    page = client.get("/queues/emails").text
    assert "<script>alert" not in page and "<img src=x" not in page
    assert str(escape(f"refused {HOSTILE}")) in page
    # the call and the traceback carry it too, escaped
    assert page.count("&lt;script&gt;alert(") >= 3


class _Scripts(HTMLParser):
    """Every script and every inline handler or javascript: URL a page holds."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>")
            if value and value.strip().lower().startswith("javascript:"):
                self.problems.append(f"<{tag} {name}={value}>")
        if tag == "script":
            src = dict(attrs).get("src")
            if not src or not src.startswith("/static/"):
                self.problems.append(f"<script src={src!r}>")
            self.scripts.append(src or "")
            self._in_script = True

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.problems.append(f"inline script {data[:40]!r}")


def test_pages_forbid_and_hold_no_inline_script(app, client):
    fill(app)
    for path in ("/", "/queues/emails", "/login?next=/x%22%3E%3Cscript%3E", "/queues/nope"):
        r = client.get(path)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert "frame-ancestors 'none'" in csp and r.headers["x-frame-options"] == "DENY"
        parser = _Scripts()
        parser.feed(r.text)
        assert parser.scripts and not parser.problems, (path, parser.problems)
    # and no template can mark text safe or load anything from another site
    for source in (PACKAGE / "templates").iterdir():
        text = source.read_text()
        assert "|safe" not in text.replace(" ", "") and "autoescape false" not in text, source
        assert not re.search(r"\son\w+=", text), source
    for source in [*(PACKAGE / "templates").iterdir(), *(PACKAGE / "static").iterdir()]:
        assert not re.search(r"https?://", source.read_text()), f"{source} names another site"


def test_static_assets_are_shipped_and_public(client):
    page = client.get("/").text
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page)
    assert len(assets) == 2
    with TestClient(client.app) as anonymous:
        for asset in assets:
            r = anonymous.get(asset)
            assert r.status_code == 200 and r.content, asset


def test_pause_resume_and_purge_need_the_csrf_token(app, client):
    fill(app)
    # a cookie-authenticated POST without the token changes nothing
    r = client.post("/queues/emails/pause", data={"next": "/"})
    assert r.status_code == 403 and not app.stats("emails").paused
    csrf = csrf_of(client.get("/").text)
    r = client.post("/queues/emails/pause", data={"csrf_token": csrf, "next": "/"})
    assert r.status_code == 303 and r.headers["location"] == "/?done=paused&n=0"
    assert app.stats("emails").paused
    page = client.get(r.headers["location"]).text
    assert field(page, 'data-queue="emails"', "state") == "paused"
    assert "Queue paused" in page
    r = client.post("/queues/emails/resume", data={"csrf_token": csrf})
    assert r.headers["location"] == "/queues/emails?done=resumed&n=0"
    assert not app.stats("emails").paused
    r = client.post("/queues/emails/purge", data={"csrf_token": csrf, "next": "/"})
    assert r.headers["location"] == "/?done=purged&n=4"
    assert "Purged 4 ready and scheduled tasks." in client.get(r.headers["location"]).text
    assert app.stats("emails").ready == 0 and app.stats("emails").dead == 2


def test_dead_letters_show_error_and_traceback_and_can_be_requeued_or_deleted(app, client):
    fill(app)
    page = client.get("/queues/emails").text
    letters = {d.id: d for d in app.dead_letters("emails")}
    assert len(letters) == 2 and set(re.findall(r'data-letter="(\w+)"', page)) == set(letters)
    for d in letters.values():
        assert str(escape(d.error)) in page
        assert "Traceback (most recent call last)" in d.traceback
    assert page.count("Traceback (most recent call last)") == 2
    first, second = sorted(letters)
    csrf = csrf_of(page)
    r = client.post(f"/queues/emails/dead/{first}/requeue", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/queues/emails?done=requeued&n=1"
    stats = app.stats("emails")
    assert stats.dead == 1 and stats.ready == 4
    r = client.post(f"/queues/emails/dead/{second}/delete", data={"csrf_token": csrf})
    assert r.headers["location"] == "/queues/emails?done=deleted&n=1"
    assert app.stats("emails").dead == 0
    assert "No dead letters." in client.get("/queues/emails").text
    # a page drawn before the first one was requeued cannot delete it now that it waits
    r = client.post(f"/queues/emails/dead/{first}/delete", data={"csrf_token": csrf})
    assert r.headers["location"] == "/queues/emails?done=deleted&n=0"
    assert app.stats("emails").ready == 4
    # a stale page's click on a letter that is gone reports that nothing changed
    r = client.post(f"/queues/emails/dead/{second}/delete", data={"csrf_token": csrf})
    assert r.headers["location"] == "/queues/emails?done=deleted&n=0"


def test_requeue_all(app, client):
    fill(app)
    csrf = csrf_of(client.get("/queues/emails").text)
    r = client.post("/queues/emails/dead/requeue", data={"csrf_token": csrf})
    assert r.headers["location"] == "/queues/emails?done=requeued&n=2"
    assert app.stats("emails").dead == 0


def test_unknown_queue_is_a_404_page(client):
    r = client.get("/queues/nope")
    assert r.status_code == 404 and "No such queue" in r.text and "nope" in r.text
    csrf = csrf_of(client.get("/").text)
    r = client.post("/queues/nope/pause", data={"csrf_token": csrf})
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]


@pytest.mark.parametrize("target", ["https://elsewhere.example/", "//elsewhere.example", "/\\x"])
def test_actions_never_redirect_off_site(app, client, target):
    csrf = csrf_of(client.get("/").text)
    r = client.post("/queues/emails/pause", data={"csrf_token": csrf, "next": target})
    assert r.headers["location"] == "/queues/emails?done=paused&n=0"


def test_notices_are_fixed_texts(client):
    page = client.get("/?done=" + "%3Cb%3Eowned%3C/b%3E&n=1").text
    assert "owned" not in page
    page = client.get("/?done=requeued&n=%3Cb%3E").text
    assert "Requeued 0 dead letters." in page and "&lt;b&gt;" not in page


def test_login_form(client):
    with TestClient(client.app, follow_redirects=False) as anonymous:
        r = anonymous.get("/", headers={"accept": "text/html"})
        assert r.status_code == 303 and r.headers["location"] == "/login?next=/"
        page = anonymous.get("/login?next=/queues/emails").text
        assert 'name="next" value="/queues/emails"' in page and 'name="token"' in page
        assert "not accepted" not in page
        assert "not accepted" in anonymous.get("/login?error=token").text
        # a next= that leaves the site is dropped before it reaches the form
        assert 'name="next" value="/"' in anonymous.get("/login?next=//evil.example").text


def test_a_broker_outage_is_a_503_page_that_says_what_failed():
    app = make_app("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        with TestClient(create_app(app, no_auth=True, parts=("dashboard",))) as c:
            for path in ("/", "/?part=live", "/queues/emails"):
                r = c.get(path)
                assert r.status_code == 503 and "cannot reach Redis" in r.text, path
    finally:
        app.close()
