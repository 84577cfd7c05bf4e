"""The event database: SQLite (stdlib, the default) or MySQL/MariaDB (PyMySQL).

rows.py      an event as rows (in the examining workers)
schema.py    the tables and views, version by version
target.py    what a ``--db`` URL and option file name
base.py      what both dialects share (transactions, migration, errors)
sqlite.py, mysql.py   one class per dialect
"""
from __future__ import annotations

from .base import Database, DatabaseError, SchemaError, TransientError, UnusableError
from .mysql import MysqlDatabase
from .schema import SCHEMA_VERSION
from .sqlite import SqliteDatabase
from .target import Target, parse_target, redact

__all__ = ["Database", "DatabaseError", "SchemaError", "TransientError", "UnusableError",
           "SCHEMA_VERSION", "Target", "open_database", "parse_target", "redact"]

DIALECTS: dict[str, type[Database]] = {"sqlite": SqliteDatabase, "mysql": MysqlDatabase}


def open_database(target: Target, connect_timeout: float = 5.0,
                  read_only: bool = False) -> Database:
    """The database ``target`` names (connected at its first use)."""
    return DIALECTS[target.kind](target, connect_timeout, read_only)
