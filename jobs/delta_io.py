"""All Delta Lake I/O, through delta-rs (`deltalake`), exchanging Arrow with Spark.

Spark here has no Delta jars (Maven Central is out of reach), so delta-rs commits and merges every
write, and Spark reads the Parquet files of the table's current (or a given) version. Rows a table
receives whole (a new table, an overwrite) are written as Parquet by Spark's executors into the table
and committed by delta-rs as they are.
A delta-spark backend for clusters that have the jars replaces this module only.

Reads avoid `DeltaTable.to_pyarrow_table()` / pyarrow datasets: with deltalake 1.6 they can abort
the interpreter at exit ("terminate called without an active exception", delta-rs#2184), which
would fail a spark-submit that had succeeded. delta-rs' own QueryBuilder does not.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, QueryBuilder, Schema, Transaction, write_deltalake
from deltalake.exceptions import DeltaError
from deltalake.schema import PrimitiveType
from deltalake.transaction import AddAction, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import to_arrow_schema

from jobs.errors import ColumnTypeChangeError, IdresError
from jobs.files import write_whole

if TYPE_CHECKING:
    from jobs.config import TablePaths

log = logging.getLogger("idres.delta_io")

SPILL_PREFIX = "_spill_"  # Spark's Parquet output on its way into a table (see _arrow_stream)
PURGE_MARKER_PREFIX = "_purging_"  # beside a table while purge_history has its log retention at none
# "true" while a stage's input is small (set by jobs.spark_session.size_stage_to_input): its writes then reach
# delta-rs as Arrow collected into the driver instead of Parquet spilled beside the table (see _arrow_stream).
COLLECT_WRITES_CONF = "spark.idres.delta.collectWrites"
ADDED_ROWS = "num_added_rows"  # delta-rs' operation metric of an append, and _commit_files' commit metadata
# Properties of every table this module creates. No column statistics: the log's file statistics would hold each
# file's smallest and largest values (names, emails, dates of birth), copies of personal data outside the data
# files that outlive them in the log. Row counts stay; data skipping is lost, which tables of this size do not need.
TABLE_PROPERTIES = {"delta.dataSkippingNumIndexedCols": "0"}
# The job of the commit that gives an existing table TABLE_PROPERTIES (apart from the writing job's own commits, which
# version_before_run, committed_in_run and run_commit_metrics read).
TABLE_PROPERTIES_JOB = "table_properties"
CLOCK_BEHIND_WARNING = timedelta(minutes=1)  # run_time: recorded times this far ahead of the clock are logged
# Type changes a merge carries without loss: delta-rs casts the source's values to the table's wider type.
LOSSLESS_CASTS = {
    ("byte", "short"),
    ("byte", "integer"),
    ("byte", "long"),
    ("short", "integer"),
    ("short", "long"),
    ("integer", "long"),
    ("float", "double"),
}


@dataclass(frozen=True)
class DeltaSource:
    """A Delta table used as the source of a write (merge_delta), read by delta-rs rather than Spark."""

    path: Path | str


def table_exists(path: Path | str) -> bool:
    """True when a Delta table (a `_delta_log`) exists at path."""
    return DeltaTable.is_deltatable(str(path))


def staged_or_published(tables: TablePaths, table: str) -> Path:
    """The staged table while a run's is awaiting the quality gate, else the published one (a stage rerun after
    its run was published reads what that run published)."""
    staged = tables.staged(table)
    return staged if table_exists(staged) else getattr(tables, table)


def require_table(path: Path | str, stage: str) -> None:
    """Fail, naming the table and the stage that writes it, when a job's input table is not there (yet)."""
    if not table_exists(path):
        raise IdresError(f"table {Path(path).parent.name}/{Path(path).name} is missing: run the {stage} stage first")


def table_version(path: Path | str) -> int | None:
    """The table's current version, or None when there is no table."""
    return DeltaTable(str(path)).version() if table_exists(path) else None


def column_names(path: Path | str) -> list[str]:
    """The table's column names (current schema)."""
    return [f.name for f in DeltaTable(str(path)).schema().fields]


def _column_types(schema: Schema) -> dict[str, str]:
    return {f.name: f.type.type if isinstance(f.type, PrimitiveType) else str(f.type) for f in schema.fields}


def _schema_of(source: DataFrame | DeltaSource | pa.Table) -> Schema:
    if isinstance(source, DeltaSource):
        return DeltaTable(str(source.path)).schema()
    arrow = source.schema if isinstance(source, pa.Table) else to_arrow_schema(source.schema, timezone="UTC")
    return Schema.from_arrow(_nullable(arrow))


