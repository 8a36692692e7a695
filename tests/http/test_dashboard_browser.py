"""The dashboard in a real browser: Debian's Chromium, headless, driven by selenium through
Debian's chromium-driver, against ``create_app`` served by uvicorn on a loopback port, on
every broker. An operator logs in, sees a queue's counts (refreshed live, without a
reload), pauses the queue and requeues a dead letter; the browser reports no
Content-Security-Policy violation on the way.

Screenshots of each step are kept under the test's ``tmp_path``. With
``OFFLOAD_DOCS_SCREENSHOT=1`` the overview is also written to ``docs/dashboard.png``.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

from offload import App
from offload.errors import Fail
from offload.http import create_app
from offload.testing import run_until_idle

from ..conftest import IN_CI

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    TimeoutException,
    WebDriverException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TOKEN = "browser-token"
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,860",
)


def _browser_or_skip() -> None:
    if os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER):
        return
    msg = "Chromium or chromium-driver is not installed (apt-get install chromium chromium-driver)"
    if IN_CI:
        pytest.fail(f"{msg}; CI=true: the browser tests must not skip")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def browser():
    _browser_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="offload-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Served:
    """``create_app(app)`` under uvicorn on a free loopback port, in a thread."""

    def __init__(self, app: App) -> None:
        import uvicorn

        self.server_app = create_app(app, tokens=[TOKEN])
        self.server_app.state.offload.extras["dashboard"].refresh_seconds = 0.3
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        config = uvicorn.Config(self.server_app, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def make_app(url: str) -> App:
    app = App("shop", broker=url)
    app.queue("emails", rate="20/s", max_concurrent=4)
    app.queue("invoices", rate="3/s")
    app.queue("thumbnails", max_concurrent=8)

    @app.task(queue="emails", name="shop.send_receipt")
    def send_receipt(order: int) -> None:
        return None

    @app.task(queue="invoices", name="shop.render_invoice")
    def render_invoice(order: int) -> None:
        if order == 13:
            raise Fail(f"order {order}: <b>no billing address</b> on file")

    @app.task(queue="thumbnails", name="shop.make_thumbnail")
    def make_thumbnail(image: str) -> None:
        return None

    return app


def fill(app: App) -> None:
    t = app.tasks
    for order in range(10, 14):
        t["shop.render_invoice"].send(order)
        t["shop.send_receipt"].send(order)
    for n in range(6):
        t["shop.make_thumbnail"].send(f"img{n}.jpg")
    run_until_idle(app)
    for order in range(20, 25):
        t["shop.send_receipt"].send(order)
    t["shop.render_invoice"].send_with(args=(30,), delay=600)
    for n in range(3):
        t["shop.make_thumbnail"].send(f"new{n}.jpg")


def cell(driver, queue: str, name: str) -> str:
    """A queue's cell on the overview."""
    return text(driver, f'tr[data-queue="{queue}"] [data-field="{name}"]')


def _swapped(exc: WebDriverException) -> bool:
    # Chromium reports the race as a stale element, or, when the swap lands inside the
    # command, as "unhandled inspector error: ... does not belong to the document"
    return isinstance(exc, StaleElementReferenceException) or "does not belong to the document" in (
        exc.msg or ""
    )


def text(driver, selector: str) -> str:
    """The text of an element of a live region, read again when a refresh swapped it."""
    for _ in range(20):
        try:
            return driver.find_element(By.CSS_SELECTOR, selector).text
        except WebDriverException as exc:
            if not _swapped(exc):
                raise
    raise AssertionError(f"{selector} kept changing under the reader")


def click(driver, by: str, selector: str) -> None:
    """Click an element of a live region, found again when a refresh swapped it out (a
    person's click cannot fall between finding and clicking; a driver's can)."""
    for _ in range(20):
        try:
            driver.find_element(by, selector).click()
            return
        except WebDriverException as exc:
            if not _swapped(exc):
                raise
    raise AssertionError(f"{selector} kept changing under the clicker")


def wait_for(driver, what, timeout: float = 10.0):
    try:
        return WebDriverWait(
            driver,
            timeout,
            poll_frequency=0.05,
            ignored_exceptions=(StaleElementReferenceException,),
        ).until(lambda d: what(d))
    except TimeoutException:
        raise AssertionError(f"timed out waiting on {driver.current_url}") from None


def csp_violations(driver) -> list[str]:
    return [
        entry["message"]
        for entry in driver.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
    ]


