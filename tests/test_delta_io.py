from __future__ import annotations

import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable, write_deltalake

from jobs import delta_io
from jobs.errors import ColumnTypeChangeError

SCHEMA = pa.schema([("key", pa.string()), ("value", pa.int64())])


def _rows(path) -> list[dict]:
    return sorted(delta_io.query_delta("SELECT * FROM t", t=path).to_pylist(), key=lambda r: r["key"])


def test_a_staged_table_and_driver_built_arrow_rows_merge_without_spark(tmp_path):
    staged, target = tmp_path / "staged", tmp_path / "target"
    write_deltalake(str(target), pa.table({"key": ["a", "b"], "value": [1, 2]}, schema=SCHEMA))
    write_deltalake(str(staged), pa.table({"key": ["b", "c"], "value": [20, 3]}, schema=SCHEMA))

    merged = delta_io.merge_delta(
        delta_io.DeltaSource(staged),
        target,
        keys=("key",),
        run_id="r1",
        job="t",
        update_changed=True,
        delete_missing=True,
    )
    assert (merged["num_target_rows_inserted"], merged["num_target_rows_updated"]) == (1, 1)
    assert merged["num_target_rows_deleted"] == 1
    assert _rows(target) == [{"key": "b", "value": 20}, {"key": "c", "value": 3}]

    delta_io.merge_delta(
        pa.table({"key": ["d"], "value": [4]}, schema=SCHEMA), target, keys=("key",), run_id="r1", job="t"
    )
    assert _rows(target) == [{"key": "b", "value": 20}, {"key": "c", "value": 3}, {"key": "d", "value": 4}]
    assert [c.get("run_id") for c in delta_io.history(target)[:2]] == ["r1", "r1"]


def test_an_empty_staged_table_empties_the_target_when_missing_rows_are_deleted(tmp_path):
    staged, target = tmp_path / "staged", tmp_path / "target"
    write_deltalake(str(staged), pa.table({"key": ["a"], "value": [1]}, schema=SCHEMA))
    DeltaTable(str(staged)).delete()  # a table with no data files left
    write_deltalake(str(target), pa.table({"key": ["a", "b"], "value": [1, 2]}, schema=SCHEMA))

    merged = delta_io.merge_delta(
        delta_io.DeltaSource(staged), target, keys=("key",), run_id="r", job="t", delete_missing=True
    )

    assert merged["num_target_rows_deleted"] == 2
    assert delta_io.row_count(target) == 0


@pytest.mark.parametrize("collect", ["true", "false"])
def test_a_spark_frame_lands_the_same_collected_or_spilled(spark, tmp_path, collect):
    rows = spark.createDataFrame([("a", 1), ("b", None), ("c", 3)], "key string, value long").repartition(2)
    spark.conf.set(delta_io.COLLECT_WRITES_CONF, collect)
    try:
        delta_io.overwrite_delta(rows, tmp_path / "t", run_id="r", job="t")
        delta_io.merge_delta(
            spark.createDataFrame([("b", 2), ("d", 4)], "key string, value long"),
            tmp_path / "t",
            keys=("key",),
            run_id="r",
            job="t",
            update_changed=True,
        )
    finally:
        spark.conf.unset(delta_io.COLLECT_WRITES_CONF)
    expected = spark.createDataFrame([("a", 1), ("b", 2), ("c", 3), ("d", 4)], "key string, value long")
    landed = delta_io.read_delta(spark, tmp_path / "t")
    assert_df_equality(landed, expected, ignore_row_order=True, ignore_nullable=True)
    assert not list(tmp_path.glob(f"{delta_io.SPILL_PREFIX}*"))  # no spill folder left behind