def retyped_columns(source: DataFrame | DeltaSource | pa.Table, path: Path | str) -> dict[str, tuple[str, str]]:
    """The columns the table at path and the source both hold whose source type a merge cannot carry into the
    table's, as {column: (table's type, source's)}; empty when there is no table.

    delta-rs would cast each value to the table's type: 1.5 into a long column lands as 1, and a text value into
    a number column fails with the value in the error message.
    """
    if not table_exists(path):
        return {}
    table = _column_types(DeltaTable(str(path)).schema())
    return {
        column: (table[column], type_)
        for column, type_ in _column_types(_schema_of(source)).items()
        if column in table and type_ != table[column] and (type_, table[column]) not in LOSSLESS_CASTS
    }


def history(path: Path | str) -> list[dict[str, Any]]:
    """Commit history, newest first, including each commit's custom metadata (run_id, job)."""
    return DeltaTable(str(path)).history()


def run_transaction_id(job: str, run_id: str) -> str:
    """The Delta app-transaction id that marks a table as written by this job in this run."""
    return f"idres:{job}:{run_id}"


def _commit_properties(
    run_id: str, job: str, once_per_run: bool = False, transaction_version: int = 1
) -> CommitProperties:
    transactions = [Transaction(run_transaction_id(job, run_id), transaction_version)] if once_per_run else None
    return CommitProperties(custom_metadata={"run_id": run_id, "job": job}, app_transactions=transactions)


def run_transaction_version(path: Path | str, job: str, run_id: str) -> int | None:
    """The version of this job's app transaction for this run in the table's log (the highest committed), or
    None when the job has not committed to the table in this run."""
    return DeltaTable(str(path)).transaction_version(run_transaction_id(job, run_id)) if table_exists(path) else None


def committed_in_run(path: Path | str, job: str, run_id: str) -> bool:
    """True when this job already committed to the table in this run (its app transaction is in the log)."""
    return run_transaction_version(path, job, run_id) is not None


def version_before_run(path: Path | str, job: str, run_id: str) -> int | None:
    """The table's version just before this job's first commit in this run (-1 when that commit created it), or
    None when the job has no commit in this run: what a retried run reads to see the table as its first
    attempt found it."""
    versions = [c["version"] for c in history(path) if c.get("job") == job and c.get("run_id") == run_id]
    return min(versions) - 1 if versions else None


def run_commit_metrics(path: Path | str, job: str, run_id: str) -> dict[str, int]:
    """The merge metrics (inserted, updated, deleted) of this job's commit to the table in this run, from the log.

    A resumed run skips the tables it already committed (merge_delta's once_per_run) and reports what that
    earlier commit did, so its audit row matches an uninterrupted run's. Empty when there is no such commit.
    """
    for commit in history(path) if table_exists(path) else []:
        if commit.get("job") == job and commit.get("run_id") == run_id:
            metrics = {**commit, **(commit.get("operationMetrics") or {})}  # _commit_files' row count is custom
            return {
                "num_target_rows_inserted": int(metrics.get("num_target_rows_inserted", metrics.get(ADDED_ROWS, 0))),
                "num_target_rows_updated": int(metrics.get("num_target_rows_updated", 0)),
                "num_target_rows_deleted": int(metrics.get("num_target_rows_deleted", 0)),
            }
    return {}


def run_rows_deleted(path: Path | str, job: str, run_id: str) -> int:
    """Rows that this job's commits in this run (every attempt of it) deleted from the table, from the log."""
    commits = history(path) if table_exists(path) else []
    return sum(
        int((c.get("operationMetrics") or {}).get("num_target_rows_deleted", 0))
        for c in commits
        if c.get("job") == job and c.get("run_id") == run_id
    )


@contextmanager
def _arrow_stream(df: DataFrame, path: Path | str) -> Iterator[tuple[pa.RecordBatchReader, int]]:
    """df as a stream of Arrow batches (every field nullable, so the Delta schema does not depend on one
    batch), with its row count.

    In a small stage (COLLECT_WRITES_CONF) df is collected into the driver as Arrow: a Spark Parquet write
    costs a job commit and small files, about half a second per write on a few thousand rows. Otherwise
    Spark's executors write df as Parquet to a spill folder beside the table and delta-rs reads it back
    batch by batch, so no table is ever collected whole into the driver (at a million records the lineage
    table alone outgrows a 4g driver heap). The spill folder is removed afterwards; a stale one a killed job
    left behind, by the next job to take the lakehouse lock (recover_from_killed_writes).
    """
    if _collects(df):
        yield _table_reader(df.toArrow())
        return
    target = Path(path)
    spill = target.parent / f"{SPILL_PREFIX}{target.name}"
    shutil.rmtree(spill, ignore_errors=True)
    try:
        df.write.parquet(str(spill))
        yield _parquet_stream(str(spill))
    finally:
        shutil.rmtree(spill, ignore_errors=True)


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema])


