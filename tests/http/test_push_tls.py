"""Push delivery to an ``https://`` receiver: a real uvicorn server with a certificate from a
CA made in the test (trustme). Delivered when ``$OFFLOAD_PUSH_CA_BUNDLE`` trusts that CA;
failed with a reason that says so when nothing does, or when the certificate names another
host; and the SSRF guard still judges, and the request still connects to, the address it
checked, while the certificate is verified against the URL's host name."""

from __future__ import annotations

import pytest
import trustme
from standardwebhooks.webhooks import Webhook

from offload import App, Retry
from offload import push as push_module
from offload.testing import run_until_idle
from tests.http.test_push import SECRET, Listener, Receiver

#: a name no resolver knows: a request can only reach the receiver through the address
#: the guard checked (see ``resolve``)
NAME = "push.test"


@pytest.fixture
def ca(tmp_path):
    ca = trustme.CA()
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    return ca, str(bundle)


def served_as(ca: trustme.CA, tmp_path, *names: str) -> str:
    """A PEM file with a key and a certificate for ``names`` signed by ``ca``."""
    path = tmp_path / f"server-{'-'.join(names)}.pem"
    ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def resolve(monkeypatch):
    """``push.test`` resolves to 127.0.0.1, through the guard: the real check still judges
    the address, and every address it returned is recorded."""
    real = push_module._checked_address
    checked: list[str] = []

    async def checked_address(host: str, allow: tuple) -> str:
        address = await real("127.0.0.1" if host == NAME else host, allow)
        checked.append(address)
        return address

    monkeypatch.setattr(push_module, "_checked_address", checked_address)
    return checked


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.setenv("OFFLOAD_PUSH_SECRET", SECRET)
    monkeypatch.setenv("OFFLOAD_PUSH_ALLOW", "127.0.0.0/8")
    monkeypatch.delenv("OFFLOAD_PUSH_SECRETS", raising=False)
    monkeypatch.delenv("OFFLOAD_PUSH_CA_BUNDLE", raising=False)
    a = App("tlsapp", broker=f"sqlite:///{tmp_path / 'b.db'}")
    a.queue("hooks", retry=Retry(limit=1, min_backoff=0.05, max_backoff=0.1))
    yield a
    a.close()


def test_delivered_over_tls_when_the_ca_is_trusted(app, ca, tmp_path, resolve, monkeypatch):
    authority, bundle = ca
    monkeypatch.setenv("OFFLOAD_PUSH_CA_BUNDLE", bundle)
    with Receiver(host="127.0.0.1", tls=served_as(authority, tmp_path, NAME)) as rx:
        url = f"https://{NAME}:{rx.port}/hooks/paid"
        app.push("hooks", url, body=b'{"order": 7}', headers={"Content-Type": "x/y"})
        run_until_idle(app, ["hooks"], timeout=30)
    (req,) = rx.requests
    assert req["path"] == "/hooks/paid" and req["body"] == b'{"order": 7}'
    assert req["headers"]["host"] == f"{NAME}:{rx.port}"
    Webhook(SECRET).verify(req["body"], req["headers"], json_parse=False)
    assert resolve == ["127.0.0.1"]
    assert app.stats("hooks").dead == 0


def test_an_untrusted_certificate_fails_with_a_reason_that_says_so(app, ca, tmp_path, resolve):
    authority, _ = ca  # OFFLOAD_PUSH_CA_BUNDLE unset: only the public roots
    with Receiver(host="127.0.0.1", tls=served_as(authority, tmp_path, NAME)) as rx:
        url = f"https://{NAME}:{rx.port}/h"
        app.push("hooks", url, body=b"x")
        run_until_idle(app, ["hooks"], timeout=30)
    assert rx.requests == []  # the handshake failed: no request was sent
    (dead,) = app.dead_letters("hooks")
    assert dead.attempts == 2, "retried by the queue's policy (limit=1), then dead"
    assert f"the TLS certificate of {NAME!r} is not trusted" in dead.error, dead.error
    assert "OFFLOAD_PUSH_CA_BUNDLE" in dead.error


def test_the_certificate_is_verified_against_the_url_host_not_the_address(
    app, ca, tmp_path, resolve, monkeypatch
):
    """The request connects to 127.0.0.1 (the checked address), but the certificate must
    name the URL's host: one issued for the address itself or another name is refused."""
    authority, bundle = ca
    monkeypatch.setenv("OFFLOAD_PUSH_CA_BUNDLE", bundle)
    with Receiver(host="127.0.0.1", tls=served_as(authority, tmp_path, "127.0.0.1")) as rx:
        app.push("hooks", f"https://{NAME}:{rx.port}/h", body=b"x")
        run_until_idle(app, ["hooks"], timeout=30)
    assert rx.requests == []
    (dead,) = app.dead_letters("hooks")
    assert "is not trusted" in dead.error and "mismatch" in dead.error.lower(), dead.error


def test_the_ssrf_guard_still_refuses_an_https_target(app, ca, resolve, monkeypatch):
    _, bundle = ca
    monkeypatch.setenv("OFFLOAD_PUSH_CA_BUNDLE", bundle)
    monkeypatch.setenv("OFFLOAD_PUSH_ALLOW", "")
    listener = Listener("127.0.0.1")
    try:
        for url in (f"https://{NAME}:{listener.port}/a", f"https://localhost:{listener.port}/b"):
            app.push("hooks", url, body=b"x")
        run_until_idle(app, ["hooks"], timeout=30)
        assert listener.connections == 0
    finally:
        listener.close()
    errors = [d.error for d in app.dead_letters("hooks")]
    assert len(errors) == 2 and all("SSRF guard" in e for e in errors), errors
    assert all(d.attempts == 1 for d in app.dead_letters("hooks")), "refused at once"


def test_an_unreadable_ca_bundle_dead_letters_at_once_naming_it(app, tmp_path, monkeypatch):
    bad = tmp_path / "not-a-bundle.pem"
    bad.write_text("not PEM")
    for path in (str(bad), str(tmp_path / "missing.pem")):
        monkeypatch.setenv("OFFLOAD_PUSH_CA_BUNDLE", path)
        app.push("hooks", "https://127.0.0.1:9/x", body=b"x")
        run_until_idle(app, ["hooks"], timeout=30)
    dead = app.dead_letters("hooks")
    assert len(dead) == 2
    for d in dead:
        assert d.attempts == 1 and "OFFLOAD_PUSH_CA_BUNDLE=" in d.error, d.error