def test_a_table_receiving_rows_whole_takes_the_files_spark_wrote_and_logs_no_values(spark, tmp_path):
    table = tmp_path / "t"
    first = spark.createDataFrame([("canary-a", 1), ("canary-b", 2), ("canary-c", 3)], "key string, value long")
    spark.conf.set(delta_io.COLLECT_WRITES_CONF, "false")
    try:
        created = delta_io.merge_delta(first.repartition(2), table, keys=("key",), run_id="r1", job="t")
        spark_files = {p.name for p in table.glob("part-*/*.parquet")}
        replacement = spark.createDataFrame([("z", "q")], "key string, other string")
        delta_io.overwrite_delta(replacement, table, run_id="r2", job="t")
    finally:
        spark.conf.unset(delta_io.COLLECT_WRITES_CONF)

    assert created == {"num_target_rows_inserted": 3, "num_target_rows_updated": 0, "num_target_rows_deleted": 0}
    assert_df_equality(delta_io.read_delta(spark, table, version=0), first, ignore_row_order=True, ignore_nullable=True)
    assert {p.rsplit("/", 1)[1] for p in DeltaTable(str(table), version=0).file_uris()} == spark_files
    assert_df_equality(delta_io.read_delta(spark, table), replacement, ignore_row_order=True, ignore_nullable=True)
    assert [c["run_id"] for c in delta_io.history(table)] == ["r2", "r1"]
    log = "".join(p.read_text() for p in (table / "_delta_log").glob("*.json"))
    assert "canary" not in log
    assert not list(table.glob("part-*/_*")) and not list(table.glob("part-*/.*"))  # no _SUCCESS, no checksums


def test_a_staged_table_merged_into_a_new_table_is_copied_once_per_run(tmp_path):
    staged, target = tmp_path / "staged", tmp_path / "target"
    write_deltalake(str(staged), pa.table({"key": ["a", "b"], "value": [1, 2]}, schema=SCHEMA))
    write_deltalake(str(staged), pa.table({"key": ["c"], "value": [3]}, schema=SCHEMA), mode="append")

    merged = delta_io.merge_delta(
        delta_io.DeltaSource(staged), target, keys=("key",), run_id="r", job="t", once_per_run=True
    )
    again = delta_io.merge_delta(
        delta_io.DeltaSource(staged), target, keys=("key",), run_id="r", job="t", once_per_run=True
    )

    assert merged == {"num_target_rows_inserted": 3, "num_target_rows_updated": 0, "num_target_rows_deleted": 0}
    assert again is None  # the run's commit is recorded in the new table's log
    assert delta_io.run_commit_metrics(target, "t", "r") == merged  # what a resumed run reports
    assert _rows(target) == [{"key": "a", "value": 1}, {"key": "b", "value": 2}, {"key": "c", "value": 3}]
    assert DeltaTable(str(target)).schema() == DeltaTable(str(staged)).schema()
    assert not set(DeltaTable(str(target)).file_uris()) & set(DeltaTable(str(staged)).file_uris())


def test_tables_under_a_folder_named_with_spaces_cyrillic_and_a_hash_are_read_written_and_copied(spark, tmp_path):
    root = tmp_path / "лейк даних #1"  # delta-rs hands such paths back percent-encoded
    rows = spark.createDataFrame([("a", 1), ("b", 2)], "key string, value long")
    spark.conf.set(delta_io.COLLECT_WRITES_CONF, "false")
    try:
        delta_io.overwrite_delta(rows, root / "staged", run_id="r", job="t")
    finally:
        spark.conf.unset(delta_io.COLLECT_WRITES_CONF)
    delta_io.merge_delta(delta_io.DeltaSource(root / "staged"), root / "published", keys=("key",), run_id="r", job="t")

    for table in ("staged", "published"):
        assert_df_equality(delta_io.read_delta(spark, root / table), rows, ignore_row_order=True, ignore_nullable=True)
        assert delta_io.arrow_dataset(root / table).count_rows() == 2


