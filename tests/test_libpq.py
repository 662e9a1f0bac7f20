"""The worker's libpq connection against a real PostgreSQL cluster: values of every type
the ledger uses go in as parameters and come back equal, failures are told apart (a bad
statement, a lost connection, a server that is not there), and a server whose DateStyle is
not ISO still gives correct times."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from jobfleet import libpq
from jobfleet.errors import UsageError
from jobfleet.worker_ledger import WorkerLedger

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def conn(pg_url: str) -> Iterator[libpq.Connection]:
    connection = libpq.Connection(pg_url, connect_timeout=5)
    yield connection
    connection.close()


def test_values_of_each_ledger_type_come_back_equal(conn: libpq.Connection) -> None:
    conn.execute(
        "CREATE TABLE t (id varchar(64) PRIMARY KEY, body text, n integer, big bigint, "
        "f double precision, ok boolean, at timestamp, tz timestamptz)"
    )
    values = (
        'it\'s "quoted"\n, ünïcode; DROP TABLE t; --',
        "x" * 10_000,
        -7,
        2**40,
        0.1 + 0.2,
        False,
        datetime(2026, 11, 23, 22, 30, 51, 120_000),
        datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    )
    inserted = conn.execute("INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", values)
    assert inserted.rowcount == 1 and inserted.fetchone() is None
    row = conn.execute("SELECT * FROM t WHERE id = $1", [values[0]]).fetchone()
    assert row is not None
    assert row[:7] == values[:7]
    assert row[7] == values[7] and row[7].utcoffset() is not None
    nulls = conn.execute(
        "INSERT INTO t (id, n, at) VALUES ($1, $2, $3) RETURNING n, at", ["b", None, None]
    )
    assert nulls.rows == [(None, None)]
    # One parameter used twice is one value; rowcount counts the rows changed.
    changed = conn.execute("UPDATE t SET n = $1, big = $1 WHERE n IS NULL OR n = $1", [3])
    assert changed.rowcount == 1
    assert conn.execute("UPDATE t SET n = 4 WHERE id = 'missing'").rowcount == 0
    assert conn.execute("SELECT count(*) FROM t").rows == [(2,)]


def test_a_bad_statement_is_an_error_and_the_connection_lives_on(conn: libpq.Connection) -> None:
    with pytest.raises(libpq.Error, match="does not exist") as caught:
        conn.execute("SELECT version FROM no_such_table")
    assert caught.value.sqlstate == "42P01"
    assert not isinstance(caught.value, libpq.OperationalError)
    with pytest.raises(TypeError, match="cannot send a list"):
        conn.execute("SELECT $1", [[1]])
    assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_lost_connection_is_operational_and_a_new_one_works(pg_url: str) -> None:
    victim = libpq.Connection(pg_url, connect_timeout=5)
    killer = libpq.Connection(pg_url, connect_timeout=5)
    try:
        (pid,) = victim.execute("SELECT pg_backend_pid()").rows[0]
        assert killer.execute("SELECT pg_terminate_backend($1)", [pid]).rows == [(True,)]
        with pytest.raises(libpq.OperationalError) as caught:
            victim.execute("SELECT 1")
        assert "\n" not in str(caught.value)
        victim.close()
        victim.close()  # twice is harmless
        with pytest.raises(libpq.OperationalError, match="closed"):
            victim.execute("SELECT 1")
        again = libpq.Connection(pg_url, connect_timeout=5)
        assert again.execute("SELECT 2").rows == [(2,)]
        again.close()
    finally:
        victim.close()
        killer.close()


def test_a_server_that_is_not_there_is_one_line_without_the_password() -> None:
    with pytest.raises(libpq.OperationalError) as caught:
        libpq.Connection("postgresql://jobs:s3cret-pw@127.0.0.1:1/ledger", connect_timeout=2)
    message = str(caught.value)
    assert "refused" in message or "failed" in message, message
    assert "\n" not in message and "s3cret-pw" not in message


def test_times_are_right_whatever_the_servers_datestyle(pg_url: str) -> None:
    german = libpq.Connection(pg_url + "?options=-c%20DateStyle%3DGerman", connect_timeout=5)
    try:
        at = datetime(2026, 3, 4, 5, 6, 7, 890_000)
        assert german.execute("SELECT $1::timestamp", [at]).rows == [(at,)]
        now = german.execute("SELECT now()").rows[0][0]
        assert abs(now - datetime.now(UTC)) < timedelta(minutes=5)
    finally:
        german.close()


def test_a_host_without_libpq_is_told_to_install_it(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(libpq, "LIBRARY", "libpq-not-installed.so.5")
    monkeypatch.setattr(libpq, "_lib", None)
    with pytest.raises(UsageError, match=r"needs libpq-not-installed\.so\.5: install libpq"):
        WorkerLedger(pg_url).ping()


def test_the_url_sets_the_connection_but_the_encoding_stays_utf8(pg_url: str) -> None:
    plain = libpq.Connection(pg_url, connect_timeout=5)
    named = libpq.Connection(
        pg_url + "?application_name=shop-batch&client_encoding=LATIN1", connect_timeout=5
    )
    try:
        assert plain.execute("SHOW application_name").rows == [("jobfleet-worker",)]
        assert named.execute("SHOW application_name").rows == [("shop-batch",)]
        assert named.execute("SHOW client_encoding").rows == [("UTF8",)]
        assert named.execute("SELECT $1::text", ["žluťoučký €"]).rows == [("žluťoučký €",)]
    finally:
        plain.close()
        named.close()
