"""The worker's PostgreSQL connection: libpq itself, through :mod:`ctypes`.

An idle worker's memory is the measure here (``bench/rss.py``, goal 1.2x a plain
``rq worker``). Importing psycopg costs a worker 9-11 MiB (its Python modules, and the
copies of libpq, OpenSSL and Kerberos that ``psycopg-binary`` bundles), more than that
whole budget. The system's libpq (Debian's ``libpq5``, which the release role installs)
costs about 3 MiB, and most of that is OpenSSL, which the worker has mapped already.
The worker runs a handful of fixed statements, so it needs very little of a driver:

* parameters travel in text format, typed much as psycopg types them (``int4`` or a
  wider integer, ``float8``, ``bool``, ``timestamp``; strings as ``unknown``, for the
  server to infer);
* results come back as text and are parsed by column type (integers, floats,
  booleans, timestamps; anything else is a string);
* each statement runs on its own (libpq's autocommit).

A connection is used by one thread at a time; ctypes releases the GIL during each call,
so the worker's other threads run while a statement waits. The CLI, the reaper and the
poller keep SQLAlchemy on psycopg (:mod:`jobfleet.ledger`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from datetime import datetime
from typing import Any

LIBRARY = "libpq.so.5"
"""The soname of libpq since PostgreSQL 8.0 (Debian package ``libpq5``)."""

TCP_USER_TIMEOUT_MS = 30_000
"""How long sent data may stay unacknowledged before libpq drops the connection."""

CONNECTION_OK = 0
PGRES_COMMAND_OK = 1
PGRES_TUPLES_OK = 2
PG_DIAG_SQLSTATE = ord("C")

# Type oids (pg_type).
_BOOL, _INT4, _INT8, _FLOAT8, _NUMERIC = 16, 23, 20, 701, 1700
_TIMESTAMP, _TIMESTAMPTZ = 1114, 1184
_INTS = frozenset({20, 21, 23, 26})  # int8, int2, int4, oid
_FLOATS = frozenset({700, 701, 1700})  # float4, float8, numeric


class Error(Exception):
    """A statement failed on a live connection; ``sqlstate`` is PostgreSQL's error code."""

    def __init__(self, message: str, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class OperationalError(Error):
    """The server cannot be reached, or the connection to it is gone."""


class MissingLibraryError(Exception):
    """libpq is not installed on this host."""


_lib: ctypes.CDLL | None = None


def _libpq() -> ctypes.CDLL:
    """libpq, loaded once, with the signatures used here."""
    global _lib
    if _lib is not None:
        return _lib
    try:
        lib = ctypes.CDLL(LIBRARY)
    except OSError as exc:
        raise MissingLibraryError(
            f"a PostgreSQL ledger needs {LIBRARY}: install libpq (Debian: apt install libpq5)"
        ) from exc
    ptr, text, num = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
    signatures: dict[str, tuple[Any, list[Any]]] = {
        "PQconnectdbParams": (ptr, [ctypes.POINTER(text), ctypes.POINTER(text), num]),
        "PQstatus": (num, [ptr]),
        "PQerrorMessage": (text, [ptr]),
        "PQparameterStatus": (text, [ptr, text]),
        "PQfinish": (None, [ptr]),
        "PQexecParams": (
            ptr,
            [ptr, text, num, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(text), ptr, ptr, num],
        ),
        "PQresultStatus": (num, [ptr]),
        "PQresultErrorMessage": (text, [ptr]),
        "PQresultErrorField": (text, [ptr, num]),
        "PQcmdTuples": (text, [ptr]),
        "PQntuples": (num, [ptr]),
        "PQnfields": (num, [ptr]),
        "PQftype": (ctypes.c_uint, [ptr, num]),
        "PQgetvalue": (text, [ptr, num, num]),
        "PQgetisnull": (num, [ptr, num, num]),
        "PQclear": (None, [ptr]),
    }
    for name, (restype, argtypes) in signatures.items():
        function = getattr(lib, name)
        function.restype, function.argtypes = restype, argtypes
    _lib = lib
    return lib


def _text(raw: bytes | None) -> str:
    """libpq's message as one stripped line (libpq ends messages with a newline)."""
    return " ".join((raw or b"").decode("utf-8", "replace").split())


def _param(value: Any) -> tuple[int, bytes | None]:
    """(type oid, text) of one parameter; ``None`` is SQL NULL."""
    if value is None:
        return 0, None
    if isinstance(value, bool):
        return _BOOL, b"t" if value else b"f"
    if isinstance(value, int):  # the smallest type that holds it, for function calls
        oid = _INT4 if abs(value) < 2**31 else _INT8 if abs(value) < 2**63 else _NUMERIC
        return oid, str(value).encode()
    if isinstance(value, float):
        return _FLOAT8, repr(value).encode()
    if isinstance(value, datetime):
        oid = _TIMESTAMP if value.tzinfo is None else _TIMESTAMPTZ
        return oid, value.isoformat(sep=" ").encode()
    if isinstance(value, str):
        return 0, value.encode()
    raise TypeError(f"cannot send a {type(value).__name__} to PostgreSQL")


def _value(oid: int, raw: bytes) -> Any:
    """A column's text as the Python value of its type."""
    if oid in _INTS:
        return int(raw)
    if oid in _FLOATS:
        return float(raw)
    if oid == _BOOL:
        return raw == b"t"
    if oid in (_TIMESTAMP, _TIMESTAMPTZ):
        return datetime.fromisoformat(raw.decode())
    return raw.decode()


class Result:
    """What one statement returned: ``rowcount`` and its rows."""

    def __init__(self, rowcount: int, rows: list[tuple[Any, ...]]) -> None:
        self.rowcount = rowcount
        self.rows = rows

    def fetchone(self) -> tuple[Any, ...] | None:
        return self.rows[0] if self.rows else None


class Connection:
    """One libpq connection, from a ``postgresql://`` URI (or a ``key=value`` string)."""

    def __init__(self, conninfo: str, connect_timeout: int) -> None:
        lib = _libpq()
        settings = {  # defaults: the URL's own settings, expanded from dbname, win
            "connect_timeout": str(connect_timeout),
            "fallback_application_name": "jobfleet-worker",
            # A server gone silent (no reply, no reset) fails a statement after 30 s
            # instead of blocking the worker for the kernel's retransmission time.
            "tcp_user_timeout": str(TCP_USER_TIMEOUT_MS),
            "keepalives_idle": "30",
            "dbname": conninfo,
            "client_encoding": "UTF8",  # after dbname: always, as values are decoded so
        }
        keys = (ctypes.c_char_p * (len(settings) + 1))(*(k.encode() for k in settings), None)
        values = (ctypes.c_char_p * (len(settings) + 1))(
            *(v.encode() for v in settings.values()), None
        )
        self._conn: int | None = lib.PQconnectdbParams(keys, values, 1)
        if not self._conn:
            raise OperationalError("libpq could not allocate a connection")
        if lib.PQstatus(self._conn) != CONNECTION_OK:
            message = _text(lib.PQerrorMessage(self._conn))
            self.close()
            raise OperationalError(message or "connection failed")
        style = lib.PQparameterStatus(self._conn, b"DateStyle") or b""
        if not style.startswith(b"ISO"):  # timestamps are parsed as ISO 8601
            self.execute("SET DateStyle TO ISO")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Result:
        """Run one statement with ``$1``... parameters; raise :class:`Error` if it fails."""
        if not self._conn:
            raise OperationalError("the connection is closed")
        lib = _libpq()
        typed = [_param(value) for value in params]
        count = len(typed)
        oids = (ctypes.c_uint * count)(*(oid for oid, _ in typed))
        texts = (ctypes.c_char_p * count)(*(text for _, text in typed))
        res = lib.PQexecParams(self._conn, sql.encode(), count, oids, texts, None, None, 0)
        try:
            status = lib.PQresultStatus(res) if res else -1
            if status not in (PGRES_COMMAND_OK, PGRES_TUPLES_OK):
                raise self._error(res)
            rows = []
            if status == PGRES_TUPLES_OK:
                fields = range(lib.PQnfields(res))
                types = [lib.PQftype(res, col) for col in fields]
                for row in range(lib.PQntuples(res)):
                    rows.append(
                        tuple(
                            None
                            if lib.PQgetisnull(res, row, col)
                            else _value(types[col], lib.PQgetvalue(res, row, col))
                            for col in fields
                        )
                    )
            changed = lib.PQcmdTuples(res)
            return Result(int(changed) if changed else -1, rows)
        finally:
            if res:
                lib.PQclear(res)

    def _error(self, res: int | None) -> Error:
        """The error of a failed statement: operational when the connection is gone."""
        lib = _libpq()
        if res:
            message = _text(lib.PQresultErrorMessage(res))
            raw_state = lib.PQresultErrorField(res, PG_DIAG_SQLSTATE)
            sqlstate = raw_state.decode() if raw_state else None
        else:
            message, sqlstate = _text(lib.PQerrorMessage(self._conn)), None
        lost = lib.PQstatus(self._conn) != CONNECTION_OK
        if lost or (sqlstate or "").startswith(("08", "57P")):  # connection, shutdown
            return OperationalError(message or "connection lost", sqlstate)
        return Error(message or "statement failed", sqlstate)

    def close(self) -> None:
        """Close the connection (a second close does nothing)."""
        conn, self._conn = self._conn, None
        if conn:
            _libpq().PQfinish(conn)
