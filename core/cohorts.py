"""Cohorts: SQL ``WHERE`` expressions over a read-only DuckDB copy of the store's metadata.

A cohort filter is **parsed, not wrapped**. The text goes into
``SELECT * FROM meta WHERE (<text>)`` and DuckDB's own parser (``json_serialize_sql``)
returns the tree, which must be exactly that query: one SELECT over the table ``meta``
with no ORDER BY, LIMIT, GROUP BY, set operation (UNION ...), common table expression or
sample, and a ``WHERE`` clause made only of column references, constants, operators,
casts, CASE and lambdas, and calls to DuckDB's scalar functions. Subqueries, table
functions, aggregates, window functions and parameters are refused before anything runs.

The connection has file access disabled, Python replacement scans off (so no query can
read a pandas frame by its variable name) and its configuration locked. Every query runs
on a cursor of its own, so concurrent sessions never share connection state.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from core.errors import BiasLensError

MAX_FILTER_CHARS = 4_000
# Expression node classes a filter may contain (DuckDB's parse-tree names).
_ALLOWED_CLASSES = frozenset(
    {"COLUMN_REF", "CONSTANT", "COMPARISON", "CONJUNCTION", "OPERATOR", "FUNCTION", "CAST",
     "CASE", "BETWEEN", "COLLATE", "LAMBDA", "TYPE"}
)
# Scalar functions that reveal the server's settings or environment, or only stall it.
_DENIED_FUNCTIONS = frozenset({"current_setting", "getenv", "current_database", "current_schema", "sleep_ms"})
QUERY_SECONDS = 10.0  # a filter still running after this is interrupted (one visitor must not hold a thread)
# The only shape of query the wrapper may parse to (every key but the WHERE clause).
_SELECT_SHAPE = {
    "type": "SELECT_NODE",
    "modifiers": [],
    "cte_map": {"map": []},
    "group_expressions": [],
    "group_sets": [],
    "aggregate_handling": "STANDARD_HANDLING",
    "having": None,
    "sample": None,
    "qualify": None,
}


class CohortError(BiasLensError):
    """A cohort expression that is not a single filter, or that DuckDB rejects (its own message)."""


class CohortView:
    """A read-only, in-memory DuckDB table ``meta`` holding one store's metadata.

    Thread-safe: every query opens its own cursor on the shared in-memory database.
    """

    def __init__(self, meta: pd.DataFrame) -> None:
        self.columns = list(meta.columns)
        self._con = duckdb.connect(":memory:")
        self._con.register("meta_source", meta)
        self._con.execute("CREATE TABLE meta AS SELECT * FROM meta_source")
        self._con.unregister("meta_source")
        self._scalar_functions = frozenset(
            name
            for (name,) in self._con.execute(
                "SELECT DISTINCT function_name FROM duckdb_functions() "
                "WHERE function_type IN ('scalar', 'macro')"
            ).fetchall()
        ) - _DENIED_FUNCTIONS
        self._con.execute("SET GLOBAL python_enable_replacements = false")
        self._con.execute("SET GLOBAL enable_external_access = false")
        self._con.execute("SET GLOBAL lock_configuration = true")

    def check(self, where: str) -> str:
        """The filter text, stripped, if it is a single boolean filter; else CohortError."""
        expression = where.strip().rstrip(";").strip()
        if not expression or all(kind == duckdb.token_type.comment for _, kind in duckdb.tokenize(expression)):
            raise CohortError("Type a filter, e.g. label = 'Sneaker' AND tint = 'red'.")
        if len(expression) > MAX_FILTER_CHARS:
            raise CohortError(f"The filter is longer than {MAX_FILTER_CHARS:,} characters.")
        if "\x00" in expression:
            raise CohortError("The filter contains a NUL character.")
        tree = self._parse(_wrap(expression, "*"))
        statements = tree.get("statements") or []
        if len(statements) != 1:
            raise CohortError("Only one filter expression is allowed, not several statements.")
        node = statements[0].get("node", {})
        if node.get("type") == "SET_OPERATION_NODE":
            raise CohortError("UNION, EXCEPT and INTERSECT are not allowed: type only a filter.")
        shape = {key: node.get(key) for key in _SELECT_SHAPE}
        if shape != _SELECT_SHAPE or not _is_plain_star(node.get("select_list")) or not _is_meta(
            node.get("from_table")
        ):
            raise CohortError(
                "Only a filter expression is allowed (what follows WHERE): no ORDER BY, LIMIT, "
                "GROUP BY, WITH or closing parenthesis that ends the filter early."
            )
        where_clause = node.get("where_clause")
        if where_clause is None or _is_empty_parentheses(where_clause):
            raise CohortError("Type a filter expression, e.g. correct = false.")
        self._check_expression(node["where_clause"])
        return expression

    def _parse(self, sql: str) -> dict[str, Any]:
        with self._cursor(timed=False) as cur:  # parsing runs nothing: no time limit needed
            try:
                (text,) = cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
            except duckdb.Error as exc:
                raise CohortError(str(exc)) from None
        try:
            tree = json.loads(text)
        except RecursionError:
            raise CohortError("The filter is nested too deeply: simplify it.") from None
        except (TypeError, ValueError):
            raise CohortError("DuckDB could not parse the filter.") from None
        if tree.get("error"):
            message = tree.get("error_message", "syntax error")
            raise CohortError(f"Parser error: {message}. Check quotes and parentheses.")
        return tree

    def _check_expression(self, root: dict[str, Any]) -> None:
        """Walk the WHERE tree (iteratively: filters can nest deeply) and refuse what is not a filter."""
        for node in _expression_nodes(root):
            kind = node.get("class")
            if kind == "SUBQUERY":
                raise CohortError("Subqueries (SELECT inside the filter, EXISTS, IN (SELECT ...)) are not allowed.")
            if kind == "WINDOW":
                raise CohortError("Window functions (OVER ...) are not allowed in a filter.")
            if kind == "PARAMETER":
                raise CohortError("Parameters (?, $1) are not allowed: write the values in the filter.")
            if kind not in _ALLOWED_CLASSES:
                raise CohortError(f"'{node.get('type', kind)}' is not allowed in a filter.")
            if kind == "FUNCTION":
                name = str(node.get("function_name", ""))
                if node.get("schema") or node.get("catalog"):
                    raise CohortError(f"Qualified function names ('{name}') are not allowed.")
                if name.lower() not in self._scalar_functions:
                    raise CohortError(
                        f"'{name}' is not a scalar function a filter may call (table functions, "
                        "aggregates such as sum() and setting readers are refused)."
                    )
                order = node.get("order_bys") or {}
                if node.get("distinct") or node.get("filter") is not None or order.get("orders"):
                    raise CohortError(f"'{name}' uses aggregate options (DISTINCT, FILTER, ORDER BY).")

    def _cursor(self, timed: bool = True) -> _Cursor:
        return _Cursor(self._con, timed)

    def rows(self, where: str) -> list[int]:
        """Store row numbers of the images matching ``where``, ascending."""
        sql = _wrap(self.check(where), "row") + " ORDER BY row"
        with self._cursor() as cur:
            try:
                return [int(r[0]) for r in cur.execute(sql).fetchall()]
            except duckdb.Error as exc:
                raise _query_error(exc) from None

    def frame(self, where: str, limit: int | None = None) -> pd.DataFrame:
        """The matching metadata rows as a DataFrame."""
        sql = _wrap(self.check(where), "*") + " ORDER BY row"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        with self._cursor() as cur:
            try:
                return cur.execute(sql).df()
            except duckdb.Error as exc:
                raise _query_error(exc) from None


class _Cursor:
    """A cursor of its own for one query, closed afterwards; ``timed``: interrupted after
    QUERY_SECONDS."""

    def __init__(self, con: duckdb.DuckDBPyConnection, timed: bool = True) -> None:
        self._cur = con.cursor()
        self._timer = threading.Timer(QUERY_SECONDS, self._cur.interrupt) if timed else None
        if self._timer is not None:
            self._timer.daemon = True

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        if self._timer is not None:
            self._timer.start()
        return self._cur

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._cur.close()


def _query_error(exc: duckdb.Error) -> CohortError:
    """DuckDB's message, or what to do when the query ran out of time."""
    if isinstance(exc, duckdb.InterruptException):
        return CohortError(f"The filter was stopped after {QUERY_SECONDS:g} s: simplify it.")
    return CohortError(str(exc))