def _table_reader(table: pa.Table) -> tuple[pa.RecordBatchReader, int]:
    return table.cast(_nullable(table.schema)).to_reader(), table.num_rows


def _parquet_stream(files: str | list[str]) -> tuple[pa.RecordBatchReader, int]:
    dataset = ds.dataset(files, format="parquet")
    return dataset.scanner().to_reader().cast(_nullable(dataset.schema)), dataset.count_rows()


def data_files(table: DeltaTable) -> list[str]:
    """The data files of the table's loaded version as paths to open: delta-rs gives them percent-encoded (a
    lakehouse folder named `my data` or in Cyrillic comes back as `my%20data`, `%D0%BB...`)."""
    return [unquote(uri.removeprefix("file://")) for uri in table.file_uris()]


def _as_string_views(schema: pa.Schema) -> pa.Schema:
    """schema with every top-level string column as string_view.

    delta-rs merges write string_view Parquet; a dataset declared as plain string then fails DuckDB's
    pushed-down string filters ("no kernel matching input types (string, string_view)").
    """
    text = (pa.types.is_string, pa.types.is_large_string)
    return pa.schema([f.with_type(pa.string_view()) if any(t(f.type) for t in text) else f for f in schema])


def arrow_dataset(path: Path | str, string_views: bool = False) -> ds.Dataset:
    """A Delta table's current version as an Arrow dataset (every field nullable, the table's schema), read
    lazily: an engine that scans it (DuckDB) reads only the columns and batches a query needs.

    string_views: string columns declared as string_view, for SQL that filters them (jobs.query).
    """
    table = DeltaTable(str(path))
    schema = _nullable(pa.schema(table.schema().to_arrow()))
    if string_views:
        schema = _as_string_views(schema)
    if files := data_files(table):
        return ds.dataset(files, schema=schema, format="parquet")
    return ds.dataset(schema.empty_table())


def rows_where(path: Path | str, column: str, value: str, columns: Sequence[str] | None = None) -> list[dict]:
    """The rows of a Delta table's current version whose text column equals value, as dicts (of columns, or
    all). The filter runs on each batch read, not in the scan: delta-rs merges write string_view Parquet beside
    plain string files, and Arrow has no scan filter that compares both ("no kernel matching input types")."""
    dataset = arrow_dataset(path)
    wanted = list(columns or dataset.schema.names)
    found = []
    for batch in dataset.scanner(columns=list(dict.fromkeys([*wanted, column]))).to_batches():
        matching = batch.filter(pc.equal(batch.column(column).cast(pa.string()), value))
        found.extend(matching.select(wanted).to_pylist())
    return found


def _table_stream(path: Path | str) -> tuple[pa.RecordBatchReader, int]:
    """A Delta table's current version as a stream of Arrow batches, with its row count (see _arrow_stream)."""
    dataset = arrow_dataset(path)
    return dataset.scanner().to_reader(), dataset.count_rows()


def _source_stream(
    source: DataFrame | DeltaSource | pa.Table, path: Path | str
) -> AbstractContextManager[tuple[pa.RecordBatchReader, int]]:
    """Arrow batches and row count of a merge source: a DataFrame spills (_arrow_stream), the others do not."""
    if isinstance(source, DeltaSource):
        return nullcontext(_table_stream(source.path))
    if isinstance(source, pa.Table):
        return nullcontext(_table_reader(source))
    return _arrow_stream(source, path)


def read_delta(spark: SparkSession, path: Path | str, version: int | None = None) -> DataFrame:
    """A Spark DataFrame of the table at its current version (or `version`)."""
    dt = DeltaTable(str(path), version=version)
    empty = pa.schema(dt.schema().to_arrow()).empty_table()
    spark_schema = spark.createDataFrame(empty).schema
    files = data_files(dt)
    if not files:
        return spark.createDataFrame([], spark_schema)
    return spark.read.schema(spark_schema).parquet(*files)


def read_every_version(spark: SparkSession, path: Path | str) -> DataFrame:
    """A Spark DataFrame of every row that any retained version of the table holds (duplicates included): the
    data files of each version whose log is still there, as far as vacuum left them, in the current schema."""
    current = DeltaTable(str(path))
    files: set[str] = set()
    for commit in current.history():
        try:
            files.update(data_files(DeltaTable(str(path), version=commit["version"])))
        except DeltaError:  # a version whose log a purge removed
            continue
    spark_schema = spark.createDataFrame(pa.schema(current.schema().to_arrow()).empty_table()).schema
    kept = sorted(f for f in files if Path(f).exists())
    if not kept:
        return spark.createDataFrame([], spark_schema)
    return spark.read.schema(spark_schema).parquet(*kept)


