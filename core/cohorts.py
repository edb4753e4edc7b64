"""Cohorts: SQL ``WHERE`` expressions over a read-only DuckDB copy of the store's metadata.

The expression is wrapped as ``SELECT ... FROM meta WHERE (<expression>)`` and must parse
as exactly one SELECT statement; the connection has file access disabled and its
configuration locked, so a cohort can only filter the metadata, never read or write files.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from core.errors import BiasLensError


class CohortError(BiasLensError):
    """A cohort expression that DuckDB rejects (the message is DuckDB's own) or that is not a filter."""


class CohortView:
    """A read-only, in-memory DuckDB table ``meta`` holding one store's metadata."""

    def __init__(self, meta: pd.DataFrame) -> None:
        self.columns = list(meta.columns)
        self._con = duckdb.connect(":memory:")
        self._con.register("meta_source", meta)
        self._con.execute("CREATE TABLE meta AS SELECT * FROM meta_source")
        self._con.unregister("meta_source")
        self._con.execute("SET enable_external_access = false")
        self._con.execute("SET lock_configuration = true")

    def _checked_sql(self, where: str, select: str) -> str:
        expression = where.strip()
        if not expression:
            raise CohortError("Type a filter, e.g. label = 'Sneaker' AND tint = 'red'.")
        sql = f"SELECT {select} FROM meta WHERE ({expression})"
        try:
            statements = self._con.extract_statements(sql)
        except duckdb.Error as exc:
            raise CohortError(str(exc)) from None
        if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
            raise CohortError(
                "Only a filter expression is allowed (what follows WHERE), not other statements."
            )
        return sql

    def rows(self, where: str) -> list[int]:
        """Store row numbers of the images matching ``where``, ascending."""
        sql = self._checked_sql(where, "row") + " ORDER BY row"
        try:
            return [int(r[0]) for r in self._con.execute(sql).fetchall()]
        except duckdb.Error as exc:
            raise CohortError(str(exc)) from None

    def frame(self, where: str, limit: int | None = None) -> pd.DataFrame:
        """The matching metadata rows as a DataFrame."""
        sql = self._checked_sql(where, "*") + " ORDER BY row"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        try:
            return self._con.execute(sql).df()
        except duckdb.Error as exc:
            raise CohortError(str(exc)) from None