def test_log_in_see_counts_pause_and_requeue(browser, broker_url, broker_kind, tmp_path):
    app = make_app(broker_url)
    fill(app)
    shots = tmp_path / "screenshots"
    shots.mkdir()
    try:
        with Served(app) as served:
            browser.delete_all_cookies()
            browser.get(served.url + "/")
            # no session: the login form, and back to the page asked for afterwards
            wait_for(browser, lambda d: d.find_elements(By.ID, "token"))
            assert "/login" in browser.current_url
            browser.save_screenshot(str(shots / "1-login.png"))
            browser.find_element(By.ID, "token").send_keys("wrong")
            browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
            wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "p.error"))
            browser.find_element(By.ID, "token").send_keys(TOKEN)
            browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()

            # the queues with their counts, as the broker has them
            wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-queue]"))
            assert cell(browser, "emails", "ready") == "5"
            assert cell(browser, "invoices", "scheduled") == "1"
            assert cell(browser, "invoices", "dead") == "1"
            assert cell(browser, "emails", "rate") == "20/s"
            assert cell(browser, "invoices", "rate") == "3/s"
            assert cell(browser, "emails", "concurrency") == "4"
            assert cell(browser, "emails", "state") == "active"

            # live refresh: a task sent now appears without a reload of the page
            browser.execute_script("window.offloadMarker = 'still the same page'")
            app.tasks["shop.send_receipt"].send(99)
            wait_for(browser, lambda d: cell(d, "emails", "ready") == "6")
            assert browser.execute_script("return window.offloadMarker") == "still the same page"
            browser.save_screenshot(str(shots / "2-queues.png"))

            # pause a queue
            click(browser, By.CSS_SELECTOR, 'tr[data-queue="thumbnails"] [data-action="pause"]')
            wait_for(browser, lambda d: cell(d, "thumbnails", "state") == "paused")
            assert app.stats("thumbnails").paused
            assert "Queue paused" in browser.find_element(By.CSS_SELECTOR, ".notice").text
            browser.save_screenshot(str(shots / "3-paused.png"))
            if broker_kind == "sqlite" and os.environ.get("OFFLOAD_DOCS_SCREENSHOT") == "1":
                browser.save_screenshot(str(ROOT / "docs" / "dashboard.png"))

            # purge asks first: dismissed, nothing happens; accepted, the queue is emptied
            click(browser, By.CSS_SELECTOR, 'tr[data-queue="emails"] [data-action="purge"]')
            alert = wait_for(browser, lambda d: d.switch_to.alert)
            assert "emails" in alert.text
            alert.dismiss()
            time.sleep(0.3)
            assert app.stats("emails").ready == 6
            click(browser, By.CSS_SELECTOR, 'tr[data-queue="emails"] [data-action="purge"]')
            wait_for(browser, lambda d: d.switch_to.alert).accept()
            wait_for(browser, lambda d: "Purged 6 ready and scheduled tasks." in d.page_source)
            assert app.stats("emails").ready == 0 and cell(browser, "emails", "ready") == "0"

            # a queue's dead letters: the error as text, the traceback on demand
            click(browser, By.LINK_TEXT, "invoices")
            wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "li.letter"))
            error = text(browser, 'li.letter [data-field="error"]')
            assert error == "Fail: order 13: <b>no billing address</b> on file"
            assert browser.find_elements(By.CSS_SELECTOR, "li.letter b") == []  # never parsed
            click(browser, By.CSS_SELECTOR, "li.letter summary")
            wait_for(
                browser,
                lambda d: (
                    "Traceback (most recent call last)"
                    in text(d, 'li.letter [data-field="traceback"]')
                ),
            )
            time.sleep(0.7)  # two live refreshes: an open traceback stays open
            assert browser.execute_script("return document.querySelector('li.letter details').open")
            browser.save_screenshot(str(shots / "4-dead-letters.png"))

            # requeue it
            click(browser, By.CSS_SELECTOR, 'button[data-action="requeue"]')
            wait_for(browser, lambda d: "Requeued 1 dead letter." in d.page_source)
            assert browser.find_elements(By.CSS_SELECTOR, "li.letter") == []
            stats = app.stats("invoices")
            assert stats.dead == 0 and stats.ready == 1
            browser.save_screenshot(str(shots / "5-requeued.png"))
            assert csp_violations(browser) == []

            # the session ends: the next refresh goes to the login form, then back here
            browser.delete_all_cookies()
            wait_for(browser, lambda d: d.find_elements(By.ID, "token"))
            assert browser.find_element(By.NAME, "next").get_attribute("value") == (
                "/queues/invoices"
            )
    finally:
        app.close()
    assert sorted(p.name for p in shots.iterdir()) == [
        "1-login.png",
        "2-queues.png",
        "3-paused.png",
        "4-dead-letters.png",
        "5-requeued.png",
    ]


def test_the_docs_screenshot_is_a_png():
    data = (ROOT / "docs" / "dashboard.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
