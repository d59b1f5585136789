"""Decides how the hot paths run one statement for many rows: compiled once, each row bound
straight into the driver's parameters.

``conn.execute(statement, rows)`` builds each row's parameters through SQLAlchemy's compiled
statement (a dictionary of every bind, a processor looked up per value): a few microseconds a
value, which under a stream of launches costs the writers more than the database's own work on
the rows. :func:`execute_many` compiles a statement once per dialect and set of row keys, exactly
as ``execute`` would, and binds each row with the same type processors (UTC datetimes, JSON,
booleans); the statement's own values and the columns' Python-side defaults fill the binds that
the rows leave out, so what is stored is what ``execute`` stores. A callable default (``utcnow``)
is called once per call here, for all its rows, where ``execute`` calls it per row. The driver's
``executemany`` then runs the statement, through the connection, so its events and transaction
are the usual ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import ColumnDefault, Table, insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import Insert, Update

_Processor = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Plan:
    sql: str
    names: tuple[str, ...]  # the binds, in the statement's order
    keys: tuple[str, ...]  # the row keys, in the order ``at`` gives their binds' positions
    at: tuple[int, ...]
    processors: tuple[_Processor | None, ...]  # one per row key
    fixed: tuple[Any, ...]  # the statement's own values and the defaults (None: from the row)
    defaults: tuple[tuple[int, Callable[[Any], Any]], ...]  # positions of callable defaults
    positional: bool

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        base = list(self.fixed)
        for i, call in self.defaults:
            base[i] = call(None)
        out: list[Any] = []
        keys, at, processors = self.keys, self.at, self.processors
        for row in rows:
            values = base.copy()
            for key, i, process in zip(keys, at, processors, strict=True):
                value = row[key]
                values[i] = value if process is None else process(value)
            out.append(
                tuple(values) if self.positional else dict(zip(self.names, values, strict=True))
            )
        return out


#: plans kept at most (statements are module constants, so far fewer in practice)
MAX_PLANS: Final = 256
# (id of the statement, dialect name, row keys) -> (the statement, kept alive so its id stays
# its own, and its plan)
_PLANS: dict[tuple[int, str, tuple[str, ...]], tuple[Insert | Update, _Plan]] = {}
_INSERTS: dict[str, Insert] = {}


def _processor(type_: Any, dialect: Dialect) -> _Processor | None:
    found: _Processor | None = type_.dialect_impl(dialect).bind_processor(dialect)
    return found


def _plan(stmt: Insert | Update, dialect: Dialect, keys: tuple[str, ...]) -> _Plan:
    compiled = stmt.compile(dialect=dialect, column_keys=list(keys), for_executemany=True)
    names = tuple(compiled.positiontup or dict.fromkeys(compiled.bind_names.values()))
    prefetch = {c.key: c for c in [*compiled.insert_prefetch, *compiled.update_prefetch]}
    is_insert = isinstance(stmt, Insert)
    fixed: list[Any] = []
    defaults: list[tuple[int, Callable[[Any], Any]]] = []
    row_at: dict[str, int] = {}
    processors: dict[str, _Processor | None] = {}
    for i, name in enumerate(names):
        bind = compiled.binds[name]
        process = _processor(bind.type, dialect)
        if name in keys:
            row_at[name] = i
            processors[name] = process
            fixed.append(None)
            continue
        column = prefetch.get(name)
        if column is None:
            value = bind.effective_value
        else:
            default = column.default if is_insert else column.onupdate
            if not isinstance(default, ColumnDefault) or default.is_clause_element:
                raise ValueError(f"{column}: only scalar and callable defaults are bound here")
            if default.is_callable:
                call = default.arg
                defaults.append((i, call if process is None else _then(call, process)))
                fixed.append(None)
                continue
            value = default.arg
        fixed.append(value if process is None else process(value))
    missing = set(keys) - set(row_at)
    if missing:
        raise ValueError(f"the statement has no place for {sorted(missing)}")
    return _Plan(
        sql=str(compiled),
        names=names,
        keys=keys,
        at=tuple(row_at[k] for k in keys),
        processors=tuple(processors[k] for k in keys),
        fixed=tuple(fixed),
        defaults=tuple(defaults),
        positional=bool(compiled.positional),
    )


def _then(call: Callable[[Any], Any], process: _Processor) -> Callable[[Any], Any]:
    def made(context: Any) -> Any:
        return process(call(context))

    return made


async def execute_many(
    conn: AsyncConnection, stmt: Insert | Update, rows: Sequence[Mapping[str, Any]]
) -> None:
    """``conn.execute(stmt, rows)`` for rows that all have the same keys (nothing if none).

    ``stmt`` should be built once (a module constant): plans are kept per statement.
    """
    if not rows:
        return
    keys = tuple(rows[0])
    cache_key = (id(stmt), conn.dialect.name, keys)
    found = _PLANS.get(cache_key)
    if found is None or found[0] is not stmt:
        if len(_PLANS) >= MAX_PLANS:  # statements built per call, against the advice: bounded
            _PLANS.clear()
        found = _PLANS[cache_key] = (stmt, _plan(stmt, conn.dialect, keys))
    plan = found[1]
    await conn.exec_driver_sql(plan.sql, plan.parameters(rows))


async def insert_rows(
    conn: AsyncConnection, table: Table | Any, rows: Sequence[Mapping[str, Any]]
) -> None:
    """Insert ``rows`` (all with the same keys) into ``table`` (a table or a mapped class)."""
    if not rows:
        return
    target: Table = getattr(table, "__table__", table)
    stmt = _INSERTS.get(target.name)
    if stmt is None:
        stmt = _INSERTS[target.name] = insert(target)
    await execute_many(conn, stmt, rows)
