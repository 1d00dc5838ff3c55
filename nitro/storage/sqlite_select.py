"""One SELECT compiled once for sqlite3: its SQL text, how named values become its parameters, and how its
rows are decoded (by SQLAlchemy's own type processors), run on a sqlite3 connection without SQLAlchemy.

Why: on the loop's read connection (sqlite_read.py) SQLAlchemy's work per execution (cache key, compiled
parameters, cursor result and row objects, events) cost more CPU than SQLite's answer to a login's reads.
Only statements marked with `loop_compiled` where they are built once, at import (named `bindparam`s, no
values of their own), are compiled here: a compiled statement is kept for the life of the process, keyed by
the statement object, and a statement built per call (which would fill that map, or be compiled at every
call) keeps SQLAlchemy's path. An expanding `bindparam` (`IN (…)` of a list) gets one `?` per value at each
run, as SQLAlchemy renders it; an empty list is left to SQLAlchemy (`prepare`).
"""

from __future__ import annotations

import sqlite3
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Executable, Select, exc
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.compiler import SQLCompiler

_Processor = Callable[[Any], Any] | None
_S = TypeVar("_S", bound=Executable)

_MARKED: set[Executable] = set()  # see `loop_compiled`


def loop_compiled(statement: _S) -> _S:
    """Marks a SELECT built once (a module's constant) as one the loop's read connection runs compiled
    (LoopReader.rows); raises ValueError at import if it cannot be (see `CompiledSelect.of`)."""
    if CompiledSelect.of(statement, sqlite.dialect()) is None:
        raise ValueError(f"not a SELECT with named parameters only: {statement}")
    _MARKED.add(statement)
    return statement


def is_loop_compiled(statement: Executable) -> bool:
    return statement in _MARKED


@dataclass(frozen=True, slots=True)
class CompiledSelect:
    """A SELECT's SQL text (qmark), its parameters' names and bind processors, and its row shape."""

    sql: str
    names: tuple[str, ...]  # of the bind parameters, in the order of the `?`s (or of their lists)
    binds: tuple[_Processor, ...]
    expanding: frozenset[str]  # names whose value is a list, each item a `?` of `__[POSTCOMPILE_name]`
    make_row: Callable[[Sequence[Any]], Any]  # a named tuple: row.column and row[index], as a Row
    results: tuple[
        tuple[int, Callable[[Any], Any]], ...
    ]  # (position, processor) of the columns that have one

    @classmethod
    def of(cls, statement: Executable, dialect: Dialect) -> CompiledSelect | None:
        """The statement compiled for `dialect` (sqlite, qmark), or None if it cannot be (see above)."""
        if not isinstance(statement, Select) or dialect.paramstyle != "qmark":
            return None
        compiled = statement.compile(dialect=dialect)
        if not isinstance(compiled, SQLCompiler) or compiled.positiontup is None:
            return None
        if compiled.literal_execute_params or not all(
            bind.expanding for bind in compiled.post_compile_params
        ):
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
        expanding = frozenset(bind.key for bind in compiled.post_compile_params)
        return cls(
            compiled.string,
            names,
            binds,
            expanding,
            row._make,
            tuple((index, process) for index, process in enumerate(processors) if process is not None),
        )

    def prepare(self, values: Mapping[str, Any] | None) -> tuple[str, list[Any]] | None:
        """The SQL text and parameters for these values; None for an empty expanding list."""
        given = values or {}
        missing = [name for name in self.names if name not in given]
        if missing:
            raise exc.ArgumentError(f"no value for {', '.join(missing)}")
        sql = self.sql
        parameters: list[Any] = []
        for name, process in zip(self.names, self.binds, strict=True):
            value = given[name]
            if name in self.expanding:
                if not value:
                    return None  # SQLAlchemy renders an always-false IN of its own for it
                sql = sql.replace(f"__[POSTCOMPILE_{name}]", ", ".join("?" * len(value)), 1)
                parameters.extend(value if process is None else map(process, value))
            else:
                parameters.append(value if process is None else process(value))
        return sql, parameters

    def rows(self, connection: sqlite3.Connection, sql: str, parameters: Sequence[Any]) -> list[Any]:
        """All the rows of `prepare`'s statement, fetched to the end (so the statement is reset and holds no
        read snapshot), decoded as SQLAlchemy would."""
        fetched = connection.execute(sql, parameters).fetchall()
        make = self.make_row
        processors = self.results
        if not processors:
            return [make(row) for row in fetched]
        decoded = []
        for row in fetched:
            values = list(row)
            for index, process in processors:
                values[index] = process(values[index])
            decoded.append(make(values))
        return decoded