def test_tables_delta_rs_writes_and_merges_log_row_counts_but_no_column_values(spark, tmp_path):
    canaries = pa.table({"key": ["canary-a", "canary-b"], "value": [1, 2]}, schema=SCHEMA)
    delta_io.overwrite_delta(canaries, tmp_path / "overwritten", run_id="r", job="t")
    delta_io.merge_delta(canaries, tmp_path / "merged", keys=("key",), run_id="r", job="t")
    more = pa.table({"key": ["canary-c"], "value": [3]}, schema=SCHEMA)
    delta_io.merge_delta(more, tmp_path / "merged", keys=("key",), run_id="r", job="t")
    collected = spark.createDataFrame([("canary-d", 4)], "key string, value long")
    spark.conf.set(delta_io.COLLECT_WRITES_CONF, "true")
    try:
        delta_io.overwrite_delta(collected, tmp_path / "collected", run_id="r", job="t")
    finally:
        spark.conf.unset(delta_io.COLLECT_WRITES_CONF)

    assert delta_io.row_count(tmp_path / "merged") == 3
    written = ("overwritten", "merged", "collected")
    logs = {t: "".join(p.read_text() for p in (tmp_path / t / "_delta_log").glob("*.json")) for t in written}
    assert {t: "canary" in log for t, log in logs.items()} == dict.fromkeys(written, False)
    assert all("numRecords" in log for log in logs.values())


def _log_of_version(path, version: int) -> str:
    return (path / "_delta_log" / f"{version:020d}.json").read_text()


def test_a_table_created_without_the_table_properties_gets_them_before_the_next_write_logs_a_value(spark, tmp_path):
    """A table from before TABLE_PROPERTIES, or another writer's, logged each new file's smallest and largest
    values with every write of ours."""
    tables = {name: tmp_path / name for name in ("merged", "overwritten", "deleted_from")}
    for path in tables.values():
        write_deltalake(str(path), pa.table({"key": ["old-a", "old-b"], "value": [1, 2]}, schema=SCHEMA))
    assert "old-a" in _log_of_version(tables["merged"], 0)  # the older tables' way: values in the statistics
    canary = pa.table({"key": ["canary-a"], "value": [3]}, schema=SCHEMA)

    delta_io.merge_delta(canary, tables["merged"], keys=("key",), run_id="r", job="t")
    delta_io.overwrite_delta(canary, tables["overwritten"], run_id="r", job="t")
    delta_io.delete_matching(
        spark.createDataFrame([("old-a",)], "key string"), tables["deleted_from"], run_id="r", job="t"
    )
    delta_io.merge_delta(canary, tables["merged"], keys=("key",), run_id="r2", job="t")  # changes nothing

    for path in tables.values():
        assert DeltaTable(str(path)).metadata().configuration == delta_io.TABLE_PROPERTIES
        assert [c.get("job") for c in delta_io.history(path)] == ["t", delta_io.TABLE_PROPERTIES_JOB, None]
        assert "old-b" not in _log_of_version(path, 2) and "canary" not in _log_of_version(path, 2)
        assert delta_io.version_before_run(path, "t", "r") == 1  # the properties alone, no row of the run
    assert _rows(tables["merged"])[-1] == {"key": "old-b", "value": 2}
    assert delta_io.query_delta("SELECT key FROM t", t=tables["deleted_from"]).column("key").to_pylist() == ["old-b"]


