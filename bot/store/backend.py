"""Where the store's rows live: one SQLite file (the default) or a PostgreSQL database (`DOMAINBOT_DB=postgresql://…`).

Store and Questions write one SQL that both dialects run: `?` placeholders, `INSERT … ON CONFLICT DO NOTHING`
for the UNIQUE event keys, `RETURNING id`, `IS NOT DISTINCT FROM` (SQLite >= 3.39). A backend opens the
connection, runs write transactions and answers the few schema questions the two spell differently.
Scrubbing and hashing happen in Store, before any backend sees a row.

The backends: `bot.store.sqlite_backend` and `bot.store.postgres`; `bot.store.store.open_backend` picks one.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

SQLITE = "sqlite"
POSTGRES = "postgresql"
BUSY_TIMEOUT_MS = 30_000
# postgres:// is libpq's alias; "+psycopg" is SQLAlchemy's spelling, accepted so one URL serves both.
_URL = re.compile(r"^(postgres|postgresql)(\+psycopg)?:/", re.IGNORECASE)

Params = tuple | list | dict


class StoreUnavailable(RuntimeError):
    """The database named by DOMAINBOT_DB cannot be opened (bad URL, server down, driver missing)."""


def is_postgres_url(location: str | Path) -> bool:
    return bool(_URL.match(str(location)))


def postgres_url(location: str | Path) -> str:
    """The URL as libpq wants it. `Path("postgresql://h/db")` reads "postgresql:/h/db" (a Path folds the double
    slash), so a URL that went through a Path gets its "//" back; the host-less "postgresql:///db" cannot be
    told apart after that fold and needs DOMAINBOT_DB kept as a string (bot/config.py)."""
    text = str(location)
    scheme, _, rest = text.partition(":")
    scheme = scheme.lower().removesuffix("+psycopg")
    if not rest.startswith("//"):
        rest = "/" + rest
    return f"{'postgresql' if scheme == 'postgres' else scheme}:{rest}"


class Backend(ABC):
    """One connection, used by one thread at a time (Store holds the lock)."""

    dialect: str
    location: str  # the SQLite path or the PostgreSQL URL (it may hold a password: never log it)
    native: Any  # sqlite_utils.Database, or the psycopg Connection
    # Appended to a SELECT whose rows this write transaction goes on to update ('' on SQLite, whose BEGIN IMMEDIATE
    # already keeps other writers out): wait for a row another transaction holds, or skip it.
    row_lock: str = ""
    row_lock_skip: str = ""

    @abstractmethod
    def execute(self, sql: str, params: Params = ()) -> Any:
        """Run one statement; returns a DB-API cursor (rowcount, fetchone() as a tuple)."""

    @abstractmethod
    def transaction(self) -> Any:
        """A context manager: one write transaction, committed on success, rolled back on any error."""

    @abstractmethod
    def relation_names(self, kind: str) -> list[str]:
        """Tables ("table") or views ("view") in the store's schema."""

    @abstractmethod
    def columns(self, table: str) -> list[str]: ...

    @abstractmethod
    def lock_schema(self) -> None:
        """Inside a write transaction: keep another process from migrating at the same time."""

    @abstractmethod
    def integrity_check(self) -> str:
        """"ok", or what is wrong."""

    @abstractmethod
    def close(self) -> None: ...

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description or ()]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def one(self, sql: str, params: Params = ()) -> dict[str, Any] | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def table_names(self) -> list[str]:
        return self.relation_names("table")

    def view_names(self) -> list[str]:
        return self.relation_names("view")

    def count(self, table: str) -> int:
        if table not in self.table_names():
            raise ValueError(f"no table {table!r}")
        return int(self.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