def read_delta_or_empty(spark: SparkSession, path: Path | str, schema: str | pa.Schema) -> DataFrame:
    """The table at its current version, or an empty DataFrame of schema (DDL or Arrow) when there is no table yet."""
    if table_exists(path):
        return read_delta(spark, path)
    if isinstance(schema, pa.Schema):
        return spark.createDataFrame(schema.empty_table())
    return spark.createDataFrame([], schema)


def query_delta(sql: str, versions: Mapping[str, int] | None = None, **tables: Path | str) -> pa.Table:
    """Run SQL over Delta tables with delta-rs' engine, outside Spark (summaries, CLI queries). Each table is read
    at its current version, or at the version `versions` gives for its alias (time travel)."""
    versions = versions or {}
    qb = QueryBuilder()
    for name, path in tables.items():
        qb = qb.register(name, DeltaTable(str(path), version=versions.get(name)))
    return pa.table(qb.execute(sql).read_all())


def versions_as_run_left(paths: Iterable[Path | str], run_id: str) -> dict[Path, int | None]:
    """Per table, the version run_id left it at: the run's own last commit to it, else its last version before the
    run ended; None for a table that held no version then (created later, or those versions purged).

    The run ends at its last commit before the first commit of a run that began after it: a publication another
    run completes for it later is its own output, not its end, and a publication it completes for an earlier
    run is within it. A run with no commit in the logs left versions not known, so every table is None: it
    committed nothing (it failed before its first commit, or its id is mistyped), or an erasure purged its
    commits.
    """
    histories = {Path(p): history(p) for p in paths}
    commits = sorted((c["timestamp"], c.get("run_id"), path, c["version"]) for path, h in histories.items() for c in h)
    own = [c for c in commits if c[1] == run_id]
    if not own:
        return dict.fromkeys(histories)
    began = own[0][0]
    first_commits: dict[str, Any] = {}
    for timestamp, committer, _, _ in commits:
        if committer is not None:
            first_commits.setdefault(committer, timestamp)
    next_run = min((t for t in first_commits.values() if t > began), default=None)
    ended = max(c[0] for c in own if next_run is None or c[0] < next_run)
    versions: dict[Path, int | None] = {}
    for path in histories:
        mine = [c[3] for c in own if c[2] == path]
        before = [c[3] for c in commits if c[2] == path and c[0] <= ended]
        versions[path] = max(mine or before, default=None)
    return versions


def row_count(path: Path | str) -> int:
    """The number of rows in the table's current version."""
    return int(query_delta("SELECT count(*) AS n FROM t", t=path)["n"][0].as_py())


def as_utc(at: datetime) -> datetime:
    """A time a table holds, zone-aware: one read back without a zone is UTC, as every job writes times."""
    return at.replace(tzinfo=at.tzinfo or UTC)


def latest_time(path: Path | str, column: str) -> datetime | None:
    """The latest time (UTC) a table holds in a timestamp column; None when it holds none or does not exist."""
    if not table_exists(path):
        return None
    latest = query_delta(f'SELECT max("{column}") AS latest FROM t', t=path).column("latest")[0].as_py()
    return as_utc(latest) if latest is not None else None


def run_time(now: datetime, recorded: Iterable[tuple[Path | str, str]]) -> datetime:
    """A run's time: now, to the second, unless a (table, timestamp column) of `recorded` holds a time as late;
    then one second after the latest. Audit tables find a stage's latest run by its time and bronze ranks
    versions by theirs, so the times must be ordered as the runs were: also when two ran within a second, the
    clock was set back, or the host of an earlier run had a clock ahead."""
    latest = max((t for path, column in recorded if (t := latest_time(path, column)) is not None), default=None)
    at = now.replace(microsecond=0)
    if latest is None or at > latest:
        return at
    if latest - at > CLOCK_BEHIND_WARNING:
        log.warning(
            "recorded run times reach %s, ahead of this host's clock (%s): this run records a second later", latest, at
        )
    return latest + timedelta(seconds=1)


def _collects(df: DataFrame) -> bool:
    return df.sparkSession.conf.get(COLLECT_WRITES_CONF, "false") == "true"