def test_a_write_that_fails_before_its_commit_leaves_no_files_in_the_table(spark, tmp_path, monkeypatch):
    staged, copied, spilled = tmp_path / "staged", tmp_path / "copied", tmp_path / "spilled"
    write_deltalake(str(staged), pa.table({"key": ["a"], "value": [1]}, schema=SCHEMA))
    write_deltalake(str(staged), pa.table({"key": ["b"], "value": [2]}, schema=SCHEMA), mode="append")
    frame = spark.createDataFrame([("a", 1), ("b", 2)], "key string, value long")
    copies = []

    def disk_full_at_the_second_file(src, dst):
        copies.append(dst)
        if len(copies) == 2:
            raise OSError(28, "injected: no space left on device")
        return shutil.copyfile(src, dst)

    with monkeypatch.context() as patched:
        patched.setattr(delta_io.shutil, "copyfile", disk_full_at_the_second_file)
        with pytest.raises(OSError, match="no space"):
            delta_io.merge_delta(delta_io.DeltaSource(staged), copied, keys=("key",), run_id="r", job="t")
    with monkeypatch.context() as patched:
        patched.setattr(delta_io, "_commit_files", lambda *a, **k: (_ for _ in ()).throw(OSError("injected")))
        spark.conf.set(delta_io.COLLECT_WRITES_CONF, "false")
        try:
            with pytest.raises(OSError, match="injected"):
                delta_io.merge_delta(frame, spilled, keys=("key",), run_id="r", job="t")
        finally:
            spark.conf.unset(delta_io.COLLECT_WRITES_CONF)

    assert len(copies) == 2
    assert [list(p.iterdir()) if p.exists() else [] for p in (copied, spilled)] == [[], []]
    delta_io.merge_delta(delta_io.DeltaSource(staged), copied, keys=("key",), run_id="r", job="t")  # the retry
    assert _rows(copied) == [{"key": "a", "value": 1}, {"key": "b", "value": 2}]
    assert len(list(copied.glob("part-*"))) == 1


@pytest.mark.parametrize("as_frame", [False, True])
def test_rows_that_replace_a_table_whole_drop_the_columns_they_no_longer_have(spark, tmp_path, as_frame):
    """Silver and the admitted records follow the policy: a column it made sensitive leaves with its values."""
    target = tmp_path / "target"
    old = pa.table({"key": ["a", "b"], "value": [1, 2], "born": ["canary-1980", "canary-1990"]})
    write_deltalake(str(target), old, configuration=delta_io.TABLE_PROPERTIES)
    rows = pa.table({"key": ["b", "c"], "value": [20, 3]}, schema=SCHEMA)
    source = spark.createDataFrame(rows.to_pylist(), "key string, value bigint") if as_frame else rows
    replace = {"update_changed": True, "delete_missing": True, "schema_follows_source": True}

    merged = delta_io.merge_delta(source, target, keys=("key",), run_id="r", job="t", **replace)

    assert {
        k: merged[k] for k in ("num_target_rows_inserted", "num_target_rows_updated", "num_target_rows_deleted")
    } == {
        "num_target_rows_inserted": 1,
        "num_target_rows_updated": 1,
        "num_target_rows_deleted": 1,
    }
    assert delta_io.column_names(target) == ["key", "value"]
    assert _rows(target) == [{"key": "b", "value": 20}, {"key": "c", "value": 3}]
    assert DeltaTable(str(target)).metadata().configuration == delta_io.TABLE_PROPERTIES
    version = DeltaTable(str(target)).version()
    assert version == 1  # one commit: a job killed after it leaves no version still holding the column
    again = delta_io.merge_delta(source, target, keys=("key",), run_id="r2", job="t", **replace)
    assert DeltaTable(str(target)).version() == version  # a rerun commits nothing
    assert again["num_target_rows_updated"] == 0


