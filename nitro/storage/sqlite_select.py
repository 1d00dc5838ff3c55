"""One SELECT compiled once for sqlite3: its SQL text, how named values become its parameters, and how its
rows are decoded (by SQLAlchemy's own type processors), run on a sqlite3 connection without SQLAlchemy.

Why: on the loop's read connection (sqlite_read.py) SQLAlchemy's work per execution (cache key, compiled
parameters, cursor result and row objects, events) cost more CPU than SQLite's answer to a login's reads.
Only statements built once with named `bindparam`s and no values of their own are compiled here (`of`
returns None for the rest: literal values, expanding IN lists, duplicate column names), so a compiled
statement can be kept for the life of the process, keyed by the statement object.
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Executable, Select, exc
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

_Processor = Callable[[Any], Any] | None


@dataclass(frozen=True, slots=True)
class CompiledSelect:
    """A SELECT's SQL text (qmark), its parameters' names and bind processors, and its row shape."""

    sql: str
    names: tuple[str, ...]  # of the bind parameters, in the order of the `?`s
    binds: tuple[_Processor, ...]
    make_row: Callable[[Sequence[Any]], Any]  # a named tuple: row.column and row[index], as a Row
    results: tuple[_Processor, ...] | None  # None: every column comes back as sqlite3 gives it

    @classmethod
    def of(cls, statement: Executable, dialect: Dialect) -> CompiledSelect | None:
        """The statement compiled for `dialect` (sqlite, qmark), or None if it cannot be (see above)."""
        if not isinstance(statement, Select) or dialect.paramstyle != "qmark":
            return None
        compiled = statement.compile(dialect=dialect)
        if not isinstance(compiled, SQLCompiler) or compiled.positiontup is None:
            return None
        if compiled.literal_execute_params or compiled.post_compile_params:
            return None
        if not all(bind.required and bind.callable is None for bind in compiled.binds.values()):
            return None  # a value of the statement's own: not a statement built once
        names = tuple(compiled.positiontup)
        keys = [column.keyname for column in compiled._result_columns]
        if len(set(keys)) != len(keys) or not all(
            key.isidentifier() and not key.startswith("_") for key in keys
        ):
            return None
        binds = tuple(compiled.binds[name].type._cached_bind_processor(dialect) for name in names)
        processors = tuple(
            column.type._cached_result_processor(dialect, None) for column in compiled._result_columns
        )
        row = namedtuple("row", keys)  # type: ignore[misc]  # fields known only at run time
        return cls(
            compiled.string,
            names,
            binds,
            row._make,
            processors if any(processors) else None,
        )

    def parameters(self, values: Mapping[str, Any] | None) -> tuple[Any, ...]:
        given = values or {}
        missing = [name for name in self.names if name not in given]
        if missing:
            raise exc.ArgumentError(f"no value for {', '.join(missing)}")
        return tuple(
            given[name] if process is None else process(given[name])
            for name, process in zip(self.names, self.binds, strict=True)
        )

    def rows(self, connection: sqlite3.Connection, values: Mapping[str, Any] | None) -> list[Any]:
        """All the rows, fetched to the end (so the statement is reset and holds no read snapshot)."""
        fetched = connection.execute(self.sql, self.parameters(values)).fetchall()
        make = self.make_row
        processors = self.results
        if processors is None:
            return [make(row) for row in fetched]
        return [
            make(
                [
                    value if process is None else process(value)
                    for value, process in zip(row, processors, strict=True)
                ]
            )
            for row in fetched
        ]