def _commit_files(path: Path | str, folder: Path, schema: Schema, mode: str, commit: CommitProperties) -> int:
    """One commit adding the Parquet files of folder, a new folder inside the table: it creates the table, or
    appends or overwrites (`mode`; an overwrite replaces the schema too). Returns the rows committed.

    Each file's statistics hold its row count only, so the log holds no column values. Files of a job
    killed before its commit are never referenced, and vacuum removes them.
    """
    actions, rows = [], 0
    for file in sorted(folder.glob("*.parquet")):
        stat, count = file.stat(), pq.read_metadata(file).num_rows
        actions.append(
            AddAction(
                path=f"{folder.name}/{file.name}",
                size=stat.st_size,
                partition_values={},
                modification_time=int(stat.st_mtime * 1000),
                data_change=True,
                stats=f'{{"numRecords": {count}}}',
            )
        )
        rows += count
    commit = CommitProperties(
        custom_metadata={**(commit.custom_metadata or {}), ADDED_ROWS: str(rows)},
        app_transactions=commit.app_transactions,
    )
    if table_exists(path):
        DeltaTable(str(path)).create_write_transaction(actions, mode, schema, commit_properties=commit)
    else:
        create_table_with_add_actions(
            str(path), schema, actions, configuration=TABLE_PROPERTIES, commit_properties=commit
        )
    return rows


def with_table_properties(path: Path | str, run_id: str) -> None:
    """Give an existing table that lacks them TABLE_PROPERTIES, before a write: one created before they were set, or
    by another writer, would log each new file's smallest and largest values (names, ids). Its earlier commits keep
    theirs until an erasure purges the history (purge_history)."""
    if not table_exists(path):
        return
    table = DeltaTable(str(path))
    configuration = table.metadata().configuration
    missing = {k: v for k, v in TABLE_PROPERTIES.items() if configuration.get(k) != v}
    if missing:
        table.alter.set_table_properties(missing, commit_properties=_commit_properties(run_id, TABLE_PROPERTIES_JOB))


def _new_folder(path: Path | str) -> Path:
    return Path(path) / f"part-{uuid.uuid4().hex}"


@contextmanager
def _uncommitted_removed(path: Path | str, folder: Path) -> Iterator[Path]:
    """The folder of a write's new files into the table at path, removed if the write fails before its commit: no
    version refers to them, and only a vacuum would find them otherwise. Kept if the table's version moved (the
    commit went through before the error), and on a kill or an interrupt, as a killed write's draft is."""
    before = table_version(path)
    try:
        yield folder
    except Exception:
        if table_version(path) == before:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _commit_spark_files(df: DataFrame, path: Path | str, mode: str, commit: CommitProperties) -> int:
    """Spark's executors write df as Parquet into the table, and _commit_files commits the files as they are:
    for a table that receives the rows whole, with no second copy through delta-rs."""
    with _uncommitted_removed(path, _new_folder(path)) as folder:
        df.write.parquet(str(folder))
        for leftover in [*folder.glob(".*"), *folder.glob("_*")]:  # Spark's _SUCCESS and checksum files
            leftover.unlink()
        return _commit_files(
            path, folder, Schema.from_arrow(_nullable(to_arrow_schema(df.schema, timezone="UTC"))), mode, commit
        )


def _commit_copied_files(source: DeltaSource, path: Path | str, commit: CommitProperties, mode: str = "append") -> int:
    """The source table's current files, copied byte for byte (no decoding) into a new table (`append`) or
    replacing an existing table's files and schema (`overwrite`)."""
    table = DeltaTable(str(source.path))
    with _uncommitted_removed(path, _new_folder(path)) as folder:
        folder.mkdir(parents=True)
        for number, file in enumerate(data_files(table)):
            shutil.copyfile(file, folder / f"{number:05d}-{Path(file).name}")
        return _commit_files(path, folder, table.schema(), mode, commit)


def overwrite_delta(df: DataFrame | pa.Table, path: Path | str, *, run_id: str, job: str) -> None:
    """Replace the table's contents in one commit (creating the table if needed)."""
    with_table_properties(path, run_id)
    _write_rows(df, path, _commit_properties(run_id, job))


def _write_rows(df: DataFrame | pa.Table, path: Path | str, commit: CommitProperties) -> None:
    if isinstance(df, DataFrame) and not _collects(df):
        _commit_spark_files(df, path, "overwrite", commit)
        return
    with _source_stream(df, path) as (rows, _):
        write_deltalake(
            str(path),
            rows,
            mode="overwrite",
            schema_mode="overwrite",
            configuration=TABLE_PROPERTIES,
            commit_properties=commit,
        )


