"""The engine a stage's SQL runs on: Spark, or DuckDB inside the Spark driver.

Splink runs on either backend (jobs.linkage.choose_engine picks one). The steps around it (its input,
stable profile ids, the rows resolve writes) are written once, as SQL in DuckDB's dialect over named
tables, and run on whichever engine holds Splink's tables; for Spark, sqlglot transpiles them, as Splink
itself does. On DuckDB, Delta tables are read as Arrow datasets (only the columns a query needs) and
results go to delta-rs as Arrow, so such a stage starts no Spark job at all.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import duckdb
import pandas as pd
import pyarrow as pa
import sqlglot
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from jobs import delta_io
from jobs.errors import IdresError
from jobs.scratch import ScratchDir

if TYPE_CHECKING:
    from splink.internals.database_api import DatabaseAPI

ENGINES = ("spark", "duckdb")  # Splink's names for the backends, which are also their SQL dialects
TABLE_PREFIX = "idres_"


def sql_string(value: str) -> str:
    """A SQL string literal (quotes doubled), for ids and versions the code puts into a query."""
    return "'" + value.replace("'", "''") + "'"


def sql_timestamp(at: datetime) -> str:
    """A SQL literal of an instant (a naive datetime is taken as UTC), typed as Delta's timestamp."""
    utc = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return f"TIMESTAMPTZ '{utc.isoformat(sep=' ')}'"


class SqlEngine(ABC):
    """Named tables on one engine, made and queried with SQL in DuckDB's dialect.

    Every table made here lives until close(): a Spark temp view (persisted when computed) or, on
    DuckDB, an Arrow table registered as a view.
    """

    name: ClassVar[str]  # one of ENGINES

    def __init__(self) -> None:
        self._splink_api: DatabaseAPI | None = None

    @abstractmethod
    def register(self, name: str, data: DataFrame | pa.Table) -> str:
        """Make rows from Spark or Arrow a table; returns its name."""

    def read_delta(self, name: str, path: Path | str, empty: pa.Schema | None = None) -> str:
        """The Delta table's current version as a table (read lazily), or an empty one of `empty` when there is
        no Delta table yet (without `empty`, a missing table is an error); returns its name."""
        if delta_io.table_exists(path):
            return self._read_existing_delta(name, path)
        if empty is None:
            raise IdresError(f"Delta table {Path(path).name} is missing at {path}")
        return self.register(name, empty.empty_table())

    @abstractmethod
    def _read_existing_delta(self, name: str, path: Path | str) -> str: ...

    @abstractmethod
    def create(self, name: str, sql: str) -> str:
        """Compute a query once into a table; returns its name."""

    @abstractmethod
    def rows(self, sql: str) -> list[dict[str, Any]]:
        """A small query's rows (counts, tallies)."""

    @abstractmethod
    def columns(self, table: str) -> list[str]:
        """A table's column names."""

    @abstractmethod
    def write_source(self, table: str) -> DataFrame | pa.Table:
        """The table as jobs.delta_io writes it: a Spark DataFrame, or an Arrow table."""

    @abstractmethod
    def _new_splink_api(self) -> DatabaseAPI: ...

    @abstractmethod
    def close(self) -> None:
        """Free what the tables hold (Spark's cache, DuckDB's database)."""

    @property
    def splink_api(self) -> DatabaseAPI:
        """Splink's database API over this engine's tables; one per engine, so every linker shares its cache."""
        if self._splink_api is None:
            self._splink_api = self._new_splink_api()
        return self._splink_api

    def count(self, table: str) -> int:
        return int(self.rows(f"SELECT count(*) AS n FROM {table}")[0]["n"])

    def to_arrow(self, table: str) -> pa.Table:
        """A table's rows as Arrow (tests and small results)."""
        source = self.write_source(table)
        return source if isinstance(source, pa.Table) else source.toArrow()


class SparkEngine(SqlEngine):
    name = "spark"

    def __init__(self, spark: SparkSession) -> None:
        super().__init__()
        self.spark = spark
        self._views: list[str] = []
        self._kept: list[DataFrame] = []

    def _view(self, name: str, df: DataFrame) -> str:
        table = TABLE_PREFIX + name
        df.createOrReplaceTempView(table)
        self._views.append(table)
        return table

    def register(self, name: str, data: DataFrame | pa.Table) -> str:
        return self._view(name, data if isinstance(data, DataFrame) else self.spark.createDataFrame(data))

    def _read_existing_delta(self, name: str, path: Path | str) -> str:
        return self._view(name, delta_io.read_delta(self.spark, path))

    def _query(self, sql: str) -> DataFrame:
        return self.spark.sql(sqlglot.transpile(sql, read="duckdb", write="spark")[0])

    def create(self, name: str, sql: str) -> str:
        df = self._query(sql).persist()
        self._kept.append(df)
        return self._view(name, df)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return [r.asDict() for r in self._query(sql).collect()]

    def columns(self, table: str) -> list[str]:
        return self.spark.table(table).columns

    def write_source(self, table: str) -> DataFrame:
        return self.spark.table(table)

    def _new_splink_api(self) -> DatabaseAPI:
        from splink.backends.spark import SparkAPI

        api = SparkAPI(spark_session=self.spark)
        self.spark.udf.register("jaro_winkler", jaro_winkler_as_duckdb)
        return api

    def close(self) -> None:
        for df in self._kept:
            df.unpersist()
        for view in self._views:
            self.spark.catalog.dropTempView(view)
        if self._splink_api is not None:
            drop_splink_checkpoints(self.spark)