def _is_empty_parentheses(node: dict[str, Any]) -> bool:
    """``()``, which DuckDB reads as ``row()``, a tuple of nothing."""
    return node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() == "row" and not node.get("arguments")


def quote_identifier(name: str) -> str:
    """A column name as a DuckDB identifier: in double quotes, embedded double quotes doubled."""
    return '"' + str(name).replace('"', '""') + '"'


def sql_literal(value: object) -> str:
    """A Python value as a DuckDB constant: strings in single quotes (embedded quotes doubled),
    booleans as true/false, numbers as written (non-finite floats cast from text)."""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isfinite(number):
            return repr(number)
        return f"CAST('{number!r}' AS DOUBLE)"
    return "'" + str(value).replace("'", "''") + "'"


def equals_filter(pairs: dict[str, object]) -> str:
    """A cohort filter selecting the rows where every column equals its value, e.g.
    ``"label" = 'Sandal' AND "marker" = 'square'``; a missing value (None, NaN, NA) gives
    ``IS NULL``."""
    if not pairs:
        raise ValueError("equals_filter needs at least one column.")
    parts = []
    for column, value in pairs.items():
        missing = value is None or (not isinstance(value, str) and bool(np.ndim(value) == 0 and pd.isna(value)))
        parts.append(f"{quote_identifier(column)} IS NULL" if missing else f"{quote_identifier(column)} = {sql_literal(value)}")
    return " AND ".join(parts)


def _wrap(expression: str, select: str) -> str:
    # The newlines keep a trailing `--` comment from swallowing the closing parenthesis.
    return f"SELECT {select} FROM meta WHERE (\n{expression}\n)"


def _is_plain_star(select_list: Any) -> bool:
    if not isinstance(select_list, list) or len(select_list) != 1:
        return False
    star = select_list[0]
    return (
        star.get("class") == "STAR"
        and not star.get("columns")
        and not star.get("relation_name")
        and not star.get("exclude_list")
        and not star.get("replace_list")
        and not star.get("rename_list")
        and not star.get("qualified_exclude_list")
        and star.get("expr") is None
    )


def _is_meta(table: Any) -> bool:
    return (
        isinstance(table, dict)
        and table.get("type") == "BASE_TABLE"
        and table.get("table_name") == "meta"
        and not table.get("schema_name")
        and not table.get("catalog_name")
        and not table.get("alias")
        and table.get("sample") is None
        and table.get("at_clause") is None
        and not table.get("column_name_alias")
    )


def _expression_nodes(root: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every expression node below ``root`` (a node is a dict with a 'class' key)."""
    stack: list[Any] = [root]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "class" in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