def merge_delta(
    source: DataFrame | DeltaSource | pa.Table,
    path: Path | str,
    *,
    keys: Sequence[str],
    run_id: str,
    job: str,
    update_changed: bool = False,
    ignore_changes_in: Sequence[str] = (),
    delete_missing: bool = False,
    delete_missing_of_run: bool = False,
    once_per_run: bool = False,
    transaction_version: int = 1,
    schema_follows_source: bool = False,
) -> dict[str, int] | None:
    """Upsert source into the table on `keys`; a merge that changes nothing leaves the version as it was.

    - rows whose key is new are inserted;
    - with update_changed, matched rows are rewritten only when some column differs (other than
      ignore_changes_in, such as the time of a retried run's attempt);
    - with delete_missing, target rows absent from source are deleted; with delete_missing_of_run, only those
      whose run_id is this run's (a retried run's audit rows replace its first attempt's, other runs' stay).
    - with once_per_run, the commit records an app transaction for (job, run_id) at transaction_version, and a
      table that already holds it at that version or a later one is left alone: resuming a run that died
      between tables does not write twice. A run that writes its tables again with new content (a cleared
      run published again) passes a higher version.
    - with schema_follows_source, for a table the source replaces whole (update_changed and delete_missing):
      a column the table has and the source lacks leaves the table (a merge keeps such a column with every old
      value: a column the policy made sensitive would stay, personal values and all). The source's files
      replace the table's, schema included, in one overwrite commit whose metrics count every matched row as
      updated (its commit metadata records them for run_commit_metrics); rows are first written as a Delta
      table beside it. A column whose type the source changes (retyped_columns) takes the source's type the
      same way.
    Without schema_follows_source, a changed column type raises ColumnTypeChangeError before any commit.
    The source must hold each key once (delta-rs#2407). A DeltaSource (another Delta table, e.g. staged
    rows) or an Arrow table (a few audit rows built in the driver) goes into the merge without passing
    through Spark. Returns delta-rs' merge metrics, or None when skipped because this run already committed.
    """
    if once_per_run and (run_transaction_version(path, job, run_id) or 0) >= transaction_version:
        return None
    commit = _commit_properties(run_id, job, once_per_run, transaction_version)
    if isinstance(source, DeltaSource) and not table_exists(path):
        return _inserted(_commit_copied_files(source, path, commit))
    retyped = retyped_columns(source, path)
    if retyped and not schema_follows_source:
        raise ColumnTypeChangeError(str(path), retyped)
    with_table_properties(path, run_id)
    dropped = schema_follows_source and table_exists(path) and set(column_names(path)) - set(_column_names_of(source))
    if (retyped or dropped) and not isinstance(source, DeltaSource):
        return _replace_with_rows(source, path, keys, commit)
    if retyped or dropped:
        return _replace_with_copy(source, path, keys, commit)
    if isinstance(source, DataFrame) and not _collects(source) and not table_exists(path):
        return _inserted(_commit_spark_files(source, path, "append", commit))
    with _source_stream(source, path) as (batches, rows):
        quoted_run_id = run_id.replace("'", "''")
        of_run = f"t.`run_id` = '{quoted_run_id}'" if delete_missing_of_run else None
        deletes = delete_missing or delete_missing_of_run
        return _merge(batches, rows, path, keys, commit, update_changed, ignore_changes_in, deletes, of_run)


def _column_names_of(source: DataFrame | DeltaSource | pa.Table) -> list[str]:
    if isinstance(source, DeltaSource):
        return column_names(source.path)
    return source.columns if isinstance(source, DataFrame) else source.schema.names


def keys_match(keys: Sequence[str], left: str, right: str) -> str:
    """A merge or join predicate: the rows agree on every key, a null key equal to a null one (with `=` a
    row with a null key never matched, so a rerun inserted it again)."""
    return " AND ".join(f"({left}.`{k}` IS NOT DISTINCT FROM {right}.`{k}`)" for k in keys)


def _inserted(rows: int) -> dict[str, int]:
    """Merge metrics of a merge into a new table: every source row inserted."""
    return {"num_target_rows_inserted": rows, "num_target_rows_updated": 0, "num_target_rows_deleted": 0}


def _replace_with_copy(
    source: DeltaSource, path: Path | str, keys: Sequence[str], commit: CommitProperties
) -> dict[str, int]:
    """Replace the table with the source's files and schema in one commit; returns the metrics the merge it
    stands for would have (a matched row counts as updated, as its columns changed), also kept in the commit's
    metadata, which holds counts only."""
    on = keys_match(keys, "a", "b")
    key_list = ", ".join(f"`{k}`" for k in keys)
    counts = query_delta(
        "SELECT"
        " coalesce(sum(CASE WHEN b.present IS NULL THEN 1 ELSE 0 END), 0) AS num_target_rows_inserted,"
        " coalesce(sum(CASE WHEN a.present AND b.present THEN 1 ELSE 0 END), 0) AS num_target_rows_updated,"
        " coalesce(sum(CASE WHEN a.present IS NULL THEN 1 ELSE 0 END), 0) AS num_target_rows_deleted"
        f" FROM (SELECT {key_list}, true AS present FROM s) a"
        f" FULL OUTER JOIN (SELECT {key_list}, true AS present FROM t) b ON {on}",
        s=source.path,
        t=path,
    ).to_pylist()[0]
    metrics = {name: int(count) for name, count in counts.items()}
    recorded = CommitProperties(
        custom_metadata={**(commit.custom_metadata or {}), **{k: str(v) for k, v in metrics.items()}},
        app_transactions=commit.app_transactions,
    )
    _commit_copied_files(source, path, recorded, mode="overwrite")
    return metrics