SPLINK_TABLE_PREFIX = "__splink__"


def drop_splink_checkpoints(spark: SparkSession) -> list[str]:
    """Delete the tables Splink's Spark API wrote as Parquet into the checkpoint dir (its default way to break
    lineage): copies of the compared records and scored pairs, which would outlive an erasure in a configured,
    lasting spark.checkpoint.dir. Through Hadoop's file system, so shared storage is cleaned too; returns their
    names."""
    directory = spark.sparkContext.getCheckpointDir()
    if not directory:
        return []
    jvm = spark.sparkContext._jvm
    root = jvm.org.apache.hadoop.fs.Path(directory)
    fs = root.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    if not fs.exists(root):
        return []
    dropped = [s.getPath() for s in fs.listStatus(root) if s.getPath().getName().startswith(SPLINK_TABLE_PREFIX)]
    for path in dropped:
        fs.delete(path, True)
    return [path.getName() for path in dropped]


class DuckDBEngine(SqlEngine):
    name = "duckdb"

    def __init__(self) -> None:
        import duckdb

        super().__init__()
        self.con: duckdb.DuckDBPyConnection = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")  # TIMESTAMPTZ leaves as Arrow timestamp[us, UTC], as Delta holds it
        # What DuckDB spills beyond its memory (copies of records and pairs) goes to a folder of its own, removed on
        # close (or by the next job, if this one is killed), not to `.tmp` in whatever folder the job runs in.
        self.spill_dir = ScratchDir("duckdb")
        self.con.execute(f"SET temp_directory = {sql_string(self.spill_dir.name)}")
        self._held: dict[str, pa.Table] = {}

    def register(self, name: str, data: DataFrame | pa.Table) -> str:
        table = TABLE_PREFIX + name
        self._held[table] = data.toArrow() if isinstance(data, DataFrame) else data
        self.con.register(table, self._held[table])
        return table

    def _read_existing_delta(self, name: str, path: Path | str) -> str:
        table = TABLE_PREFIX + name
        self.con.register(table, delta_io.arrow_dataset(path))  # a view: queries read only the columns they use
        return table

    def create(self, name: str, sql: str) -> str:
        # Held as Arrow and registered, not copied into a DuckDB table: as fast to scan, a copy less to
        # make, and written to Delta as it is (write_source).
        return self.register(name, self.con.sql(sql).to_arrow_table())

    def rows(self, sql: str) -> list[dict[str, Any]]:
        return self.con.sql(sql).to_arrow_table().to_pylist()

    def columns(self, table: str) -> list[str]:
        return self.con.table(table).columns

    def write_source(self, table: str) -> pa.Table:
        return self._held[table] if table in self._held else self.con.table(table).to_arrow_table()

    def _new_splink_api(self) -> DatabaseAPI:
        from splink import DuckDBAPI

        return DuckDBAPI(connection=self.con)

    def close(self) -> None:
        self.con.close()
        self._held.clear()
        self.spill_dir.cleanup()


@contextmanager
def open_engine(spark: SparkSession, name: str) -> Iterator[SqlEngine]:
    """The engine `name` ("spark" or "duckdb") in a with-block whose end frees it.

    Splink's objects hold a DuckDB database in reference cycles, so without the close it would live until the
    cyclic garbage collector reaches them, often stages later. Take what the block needs out of it inside.
    """
    engine: SqlEngine = SparkEngine(spark) if name == "spark" else DuckDBEngine()
    try:
        yield engine
    finally:
        engine.close()


@F.pandas_udf(T.DoubleType())
def jaro_winkler_as_duckdb(left: pd.Series, right: pd.Series) -> pd.Series:
    """Jaro-Winkler similarity computed by DuckDB's own `jaro_winkler_similarity`, for Splink on Spark.

    Splink's Spark jar counts half-transpositions as a fraction (t = 3/2) where DuckDB takes the whole number
    (t = 1), so a pair like arina/iarina scores 0.844 on one engine and 0.878 on the other and lands on either
    side of a 0.85 level; and another implementation of DuckDB's formula (jellyfish) differs in the last bit
    (0.9199999999999999 where DuckDB has 0.92, on the other side of a 0.92 level). DuckDB itself, on each
    batch, gives the same model the same gamma levels, scores and clusters on both engines.
    """
    batch = pa.table({"l": pa.array(left, pa.string()), "r": pa.array(right, pa.string())})
    con = _scoring_duckdb()
    con.register("jaro_winkler_batch", batch)
    try:
        scores = con.sql("SELECT jaro_winkler_similarity(l, r) FROM jaro_winkler_batch").to_arrow_table()
    finally:
        con.unregister("jaro_winkler_batch")
    return scores.column(0).to_pandas().astype("float64")


@cache
def _scoring_duckdb() -> duckdb.DuckDBPyConnection:
    """One in-memory DuckDB per Python worker, for the scoring UDFs (the batches of a worker's tasks in turn)."""
    return duckdb.connect()