def test_a_table_replaced_whole_by_a_source_lacking_one_of_its_columns_takes_the_sources_schema_once(tmp_path):
    staged, target = tmp_path / "staged", tmp_path / "target"
    old = pa.table({"key": ["a", "b"], "value": [1, 2], "born": ["canary-1980", "canary-1990"]})
    write_deltalake(str(target), old, configuration=delta_io.TABLE_PROPERTIES)
    write_deltalake(str(staged), pa.table({"key": ["b", "c"], "value": [2, 3]}, schema=SCHEMA))
    replace = {"update_changed": True, "delete_missing": True, "once_per_run": True, "schema_follows_source": True}

    merged = delta_io.merge_delta(delta_io.DeltaSource(staged), target, keys=("key",), run_id="r", job="t", **replace)
    again = delta_io.merge_delta(delta_io.DeltaSource(staged), target, keys=("key",), run_id="r", job="t", **replace)

    # b is matched and loses a column, so it counts as updated, as a merge counts rows gaining one.
    assert merged == {"num_target_rows_inserted": 1, "num_target_rows_updated": 1, "num_target_rows_deleted": 1}
    assert again is None  # one commit per run, as a merge
    assert delta_io.run_commit_metrics(target, "t", "r") == merged  # what a resumed run reports
    assert delta_io.column_names(target) == ["key", "value"]
    assert _rows(target) == [{"key": "b", "value": 2}, {"key": "c", "value": 3}]
    assert DeltaTable(str(target)).version() == 1
    assert DeltaTable(str(target)).metadata().configuration == delta_io.TABLE_PROPERTIES
    log = "".join(p.read_text() for p in (target / "_delta_log").glob("*.json"))
    assert "canary" not in log

    # A later write of the run (a higher transaction version) with the same rows merges, and changes nothing.
    same = delta_io.merge_delta(
        delta_io.DeltaSource(staged), target, keys=("key",), run_id="r", job="t", transaction_version=2, **replace
    )
    assert {name: same[name] for name in merged} == dict.fromkeys(merged, 0)
    assert DeltaTable(str(target)).version() == 1


def test_a_merge_that_would_change_a_column_type_commits_nothing_and_names_the_column_but_no_value(tmp_path):
    target = tmp_path / "target"
    write_deltalake(str(target), pa.table({"key": ["a"], "value": [1]}, schema=SCHEMA))
    version = DeltaTable(str(target)).version()

    for source, types in [
        (pa.table({"key": ["b"], "value": ["canary"]}), ("long", "string")),  # delta-rs' cast error names the value
        (pa.table({"key": ["b"], "value": [2.5]}), ("long", "double")),  # delta-rs would land 2
    ]:
        with pytest.raises(ColumnTypeChangeError) as err:
            delta_io.merge_delta(source, target, keys=("key",), run_id="r", job="t", update_changed=True)
        assert err.value.retyped == {"value": types}
        assert "canary" not in str(err.value) and "2.5" not in str(err.value)
    assert DeltaTable(str(target)).version() == version

    # A narrower type, every value of which the table's type holds exactly, merges as before.
    narrower = pa.table({"key": ["b"], "value": pa.array([2], pa.int32())})
    delta_io.merge_delta(narrower, target, keys=("key",), run_id="r", job="t")
    assert _rows(target) == [{"key": "a", "value": 1}, {"key": "b", "value": 2}]


@pytest.mark.parametrize("source_kind", ["staged", "frame", "arrow"])
def test_a_table_replaced_whole_takes_the_type_its_source_gives_a_column(spark, tmp_path, source_kind):
    """Silver, the admitted records and the published profiles follow their source's types (a mapping or policy
    change), with the merge's metrics, one commit per run, and nothing left beside the table."""
    target = tmp_path / "target"
    rows_before = pa.table({"key": ["a", "b"], "value": [1, 2]}, schema=SCHEMA)
    write_deltalake(str(target), rows_before, configuration=delta_io.TABLE_PROPERTIES)
    rows = pa.table({"key": ["b", "c"], "value": [2.5, 3.0]})
    source = {
        "staged": lambda: delta_io.DeltaSource(tmp_path / "staged"),
        "frame": lambda: spark.createDataFrame(rows.to_pylist(), "key string, value double"),
        "arrow": lambda: rows,
    }
    write_deltalake(str(tmp_path / "staged"), rows)
    replace = {"update_changed": True, "delete_missing": True, "once_per_run": True, "schema_follows_source": True}

    merged = delta_io.merge_delta(source[source_kind](), target, keys=("key",), run_id="r", job="t", **replace)

    assert merged == {"num_target_rows_inserted": 1, "num_target_rows_updated": 1, "num_target_rows_deleted": 1}
    assert _rows(target) == [{"key": "b", "value": 2.5}, {"key": "c", "value": 3.0}]
    assert delta_io.retyped_columns(delta_io.DeltaSource(tmp_path / "staged"), target) == {}
    assert DeltaTable(str(target)).version() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["staged", "target"]
    again = delta_io.merge_delta(source[source_kind](), target, keys=("key",), run_id="r", job="t", **replace)
    assert again is None