def _replace_with_rows(
    source: DataFrame | pa.Table, path: Path | str, keys: Sequence[str], commit: CommitProperties
) -> dict[str, int]:
    """_replace_with_copy from rows: written first as a Delta table beside the target, removed afterwards."""
    target = Path(path)
    rows = target.parent / f"{SPILL_PREFIX}{target.name}_replacing"
    shutil.rmtree(rows, ignore_errors=True)
    try:
        _write_rows(source, rows, CommitProperties())
        return _replace_with_copy(DeltaSource(rows), path, keys, commit)
    finally:
        shutil.rmtree(rows, ignore_errors=True)


def _merge(
    source: pa.RecordBatchReader,
    rows: int,
    path: Path | str,
    keys: Sequence[str],
    commit: CommitProperties,
    update_changed: bool,
    ignore_changes_in: Sequence[str],
    delete_missing: bool,
    missing_predicate: str | None,
) -> dict[str, int]:
    if not table_exists(path):
        write_deltalake(str(path), source, mode="append", configuration=TABLE_PROPERTIES, commit_properties=commit)
        return _inserted(rows)
    target = DeltaTable(str(path))
    target_columns = {f.name for f in target.schema().fields}
    predicate = keys_match(keys, "t", "s")
    merger = target.merge(
        source,
        predicate=predicate,
        source_alias="s",
        target_alias="t",
        merge_schema=True,  # additive schema evolution, e.g. a new comparison's gamma column
        commit_properties=commit,
    )
    if update_changed:
        others = [c for c in source.schema.names if c not in keys]
        compared = [c for c in others if c not in ignore_changes_in]
        if set(others) - target_columns:
            merger = merger.when_matched_update_all()  # new columns: every matched row changes
        elif compared:
            changed = " OR ".join(f"(t.`{c}` IS DISTINCT FROM s.`{c}`)" for c in compared)
            merger = merger.when_matched_update_all(predicate=changed)
    merger = merger.when_not_matched_insert_all()
    if delete_missing:
        merger = merger.when_not_matched_by_source_delete(predicate=missing_predicate)
    return merger.execute()


def delete_matching(keys_df: DataFrame, path: Path | str, *, run_id: str, job: str) -> int:
    """Delete the rows whose values in keys_df's columns equal one of its rows; returns the count deleted.

    A merge on a key table, not a delete predicate, so the commit log never records the values.
    """
    if not table_exists(path):
        return 0
    keys = keys_df.columns
    target = DeltaTable(str(path))
    if not set(keys) <= {f.name for f in target.schema().fields}:
        return 0
    with _arrow_stream(keys_df.distinct(), path) as (source, rows):
        if rows == 0:
            return 0
        with_table_properties(path, run_id)
        target = DeltaTable(str(path))
        metrics = (
            target.merge(
                source,
                predicate=keys_match(keys, "t", "s"),
                source_alias="s",
                target_alias="t",
                commit_properties=_commit_properties(run_id, job),
            )
            .when_matched_delete()
            .execute()
        )
    return int(metrics["num_target_rows_deleted"])


def purge_history(path: Path | str, run_id: str, job: str) -> int:
    """Erase earlier versions for good: vacuum every unreferenced file and drop the log before a new checkpoint.

    The tables this module creates log no column values (TABLE_PROPERTIES), but a table created before or
    elsewhere may hold them in its old commits' file statistics, so an erasure drops those too. Time travel
    to versions before this call ends. Its commits carry the run id and job like every other. Returns the
    table version after the purge.
    """
    commit = _commit_properties(run_id, job)
    table = DeltaTable(str(path))
    marker = _purge_marker(path)
    # a purge of this table that was killed kept the table's own retention in its marker
    kept = _purge_marker_content(marker).get(LOG_RETENTION) or table.metadata().configuration.get(LOG_RETENTION)
    if kept in (None, NO_LOG_RETENTION):
        kept = DEFAULT_LOG_RETENTION
    table.vacuum(
        retention_hours=0, dry_run=False, enforce_retention_duration=False, full=True, commit_properties=commit
    )
    # A kill skips the finally below; the marker lets the next holder of the lakehouse lock put the retention back
    # (recover_from_killed_writes) before any checkpoint at none drops the table's history.
    write_whole(marker, json.dumps({LOG_RETENTION: kept, "run_id": run_id, "job": job}))
    table.alter.set_table_properties({LOG_RETENTION: NO_LOG_RETENTION}, commit_properties=commit)
    try:
        table = DeltaTable(str(path))
        table.create_checkpoint()
        table.cleanup_metadata()
    finally:  # the table's own retention back, however this ends: at none, the next checkpoint drops its history
        _restore_log_retention(path, marker)
    return DeltaTable(str(path)).version()


