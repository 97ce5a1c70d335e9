"""The PostgreSQL backend: one shared store for replicas on several hosts (psycopg 3).

Durability matches the SQLite store's: a write returns only after COMMIT, and COMMIT waits for the WAL flush
(`synchronous_commit` is forced back on for our sessions if a server or database default turned it off).
Concurrency: every write is one explicit transaction (READ COMMITTED); the UNIQUE event keys are inserted with
`ON CONFLICT DO NOTHING`, which waits for a concurrent insert of the same key and then sees it. A question
about to be claimed or taken over is read `FOR UPDATE` (its latest version, after any transaction holding it);
the sweeper reads `FOR UPDATE SKIP LOCKED`, so two hosts' sweepers never wait for or take the same question. `lock_timeout` plays SQLite's `busy_timeout`. Migrations run under an advisory lock.

The connection is autocommit between transactions (a read never leaves a transaction open on the server) and
is re-opened when the server dropped it (restart, failover): before a transaction begins, or for a read.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from bot.store.backend import BUSY_TIMEOUT_MS, POSTGRES, Backend, Params, StoreUnavailable

try:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
except ModuleNotFoundError:  # pragma: no cover - exercised only where psycopg is missing
    psycopg = None

MIGRATION_LOCK = 0x646F6D61696E626F  # "domainbot": the advisory lock key of schema migrations
_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?|%")
_PASSWORD = re.compile(r"(://[^:/@?#]*:)[^@/?#]*@|(password=)[^&\s]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    return _PASSWORD.sub(lambda m: f"{m.group(1)}***@" if m.group(1) else f"{m.group(2)}***", url)


@lru_cache(maxsize=256)
def to_pyformat(sql: str) -> str:
    """`?` placeholders to psycopg's `%s`, and every literal `%` doubled (psycopg reads `%` even inside quotes)."""

    def sub(m: re.Match[str]) -> str:
        token = m.group(0)
        return "%s" if token == "?" else token.replace("%", "%%")

    return _TOKEN.sub(sub, sql)


class PostgresBackend(Backend):
    dialect = POSTGRES
    row_lock = " FOR UPDATE"
    row_lock_skip = " FOR UPDATE SKIP LOCKED"

    def __init__(self, url: str) -> None:
        if psycopg is None:
            raise StoreUnavailable(
                "DOMAINBOT_DB is a PostgreSQL URL, but psycopg is not installed: pip install 'psycopg[binary]>=3.1,<4'"
            )
        self.location = url
        self._in_transaction = False
        self.conn = self._connect()

    @property
    def native(self) -> Any:
        return self.conn

    def _connect(self) -> Any:
        safe = redact(self.location)
        try:
            given = conninfo_to_dict(self.location)
        except psycopg.ProgrammingError as exc:
            raise StoreUnavailable(f"DOMAINBOT_DB is not a valid PostgreSQL URL ({safe}): {redact(str(exc))}") from exc
        extra = {k: v for k, v in (("connect_timeout", 10), ("application_name", "domainbot")) if k not in given}
        try:
            conn = psycopg.connect(self.location, autocommit=True, **extra)
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to PostgreSQL at {safe}: {redact(str(exc)).strip()}") from exc
        conn.execute(f"SET lock_timeout = {BUSY_TIMEOUT_MS}")  # milliseconds, like SQLite's busy_timeout
        if conn.execute("SHOW synchronous_commit").fetchone()[0] == "off":
            # 'off' acknowledges a commit before its WAL is flushed: a server crash could lose it.
            conn.execute("SET synchronous_commit = on")
        return conn

    def _usable(self) -> Any:
        if self.conn.closed or self.conn.broken:
            self.conn = self._connect()
        return self.conn

    def execute(self, sql: str, params: Params = ()) -> Any:
        if isinstance(params, dict):
            raise ValueError("the store's SQL takes ? placeholders; named parameters are not supported")
        query = to_pyformat(sql)
        if self._in_transaction:
            return self.conn.execute(query, tuple(params))
        try:
            return self._usable().execute(query, tuple(params))
        except psycopg.OperationalError:
            # A read on a connection the server dropped (restart, failover): safe to run again on a new one.
            if not self.conn.broken or not sql.lstrip()[:6].upper() == "SELECT":
                raise
            return self._usable().execute(query, tuple(params))

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        cur = self.execute(sql, params)
        names = [c.name for c in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[PostgresBackend]:
        try:
            self._usable().execute("BEGIN")
        except psycopg.OperationalError:
            if not self.conn.broken:
                raise
            self._usable().execute("BEGIN")  # nothing ran yet: begin again on a fresh connection
        self._in_transaction = True
        try:
            yield self
        except BaseException:
            self._in_transaction = False
            if not self.conn.broken:
                self.conn.execute("ROLLBACK")
            raise
        self._in_transaction = False
        self.conn.execute("COMMIT")  # returns once the WAL is flushed; a failure here is no acknowledgement

    def relation_names(self, kind: str) -> list[str]:
        rows = self.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
            " AND table_type = ? ORDER BY table_name",
            ("VIEW" if kind == "view" else "BASE TABLE",),
        ).fetchall()
        return [r[0] for r in rows]

    def columns(self, table: str) -> list[str]:
        rows = self.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema()"
            " AND table_name = ? ORDER BY ordinal_position",
            (table,),
        ).fetchall()
        return [r[0] for r in rows]

    def lock_schema(self) -> None:
        self.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK,))

    def integrity_check(self) -> str:
        """PostgreSQL recovers its own files from the WAL; what can be left broken is an index a failed build
        marked invalid (the UNIQUE event keys live in indexes), so that is what is checked here."""
        bad = self.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = current_schema() AND NOT (i.indisvalid AND i.indisready) ORDER BY 1"
        ).fetchall()
        return "ok" if not bad else "invalid indexes: " + ", ".join(r[0] for r in bad)

    def close(self) -> None:
        self.conn.close()