@pytest.mark.parametrize("replace", [False, True], ids=["merged", "replaced_whole"])
def test_rows_with_a_null_key_merged_again_change_nothing_and_can_be_deleted(spark, tmp_path, replace):
    """A null key equals a null key: with `=` the row never matched, so every rerun inserted it again."""
    rows = pa.table({"key": ["a", None], "part": ["x", "x"], "value": [1, 2]})
    target = tmp_path / "t"
    how = {"keys": ("key", "part"), "update_changed": True, "delete_missing": replace}
    delta_io.merge_delta(rows, target, run_id="r", job="t", **how)
    version = delta_io.table_version(target)

    again = delta_io.merge_delta(rows, target, run_id="r", job="t", **how)

    assert {k: again[k] for k in ("num_target_rows_inserted", "num_target_rows_updated")} == {
        "num_target_rows_inserted": 0,
        "num_target_rows_updated": 0,
    }
    assert delta_io.table_version(target) == version
    null_key = spark.createDataFrame([(None, "x")], "key string, part string")
    assert delta_io.delete_matching(null_key, target, run_id="r", job="t") == 1
    assert delta_io.arrow_dataset(target).to_table().to_pylist() == [{"key": "a", "part": "x", "value": 1}]


def test_a_history_purge_keeps_the_tables_log_retention_also_when_it_fails(tmp_path, monkeypatch):
    """The purge sets the retention to none for its cleanup: left so by a failure, the next routine checkpoint
    dropped the table's history; and a finished purge set 30 days over the table's own."""
    path = tmp_path / "audit"
    write_deltalake(
        str(path), pa.table({"id": [1, 2]}), configuration={"delta.logRetentionDuration": "interval 90 days"}
    )
    write_deltalake(str(path), pa.table({"id": [3]}), mode="append")

    def retention() -> str:
        return DeltaTable(str(path)).metadata().configuration["delta.logRetentionDuration"]

    delta_io.purge_history(path, run_id="e1", job="subject_rights")
    assert retention() == "interval 90 days"

    def fails(_table):
        raise OSError("injected: the disk went away")

    monkeypatch.setattr(delta_io.DeltaTable, "cleanup_metadata", fails)
    with pytest.raises(OSError, match="injected"):
        delta_io.purge_history(path, run_id="e2", job="subject_rights")
    assert retention() == "interval 90 days"


def test_rows_are_found_by_a_text_value_in_files_delta_rs_wrote_as_string_and_as_string_view(tmp_path):
    """A merge writes string_view Parquet beside the first write's string files; Arrow cannot push a filter down
    over both (an erasure request naming a merged profile failed on a lakehouse past its second run)."""
    target = tmp_path / "target"
    write_deltalake(str(target), pa.table({"key": ["a", "b"], "value": [1, 2]}, schema=SCHEMA))
    delta_io.merge_delta(
        pa.table({"key": ["c"], "value": [3]}, schema=SCHEMA), target, keys=("key",), run_id="r", job="t"
    )
    kinds = {pq.read_schema(f).field("key").type for f in delta_io.data_files(DeltaTable(str(target)))}
    assert kinds == {pa.string(), pa.string_view()}

    assert delta_io.rows_where(target, "key", "a") == [{"key": "a", "value": 1}]
    assert delta_io.rows_where(target, "key", "c", ["value"]) == [{"value": 3}]
    assert delta_io.rows_where(target, "key", "z") == []
