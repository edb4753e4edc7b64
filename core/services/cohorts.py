"""Cohorts: SQL ``WHERE`` expressions over a read-only DuckDB copy of the store's metadata.

A cohort filter is **parsed, not wrapped**. The text goes into
``SELECT * FROM meta WHERE (<text>)`` and DuckDB's own parser (``json_serialize_sql``)
returns the tree, which must be exactly that query: one SELECT over the table ``meta``
with no ORDER BY, LIMIT, GROUP BY, set operation (UNION ...), common table expression or
sample, and a ``WHERE`` clause made only of column references, constants, operators,
casts, CASE and lambdas, and calls to DuckDB's scalar functions. Subqueries, table
functions, aggregates, window functions and parameters are refused before anything runs.

A filter that passes runs in a **query process** of its own (at most ``WORKERS`` per view,
each answering one query at a time, started on the first query), never in the app's
process. One scalar call such as ``array_to_string(range(0, 80000000), ',')`` or
``repeat('x', 1e9)`` is a single DuckDB operation that never checks for an interrupt and
allocates outside DuckDB's ``memory_limit``; in the app's process it held 2.4 GB and ran
35 s past the time limit. In a query process it meets hard limits instead: an operating
system cap on the process's memory (``QUERY_MEMORY_MB`` above the loaded table), DuckDB's
own ``memory_limit`` with no temporary directory to spill to, ``QUERY_THREADS`` threads, and
``QUERY_SECONDS`` of wall time, after which the process is killed (and a fresh one started
for the next query). Its connection has file access disabled, Python replacement scans
off (so no query can read a pandas frame by its variable name) and its configuration
locked.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import re
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd

from core.errors import BiasLensError, ParameterError

MAX_FILTER_CHARS = 4_000
# Expression node classes a filter may contain (DuckDB's parse-tree names).
_ALLOWED_CLASSES = frozenset(
    {"COLUMN_REF", "CONSTANT", "COMPARISON", "CONJUNCTION", "OPERATOR", "FUNCTION", "CAST",
     "CASE", "BETWEEN", "COLLATE", "LAMBDA", "TYPE"}
)
# Scalar functions that reveal the server's settings or environment, or only stall it.
_DENIED_FUNCTIONS = frozenset({"current_setting", "getenv", "current_database", "current_schema", "sleep_ms"})
QUERY_SECONDS = 10.0  # a filter still running after this is stopped (its query process is killed)
QUERY_MEMORY_MB = 384  # memory a filter may use beyond the loaded table (operating system cap and DuckDB's limit)
QUERY_THREADS = 1  # DuckDB threads per query process
WORKERS = 2  # query processes per view: two visitors' filters run at once, a third waits for one
START_SECONDS = 120.0  # time a query process may take to start and load the table (not counted in QUERY_SECONDS)
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
    """A read-only DuckDB table ``meta`` holding one store's metadata, queried in query processes.

    Thread-safe: each query takes a query process of its own (waiting for one when all
    ``WORKERS`` are busy); parsing runs on a cursor of its own in this process.
    """

    def __init__(self, meta: pd.DataFrame) -> None:
        self.columns = list(meta.columns)
        self._meta = meta  # each new query process loads it
        self._con = duckdb.connect(":memory:", config={"threads": "1"})  # parses only: it holds no table
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
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(WORKERS)
        weakref.finalize(self, _stop_all, self._idle)

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
        cur = self._con.cursor()  # parsing runs nothing: it needs neither a time nor a memory limit
        try:
            (text,) = cur.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
        except duckdb.Error as exc:
            raise CohortError(str(exc)) from None
        finally:
            cur.close()
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

    def rows(self, where: str) -> list[int]:
        """Store row numbers of the images matching ``where``, ascending."""
        return self._run("rows", _wrap(self.check(where), "row") + " ORDER BY row")

    def frame(self, where: str, limit: int | None = None) -> pd.DataFrame:
        """The matching metadata rows as a DataFrame."""
        sql = _wrap(self.check(where), "*") + " ORDER BY row"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._run("frame", sql)

    def _run(self, kind: str, sql: str) -> Any:
        """The answer of a query process to a checked query (a free one, else a new one)."""
        with self._slots:
            with self._lock:
                worker = self._idle.pop() if self._idle else None
            if worker is None:
                worker = _Worker(self._meta)
            try:
                return worker.ask(kind, sql)
            finally:
                if worker.alive:  # one that ran out of time or died is stopped, not given back
                    with self._lock:
                        self._idle.append(worker)


class _Worker:
    """One query process (``_serve``) and the pipe to it."""

    def __init__(self, meta: pd.DataFrame) -> None:
        # A fresh interpreter, not multiprocessing: a fork of a threaded server could deadlock,
        # and "spawn" re-runs the caller's main script (a script without a __main__ guard).
        self._conn, child = multiprocessing.Pipe()
        root = str(Path(__file__).resolve().parents[2])
        code = "import sys; sys.path.insert(0, sys.argv[1]); from core.services.cohorts import _serve; _serve(*map(int, sys.argv[2:]))"
        self._process = subprocess.Popen(
            [sys.executable, "-c", code, root, str(child.fileno()), str(QUERY_MEMORY_MB)],
            pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        )
        child.close()
        try:
            self._conn.send(meta)
            ready = self._conn.recv() if self._conn.poll(START_SECONDS) else None
        except (EOFError, OSError):
            ready = None
        if ready != ("ready", None):
            self.stop()
            detail = f": {ready[1]}" if isinstance(ready, tuple) and ready[0] == "error" else ""
            raise CohortError(f"The filter could not run: the query process did not start{detail}. Try again.")

    @property
    def pid(self) -> int:
        return self._process.pid

    def ask(self, kind: str, sql: str) -> Any:
        """Send one query and wait at most QUERY_SECONDS for its answer; the process is
        killed when time runs out or when it died (it never answers again)."""
        seconds = QUERY_SECONDS
        try:
            self._conn.send((kind, sql))
            if not self._conn.poll(seconds):
                self.stop()
                raise CohortError(f"The filter was stopped after {seconds:g} s: simplify it.")
            status, value = self._conn.recv()
        except (EOFError, OSError):
            self.stop()
            raise CohortError(
                f"The filter stopped its query process (it may need more than {QUERY_MEMORY_MB} MB of memory): simplify it."
            ) from None
        if status == "error":
            raise CohortError(value)
        return value

    @property
    def alive(self) -> bool:
        return not self._conn.closed

    def stop(self) -> None:
        """Kill the process at once (a query in a DuckDB call cannot be interrupted) and reap it."""
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait(5)
        self._conn.close()


def _stop_all(workers: list[_Worker]) -> None:
    for worker in workers:
        worker.stop()
    workers.clear()


def _serve(fd: int, memory_mb: int) -> None:
    """A query process, talking over the socket ``fd``: load the table sent first, cap this
    process's memory, then answer ``(kind, sql)`` messages with ``("ok", rows or frame)`` or
    ``("error", message)``, until the app closes the socket."""
    conn = Connection(fd)
    try:
        meta = conn.recv()
        con = duckdb.connect(":memory:", config={"threads": str(QUERY_THREADS), "temp_directory": "",
                                                 "max_temp_directory_size": "0B"})
        con.register("meta_source", meta)
        con.execute("CREATE TABLE meta AS SELECT * FROM meta_source")
        con.unregister("meta_source")
        del meta
        (used,) = con.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchone()
        con.execute(f"SET memory_limit = '{int(used) // 2**20 + memory_mb}MB'")
        con.execute("SET python_enable_replacements = false")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        _cap_memory(memory_mb)
    except Exception as exc:  # reported to the app, which shows it as a CohortError
        conn.send(("error", str(exc).splitlines()[0][:200]))
        return
    conn.send(("ready", None))
    too_big = f"The filter needs more than {memory_mb} MB of memory: simplify it."
    while True:
        try:
            kind, sql = conn.recv()
        except (EOFError, OSError):
            return  # the app closed the pipe
        try:
            result = con.execute(sql)
            value = [int(r) for (r,) in result.fetchall()] if kind == "rows" else result.df()
            answer = ("ok", value)
        except (duckdb.OutOfMemoryException, MemoryError):
            answer = ("error", too_big)
        except duckdb.Error as exc:
            answer = ("error", str(exc))
        try:
            conn.send(answer)
        except MemoryError:
            conn.send(("error", too_big))


def _cap_memory(extra_mb: int) -> None:
    """Limit this process's data (heap and anonymous mappings, RLIMIT_DATA) to its size now
    plus ``extra_mb``: an allocation beyond fails instead of filling the machine. Linux only;
    elsewhere DuckDB's memory_limit and the time limit remain."""
    try:
        import resource

        status = Path("/proc/self/status").read_text()
    except (ImportError, OSError):
        return
    match = re.search(r"^VmData:\s+(\d+) kB", status, re.MULTILINE)
    if match:
        limit = (int(match.group(1)) // 1024 + extra_mb) * 2**20
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


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
        raise ParameterError("equals_filter needs at least one column: give a column and its value.")
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