def _purge_marker(path: Path | str) -> Path:
    """The file beside a table that holds its log retention while purge_history has set it to none."""
    table = Path(path)
    return table.parent / f"{PURGE_MARKER_PREFIX}{table.name}"


def _purge_marker_content(marker: Path) -> dict[str, str]:
    """What a purge marker holds (the retention kept, the purge's run id and job); {} for none, or one that does
    not read whole (written by hand)."""
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    return content if isinstance(content, dict) and all(isinstance(v, str) for v in content.values()) else {}


def _restore_log_retention(path: Path | str, marker: Path) -> None:
    """Set the table's log retention back to the one its purge marker kept (the default when the marker does not
    say), in a commit of that purge's run and job (none when it is set already), and remove the marker."""
    kept = {LOG_RETENTION: DEFAULT_LOG_RETENTION, "run_id": "unrecorded", "job": "purge_history"}
    kept.update(_purge_marker_content(marker))
    table = DeltaTable(str(path))
    if table.metadata().configuration.get(LOG_RETENTION) != kept[LOG_RETENTION]:
        table.alter.set_table_properties(
            {LOG_RETENTION: kept[LOG_RETENTION]}, commit_properties=_commit_properties(kept["run_id"], kept["job"])
        )
    marker.unlink()


def recover_from_killed_writes(tables: TablePaths) -> list[str]:
    """Undo what a killed job left beside the lakehouse's tables and their staged candidates; returns the names
    of the folders and markers it removed.

    - Spill folders (_arrow_stream, _replace_with_rows) hold rows outside any table, so outside vacuum and out
      of an erasure's reach: removed.
    - A table whose history purge was killed stays at no log retention, so its next checkpoint would drop its
      history: its own retention is set back.

    Only for a holder of the lakehouse lock (jobs.runner.lakehouse_lock): a running job's spill would go too.
    What cannot be removed or set back now (a killed driver's executors still writing) is named in the log and
    left for the next holder.
    """
    removed = []
    folders = {p.parent for p in tables.all().values()} | {
        tables.staging / p.parent.relative_to(tables.root) for p in tables.all().values()
    }
    for folder in sorted(f for f in folders if f.is_dir()):
        for left in sorted([*folder.glob(f"{SPILL_PREFIX}*"), *folder.glob(f"{PURGE_MARKER_PREFIX}*")]):
            try:
                if left.name.startswith(SPILL_PREFIX):
                    shutil.rmtree(left) if left.is_dir() else left.unlink()
                elif table_exists(table := folder / left.name.removeprefix(PURGE_MARKER_PREFIX)):
                    _restore_log_retention(table, left)
                else:
                    left.unlink()
            except (OSError, DeltaError) as err:
                log.warning("%s left for the next job: %s", left, type(err).__name__)
                continue
            removed.append(left.name)
    return removed


def current_data_files(path: Path | str) -> list[Path]:
    """The data files the table's current version reads: all of it that purge_history keeps, beside the log it
    writes anew (a checkpoint of this version and the purge's own commits)."""
    return [Path(f) for f in data_files(DeltaTable(str(path)))]


def files_of_earlier_versions(path: Path | str) -> list[Path]:
    """The table's files that only earlier versions need: data files its current version does not read, and log
    entries before its last checkpoint (every numbered entry when it has none). purge_history leaves none."""
    root = Path(path)
    log_dir = root / "_delta_log"
    last_checkpoint = log_dir / "_last_checkpoint"
    checkpoint = json.loads(last_checkpoint.read_text())["version"] if last_checkpoint.exists() else None
    current = {f.resolve() for f in current_data_files(root)}
    earlier = []
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        if log_dir not in f.parents:
            if f.resolve() not in current:
                earlier.append(f)
            continue
        version = f.name.split(".")[0]
        if version.isdigit() and (checkpoint is None or int(version) < checkpoint):
            earlier.append(f)
    return earlier


LOG_RETENTION = "delta.logRetentionDuration"
DEFAULT_LOG_RETENTION = "interval 30 days"
NO_LOG_RETENTION = "interval 0 seconds"
