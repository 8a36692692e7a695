"""Transactional enqueue through the public API: the task exists if and only if the
application's own transaction commits (PostgreSQL); other brokers refuse loudly."""

from __future__ import annotations

import pytest

from offload import App, Unsupported
from tests.conftest import POSTGRES_URL


def _app(url: str) -> App:
    app = App("tx", broker=url)
    app.queue("q")
    return app


def test_send_with_connection_joins_the_callers_transaction(broker_url, broker_kind):
    app = _app(broker_url)

    @app.task(queue="q", name="after_signup")
    def after_signup(user: int) -> None: ...

    if broker_kind != "postgres":
        with pytest.raises(Unsupported, match="cannot join your transaction"):
            after_signup.send_with(args=(1,), connection=object())
        assert app.stats("q").ready == 0
        app.close()
        return

    import psycopg

    with psycopg.connect(POSTGRES_URL) as conn:
        with conn.transaction() as tx:
            conn.execute("SELECT 1")  # the application's own writes would be here
            after_signup.send_with(args=(1,), connection=conn)
            assert app.stats("q").ready == 0  # invisible until commit
            raise psycopg.Rollback(tx)
        assert app.stats("q").ready == 0  # rolled back: no task
        with conn.transaction():
            h = after_signup.send_with(args=(2,), connection=conn)
        assert app.stats("q").ready == 1  # committed: the task exists
    assert app.delete_task("q", id=h.id)
    app.close()
