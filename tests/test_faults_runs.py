"""Run faults: a publish killed mid-merge and resumed, the whole pipeline run again on the same extracts, two
jobs on one lakehouse at once, and a PII canary through the real DAG."""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from chispa import assert_df_equality
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import DeltaError
from filelock import FileLock
from pyspark.sql import SparkSession

from jobs import (
    delta_io,
    demo_data,
    ingest,
    pipeline,
    publication,
    quality_gate,
    query,
    resolve,
    run_queries,
    runner,
    unify,
)
from jobs.config import DEFAULT_CONF_DIR, GOLD_TABLES, PUBLISHED_TABLES, PipelineConfig, load_config
from jobs.errors import ColumnTypeChangeError, IdresError
from jobs.runner import describe_without_values, lakehouse_lock, lakehouse_lock_path
from jobs.scratch import ScratchDir
from tests.conftest import (
    DEMO_CUTOFF,
    PROJECT,
    canary_found,
    config_in,
    copy_lakehouse,
    data_table_versions,
    files_text,
    job_env,
    run_crashing_job,
)

pytestmark = pytest.mark.fault

RUN = "demo"  # the run id staged_demo staged its gold candidates under


def conf_with_lock_timeout(root: Path, seconds: float) -> Path:
    """A copy of the project's conf/ whose jobs wait at most seconds for the lakehouse lock."""
    conf = root / f"conf-lock-{seconds:g}"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    pipeline = yaml.safe_load((conf / "pipeline.yaml").read_text(encoding="utf-8"))
    pipeline["concurrency"] = {"lock_timeout_seconds": seconds}
    pipeline["spark"]["master"] = "local[2]"
    (conf / "pipeline.yaml").write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    assert load_config(conf).concurrency.lock_timeout_seconds == seconds
    return conf


def start_job(module: str, cfg: PipelineConfig, conf: Path, *args: str) -> subprocess.Popen[str]:
    """`python -m jobs.<module> --conf conf ...` as a child process, its stderr piped (the job logs there)."""
    return subprocess.Popen(
        [sys.executable, "-m", f"jobs.{module}", "--conf", str(conf), *args],
        env=job_env(cfg),
        cwd=PROJECT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def parquet_files_on_disk(table: Path) -> set[Path]:
    """The Parquet files in the table folder, committed or not, including those in its part-<uuid> folders."""
    return {p.relative_to(table) for p in table.rglob("*.parquet")}


def kill_when_merge_writes(job: subprocess.Popen[str], table: Path, timeout: float = 300) -> None:
    """SIGKILL job as soon as a new data file appears in table, i.e. while or just after it writes that table.

    The files and the commit land milliseconds apart, so the kill lands while the table's files are written
    or right after its commit, and before the next table's: a publish interrupted between its per-table commits.
    """
    before = parquet_files_on_disk(table)
    deadline = time.monotonic() + timeout
    while parquet_files_on_disk(table) == before:
        assert job.poll() is None, f"the job ended (exit {job.returncode}) before merging into {table.name}"
        assert time.monotonic() < deadline, f"no merge into {table.name} within {timeout} s"
        time.sleep(0.002)
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)


def gold_frames(spark: SparkSession, cfg: PipelineConfig) -> dict[str, object]:
    """The published tables (resolve's and unify's), and the publish audit without its wall-clock time."""
    frames = {name: delta_io.read_delta(spark, getattr(cfg.tables, name)) for name in PUBLISHED_TABLES}
    frames["unify_runs"] = delta_io.read_delta(spark, cfg.tables.unify_runs).drop("unified_at")
    return frames


@pytest.mark.heavy  # two publishes of the demo in child processes: about 100 s
def test_a_publish_killed_as_it_writes_profiles_and_rerun_equals_an_uninterrupted_one(spark, staged_demo, tmp_path):
    uninterrupted = copy_lakehouse(staged_demo, tmp_path / "uninterrupted")
    quality_gate.run(spark, uninterrupted, run_id=RUN)

    killed = copy_lakehouse(staged_demo, tmp_path / "killed")
    conf = conf_with_lock_timeout(tmp_path, 5)
    job = start_job("quality_gate", killed, conf, "--run-id", RUN)
    kill_when_merge_writes(job, killed.tables.profiles)
    assert job.returncode == -signal.SIGKILL
    # Interrupted within the profiles table: the later gold tables and the audit row were not published.
    committed = {name: delta_io.committed_in_run(getattr(killed.tables, name), "publish", RUN) for name in GOLD_TABLES}
    assert not committed["profile_permissions"], committed
    assert not delta_io.committed_in_run(killed.tables.unify_runs, "publish", RUN)
    assert killed.tables.staged("profiles").exists()

    # The rerun takes the lakehouse lock at once (the kernel dropped the killed job's) and resumes.
    rerun = start_job("quality_gate", killed, conf, "--run-id", RUN)
    _, log = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, log[-3000:]

    expected = gold_frames(spark, uninterrupted)
    for name, actual in gold_frames(spark, killed).items():
        assert_df_equality(
            actual, expected[name], ignore_row_order=True, ignore_nullable=True, ignore_column_order=True
        )
    profiles = delta_io.read_delta(spark, killed.tables.profiles)
    assert profiles.count() > 100
    assert profiles.groupBy("profile_id").count().where("count > 1").count() == 0
    assert not killed.tables.staging.exists()


def publish_dying_at_the_last_table(cfg: PipelineConfig, run_id: str, aside: Path) -> None:
    """Publish run_id's candidates while the last staged table's log is moved to aside: the publication dies
    there, after committing the other tables; the log is put back afterwards."""
    last = cfg.tables.staged(PUBLISHED_TABLES[-1])
    (last / "_delta_log").rename(aside)
    try:
        with pytest.raises(DeltaError):
            publication.publish(cfg, run_id=run_id)
    finally:
        aside.rename(last / "_delta_log")


def test_a_publication_that_died_between_tables_is_completed_before_the_next_run_resolves(
    spark, staged_demo, tmp_path, caplog
):
    uninterrupted = copy_lakehouse(staged_demo, tmp_path / "uninterrupted")
    publication.publish(uninterrupted, run_id=RUN)

    cfg = copy_lakehouse(staged_demo, tmp_path / "interrupted")
    caplog.set_level(logging.INFO, logger="idres.publication")
    publish_dying_at_the_last_table(cfg, RUN, tmp_path / "hidden_log")
    published = {n: delta_io.committed_in_run(getattr(cfg.tables, n), "publish", RUN) for n in PUBLISHED_TABLES}
    assert published == {name: name != PUBLISHED_TABLES[-1] for name in PUBLISHED_TABLES}
    # the log's last table is the one the publication died at (the error itself names none)
    assert caplog.messages[-1] == f"publication 1 of run {RUN}: {PUBLISHED_TABLES[-1]}"

    # The next run (not a retry of this one) completes that publication before it reads the published ids.
    resolve.run(spark, cfg, run_id="next")

    expected = gold_frames(spark, uninterrupted)
    for name, actual in gold_frames(spark, cfg).items():
        assert_df_equality(
            actual, expected[name], ignore_row_order=True, ignore_nullable=True, ignore_column_order=True
        )
    assert not (cfg.tables.staging / publication.JOURNAL).exists()
    assert delta_io.history(cfg.tables.staged("record_profiles"))[0]["run_id"] == "next"


def test_staging_is_dropped_whole_and_a_folder_a_killed_drop_left_aside_goes_with_the_next(tmp_path):
    cfg = config_in(tmp_path)
    staged = cfg.tables.staged("profiles")
    (staged / "_delta_log").mkdir(parents=True)
    (cfg.tables.staging / publication.JOURNAL).write_text('{"run_id": "r"}', encoding="utf-8")
    left_aside = cfg.tables.staging.with_name(f".{cfg.tables.staging.name}-dropped-earlier")
    (left_aside / "gold").mkdir(parents=True)

    publication.drop_staging(cfg)

    assert not cfg.tables.staging.exists() and not left_aside.exists()
    assert sorted(p.name for p in cfg.tables.staging.parent.iterdir() if "staging" in p.name) == []


@pytest.mark.heavy  # a gate killed and retried on the demo: about 18 s
def test_a_gate_retried_after_dying_in_its_publication_completes_it_without_validating_again(
    spark, staged_demo, tmp_path, monkeypatch
):
    uninterrupted = copy_lakehouse(staged_demo, tmp_path / "uninterrupted")
    quality_gate.run(spark, uninterrupted, run_id=RUN)

    cfg = copy_lakehouse(staged_demo, tmp_path / "interrupted")
    publish_table = publication.publish_table

    def dies_at_the_last_table(cfg_: PipelineConfig, name: str, run_id: str, number: int) -> dict[str, int] | None:
        if name == PUBLISHED_TABLES[-1]:
            raise RuntimeError("injected: the gate dies in its publication")
        return publish_table(cfg_, name, run_id, number)

    with monkeypatch.context() as patched:
        patched.setattr(publication, "publish_table", dies_at_the_last_table)
        with pytest.raises(RuntimeError, match="injected"):
            quality_gate.run(spark, cfg, run_id=RUN)

    # Before the retry, what the suites would find changed (here: a bound that refuses every merged profile).
    # The retry completes the publication the suites had passed instead of validating the run again.
    stricter = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, max_cluster_size=1))
    result = quality_gate.run(spark, stricter, run_id=RUN)

    assert result.outcome.success and result.outcome.published
    expected = gold_frames(spark, uninterrupted)
    for name, actual in gold_frames(spark, cfg).items():
        assert_df_equality(
            actual, expected[name], ignore_row_order=True, ignore_nullable=True, ignore_column_order=True
        )
    recorded = json.loads((cfg.run_report_dir(RUN) / "quality.json").read_text(encoding="utf-8"))
    assert recorded["success"] and recorded["published"] and recorded["suites"]
    assert (cfg.run_report_dir(RUN) / "index.html").is_file()


def stage_candidates(cfg: PipelineConfig, run_id: str, profiles: dict[str, list[str]]) -> None:
    """Hand-made candidates, staged as resolve and unify stage theirs: profiles as given, and in every other
    published table two rows of its keys and a value."""
    for name in PUBLISHED_TABLES:
        keys = publication.PUBLICATIONS[name].keys
        rows = profiles if name == "profiles" else {**{k: [f"{k}-1", f"{k}-2"] for k in keys}, "value": ["a", "b"]}
        delta_io.overwrite_delta(pa.table(rows), cfg.tables.staged(name), run_id=run_id, job="unify")


def published_profiles(cfg: PipelineConfig) -> list[dict[str, object]]:
    return delta_io.query_delta("SELECT * FROM t ORDER BY profile_id", t=cfg.tables.profiles).to_pylist()


def publish_audit(cfg: PipelineConfig) -> list[dict[str, object]]:
    """The publish audit rows (unify_runs) without their wall-clock time."""
    sql = "SELECT run_id, profiles, inserted, updated, retired, lineage_rows FROM t ORDER BY run_id"
    return delta_io.query_delta(sql, t=cfg.tables.unify_runs).to_pylist()


def test_a_column_the_candidates_no_longer_have_leaves_the_published_table_also_in_a_resumed_publication(tmp_path):
    cfg = config_in(tmp_path)
    with_birth_dates = {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "ann"], "date_of_birth": ["1980", "1990"]}
    stage_candidates(cfg, "r1", with_birth_dates)
    publication.publish(cfg, run_id="r1")

    # The policy now holds date_of_birth sensitive: unify stages profiles without it. That publication dies
    # after committing profiles, and the next job completes it.
    stage_candidates(cfg, "r2", {"profile_id": ["pr_2", "pr_3"], "first_name": ["ann", "ion"]})
    publish_dying_at_the_last_table(cfg, "r2", tmp_path / "hidden_log")
    assert delta_io.committed_in_run(cfg.tables.profiles, "publish", "r2")
    resumed = publication.finish_interrupted_publication(cfg)

    assert published_profiles(cfg) == [
        {"profile_id": "pr_2", "first_name": "ann"},
        {"profile_id": "pr_3", "first_name": "ion"},
    ]
    # pr_2 lost its date of birth: updated. The resume reports the commit the interrupted attempt made.
    assert "profiles" in resumed.skipped_tables
    assert (resumed.profiles, resumed.inserted, resumed.updated, resumed.retired) == (2, 1, 1, 1)
    assert publish_audit(cfg)[1] == {
        "run_id": "r2",
        "profiles": 2,
        "inserted": 1,
        "updated": 1,
        "retired": 1,
        "lineage_rows": 2,
    }
    assert not cfg.tables.staging.exists()


def test_a_publication_after_one_whose_host_clock_ran_ahead_is_still_the_latest_run(tmp_path):
    """The summary and the report read the latest publication's counts by its recorded time."""
    cfg = config_in(tmp_path)
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "ann"]})
    publication.publish(cfg, run_id="r1")
    DeltaTable(str(cfg.tables.unify_runs)).update({"unified_at": "unified_at + INTERVAL '1 hour'"})
    stage_candidates(cfg, "r2", {"profile_id": ["pr_2"], "first_name": ["ann"]})

    publication.publish(cfg, run_id="r2")

    assert run_queries.UNIFY_RUN.execute(cfg.tables).select(["run_id", "profiles"]).to_pylist() == [
        {"run_id": "r2", "profiles": 1}
    ]


def r1_published_and_r2_staged(tmp_path: Path) -> PipelineConfig:
    """A lakehouse with run r1 published and run r2 staged: other profiles, and other values in the last table."""
    cfg = config_in(tmp_path)
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "ann"]})
    publication.publish(cfg, run_id="r1")
    stage_candidates(cfg, "r2", {"profile_id": ["pr_1", "pr_3"], "first_name": ["bob", "ion"]})
    last = PUBLISHED_TABLES[-1]
    keys = {k: [f"{k}-1", f"{k}-2"] for k in publication.PUBLICATIONS[last].keys}
    delta_io.overwrite_delta(pa.table({**keys, "value": ["c", "d"]}), cfg.tables.staged(last), run_id="r2", job="unify")
    return cfg


def assert_query_reads_r2(cfg: PipelineConfig) -> None:
    """The analysts' query reads r2's profiles and r2's last table: the whole publication."""
    sql = (
        "SELECT (SELECT string_agg(profile_id, ',' ORDER BY profile_id) FROM profiles) AS profiles, "
        f"(SELECT string_agg(value, ',' ORDER BY value) FROM {PUBLISHED_TABLES[-1]}) AS last"
    )
    assert query.query(cfg, sql).to_pylist() == [{"profiles": "pr_1,pr_3", "last": "c,d"}]


def test_the_analysts_query_reads_an_interrupted_publication_completed_never_half_of_it(tmp_path):
    cfg = r1_published_and_r2_staged(tmp_path)
    publish_dying_at_the_last_table(cfg, "r2", tmp_path / "hidden_log")  # profiles at r2, the last table at r1

    assert_query_reads_r2(cfg)
    assert not publication.publishing(cfg)


def test_the_analysts_query_opens_the_tables_again_when_a_publication_commits_as_it_opens_them(tmp_path, monkeypatch):
    cfg = r1_published_and_r2_staged(tmp_path)

    register = query._register_tables
    opened = []

    def register_while_r2_publishes(con, cfg):  # the gate's publication commits while the views are made
        register(con, cfg)
        opened.append(True)
        if len(opened) == 1:
            publication.publish(cfg, run_id="r2")

    monkeypatch.setattr(query, "_register_tables", register_while_r2_publishes)
    assert_query_reads_r2(cfg)
    assert len(opened) == 2


def test_the_analysts_query_opens_the_tables_again_when_the_publications_audit_row_commits_as_it_opens_them(
    tmp_path, monkeypatch
):
    """unify_runs is a publication's last commit: views made before it, checked after it, held the old row."""
    cfg = config_in(tmp_path)
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1"], "first_name": ["bob"]})
    publication.publish(cfg, run_id="r1")
    register = query._register_tables
    opened = []

    def register_while_the_audit_row_commits(con, cfg):
        register(con, cfg)
        opened.append(True)
        if len(opened) == 1:
            row = delta_io.arrow_dataset(cfg.tables.unify_runs).to_table().to_pylist()[0]
            audit = pa.Table.from_pylist([{**row, "run_id": "r2"}], schema=publication.UNIFY_RUNS_SCHEMA)
            delta_io.merge_delta(audit, cfg.tables.unify_runs, keys=("run_id",), run_id="r2", job="publish")

    monkeypatch.setattr(query, "_register_tables", register_while_the_audit_row_commits)
    runs = query.query(cfg, "SELECT string_agg(run_id, ',' ORDER BY run_id) AS runs FROM unify_runs")
    assert runs.to_pylist() == [{"runs": "r1,r2"}]
    assert len(opened) == 2


def test_the_same_candidates_published_again_after_an_erasure_purged_the_logs_commit_nothing(tmp_path):
    """A skipped table's counts came from the run's commit in its log, which a purge drops: the audit row was
    rewritten with zeros."""
    cfg = config_in(tmp_path)
    candidates = {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "ann"]}
    stage_candidates(cfg, "r1", candidates)
    publication.publish(cfg, run_id="r1")
    for path in (*(getattr(cfg.tables, name) for name in PUBLISHED_TABLES), cfg.tables.unify_runs):
        delta_io.purge_history(path, run_id="e1", job="subject_rights")
    versions = {**data_table_versions(cfg), "unify_runs": delta_io.table_version(cfg.tables.unify_runs)}

    stage_candidates(cfg, "r1", candidates)
    same = publication.publish(cfg, run_id="r1")

    assert (same.skipped_tables, same.inserted, same.updated, same.retired) == (list(PUBLISHED_TABLES), 2, 0, 0)
    audit = {"run_id": "r1", "profiles": 2, "inserted": 2, "updated": 0, "retired": 0, "lineage_rows": 2}
    assert publish_audit(cfg) == [audit]
    assert {**data_table_versions(cfg), "unify_runs": delta_io.table_version(cfg.tables.unify_runs)} == versions


def test_a_run_published_again_publishes_its_new_candidates_and_commits_nothing_for_the_same_ones(tmp_path):
    cfg = config_in(tmp_path)
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "ann"]})
    publication.publish(cfg, run_id="r1")

    # Cleared in Airflow after its extract was fixed: the same run id stages other candidates, and publishes them.
    fixed = {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "anna"]}
    stage_candidates(cfg, "r1", fixed)
    again = publication.publish(cfg, run_id="r1")

    assert published_profiles(cfg) == [
        {"profile_id": "pr_1", "first_name": "bob"},
        {"profile_id": "pr_2", "first_name": "anna"},
    ]
    assert (again.inserted, again.updated, again.retired) == (0, 1, 0)
    audit = {"run_id": "r1", "profiles": 2, "inserted": 0, "updated": 1, "retired": 0, "lineage_rows": 2}
    assert publish_audit(cfg) == [audit]
    assert not cfg.tables.staging.exists()

    # The same candidates once more (`airflow dags test` twice on one date): no table gets a commit.
    versions = {**data_table_versions(cfg), "unify_runs": delta_io.table_version(cfg.tables.unify_runs)}
    stage_candidates(cfg, "r1", fixed)
    same = publication.publish(cfg, run_id="r1")
    assert same.skipped_tables == list(PUBLISHED_TABLES)
    assert (same.inserted, same.updated, same.retired) == (0, 1, 0)
    assert {**data_table_versions(cfg), "unify_runs": delta_io.table_version(cfg.tables.unify_runs)} == versions

    # Published again and interrupted between tables: the next job completes that publication, by its number.
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_3"], "first_name": ["bob", "ion"]})
    publish_dying_at_the_last_table(cfg, "r1", tmp_path / "hidden_log")
    journal = json.loads((cfg.tables.staging / publication.JOURNAL).read_text(encoding="utf-8"))
    assert journal == {"run_id": "r1", "publication": 4}  # the third committed nothing, but completed
    resumed = publication.finish_interrupted_publication(cfg)

    assert published_profiles(cfg) == [
        {"profile_id": "pr_1", "first_name": "bob"},
        {"profile_id": "pr_3", "first_name": "ion"},
    ]
    assert "profiles" in resumed.skipped_tables
    assert (resumed.inserted, resumed.updated, resumed.retired) == (1, 0, 1)
    assert publish_audit(cfg) == [{**audit, "inserted": 1, "updated": 0, "retired": 1}]


def test_a_gate_retried_after_dying_in_its_report_writes_the_report(spark, staged_demo, tmp_path, monkeypatch):
    cfg = copy_lakehouse(staged_demo, tmp_path)

    def dies_writing_the_report(*_args: object) -> Path:
        raise RuntimeError("injected: the gate dies writing its report")

    with monkeypatch.context() as patched:
        patched.setattr(quality_gate, "write_auditor_report", dies_writing_the_report)
        with pytest.raises(RuntimeError, match="injected"):
            quality_gate.run(spark, cfg, run_id=RUN)
    run_dir = cfg.run_report_dir(RUN)
    assert json.loads((run_dir / "quality.json").read_text(encoding="utf-8"))["published"]
    assert not (run_dir / "index.html").exists()

    result = quality_gate.run(spark, cfg, run_id=RUN)

    assert result.outcome.success and result.outcome.published
    assert "passed, published" in (run_dir / "index.html").read_text(encoding="utf-8")


def test_a_gate_retried_after_it_published_and_another_run_staged_reports_its_publication(tmp_path, monkeypatch):
    """Run r1's gate published and died writing its report; before Airflow retried it, a CLI run b staged
    candidates its gate refused. The retry finds r1 published, not b's candidates to refuse as foreign."""
    cfg = config_in(tmp_path)
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "ann"]})
    publication.publish(cfg, run_id="r1")
    quality_gate.write_outcome(quality_gate.QualityOutcome("r1", True, [], published=True), cfg.run_report_dir("r1"))
    stage_candidates(cfg, "b", {"profile_id": ["pr_1", "pr_9"], "first_name": ["bob", "eve"]})
    monkeypatch.setattr(quality_gate, "write_auditor_report", lambda *_args: "report")

    result = quality_gate.run(None, cfg, run_id="r1")

    assert (result.outcome.success, result.outcome.published) == (True, True)
    assert published_profiles(cfg) == [
        {"profile_id": "pr_1", "first_name": "bob"},
        {"profile_id": "pr_2", "first_name": "ann"},
    ]
    assert quality_gate.staged_by_other_runs(cfg, "r1") == list(PUBLISHED_TABLES)  # b's, left for b's own gate

    # But r1 cleared and staged again after it published, then overwritten by b: r1's new candidates were never
    # published, so its gate refuses b's instead of reporting the first publication.
    publication.drop_staging(cfg)
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_3"], "first_name": ["bob", "ion"]})
    stage_candidates(cfg, "b", {"profile_id": ["pr_1", "pr_9"], "first_name": ["bob", "eve"]})
    with pytest.raises(IdresError, match="are not run r1's"):
        quality_gate.run(None, cfg, run_id="r1")


def test_a_gate_retried_after_its_passed_candidates_left_the_staging_unpublished_fails_and_reports_no_publication(
    tmp_path, monkeypatch
):
    """Run r1 published, was run again, and its gate passed the new candidates, recorded that, and died before
    its publication began; an erasure then dropped the staging. The retry must not report them published."""
    cfg = config_in(tmp_path)
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "ann"]})
    publication.publish(cfg, run_id="r1")
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "anna"]})
    passed = quality_gate.QualityOutcome("r1", True, [], publication=publication.next_publication(cfg, "r1"))
    quality_gate.write_outcome(passed, cfg.run_report_dir("r1"))  # as the gate records it before publishing
    publication.drop_staging(cfg)
    monkeypatch.setattr(quality_gate, "write_auditor_report", lambda *_args: "report")

    with pytest.raises(quality_gate.QualityGateError, match="passed, but they are no longer staged and were not"):
        quality_gate.run(None, cfg, run_id="r1")

    recorded = json.loads((cfg.run_report_dir("r1") / "quality.json").read_text(encoding="utf-8"))
    assert (recorded["success"], recorded["published"], recorded["publication"]) == (True, False, 2)
    assert published_profiles(cfg) == [
        {"profile_id": "pr_1", "first_name": "bob"},
        {"profile_id": "pr_2", "first_name": "ann"},
    ]

    # The same candidates published again change no table, and so no audit row: the publication that completed
    # so is still on record, and a retry of a gate that died after it reports it published.
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "ann"]})
    again = quality_gate.QualityOutcome("r1", True, [], publication=publication.next_publication(cfg, "r1"))
    quality_gate.write_outcome(again, cfg.run_report_dir("r1"))
    publication.publish(cfg, run_id="r1", number=again.publication)
    result = quality_gate.run(None, cfg, run_id="r1")
    assert (again.publication, result.outcome.success, result.outcome.published) == (2, True, True)
    passed.publication = publication.next_publication(cfg, "r1")
    quality_gate.write_outcome(passed, cfg.run_report_dir("r1"))

    # Had the publication begun and died between its tables, the retry completes it and reports it published.
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "anna"]})
    with monkeypatch.context() as patched:
        patched.setattr(publication, "drop_staging", dies_dropping_the_staging)
        with pytest.raises(RuntimeError, match="injected"):
            publication.publish(cfg, run_id="r1", number=passed.publication)
    result = quality_gate.run(None, cfg, run_id="r1")
    assert (result.outcome.success, result.outcome.published) == (True, True)
    assert published_profiles(cfg) == [
        {"profile_id": "pr_1", "first_name": "bob"},
        {"profile_id": "pr_2", "first_name": "anna"},
    ]


def dies_dropping_the_staging(*_args, **_kwargs):
    raise RuntimeError("injected: the publication dies before it drops the staging")


def test_a_gate_retried_after_its_refused_candidates_left_the_staging_fails_and_reports_nothing_published(
    tmp_path, monkeypatch
):
    """Run r1 published, was run again, and its gate refused the new candidates; an erasure then dropped the
    staging. The gate's retry finds r1 published (its first publication) and nothing staged: it must not report
    the refused candidates published."""
    cfg = config_in(tmp_path)
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "ann"]})
    publication.publish(cfg, run_id="r1")
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "anna"]})
    failed = {"expectation": "expect_column_values_to_be_in_set", "column": "consent_compliant", "description": "x"}
    counts = {"success": False, "element_count": 2, "unexpected_count": 1, "observed_value": None}
    suite = {"suite": "profiles", "table": "gold/profiles", "engine": "pandas", "success": False}
    refused = quality_gate.QualityOutcome("r1", False, [{**suite, "expectations": [{**failed, **counts}]}])
    quality_gate.write_outcome(refused, cfg.run_report_dir("r1"))
    publication.drop_staging(cfg)
    monkeypatch.setattr(quality_gate, "write_auditor_report", lambda *_args: "report")

    with pytest.raises(quality_gate.QualityGateError, match="no longer staged"):
        quality_gate.run(None, cfg, run_id="r1")

    recorded = json.loads((cfg.run_report_dir("r1") / "quality.json").read_text(encoding="utf-8"))
    assert (recorded["success"], recorded["published"]) == (False, False)
    assert published_profiles(cfg) == [
        {"profile_id": "pr_1", "first_name": "bob"},
        {"profile_id": "pr_2", "first_name": "ann"},
    ]


def test_a_gate_refuses_candidates_another_run_staged_in_part_and_publishes_nothing(spark, staged_demo, tmp_path):
    cfg = copy_lakehouse(staged_demo, tmp_path)
    before = data_table_versions(cfg)
    # Another run's unify restaged one table and died before the others.
    permissions = cfg.tables.staged("profile_permissions")
    rows = delta_io.read_delta(spark, permissions).localCheckpoint()
    delta_io.overwrite_delta(rows, permissions, run_id="other", job="unify")

    with pytest.raises(IdresError, match=r"staged profile_permissions are not run demo's"):
        quality_gate.run(spark, cfg, run_id=RUN)
    assert data_table_versions(cfg) == before


def test_unify_and_the_gate_refuse_the_staging_of_a_resolve_that_died_between_its_tables(spark, staged_demo, tmp_path):
    cfg = copy_lakehouse(staged_demo, tmp_path)
    # Resolve writes its four tables at once; killed, it left two of them (here: the last two never written).
    for name in ("profile_registry", "identity_events"):
        shutil.rmtree(cfg.tables.staged(name))
    before = {**data_table_versions(cfg), **{n: delta_io.table_version(cfg.tables.staged(n)) for n in GOLD_TABLES}}
    unfinished = r"resolve did not finish: it staged pairwise_matches, record_profiles but not profile_registry, "

    for job in (unify, quality_gate):
        with pytest.raises(IdresError, match=unfinished + r"identity_events; rerun resolve for this run"):
            job.run(spark, cfg, run_id=RUN)
    after = {**data_table_versions(cfg), **{n: delta_io.table_version(cfg.tables.staged(n)) for n in GOLD_TABLES}}
    assert after == before


@pytest.mark.heavy  # the whole pipeline twice on the demo: about 40 s
def test_the_pipeline_run_again_on_the_same_extracts_commits_to_no_data_table(spark, staged_demo, tmp_path):
    cfg = copy_lakehouse(staged_demo, tmp_path)
    quality_gate.run(spark, cfg, run_id=RUN)
    rows = delta_io.row_count(cfg.tables.bronze)
    versions = data_table_versions(cfg)
    assert None not in versions.values(), versions

    for mode in ("incremental", "full"):
        pipeline.run(spark, cfg, run_id=f"again-{mode}", mode=mode, cutoff=DEMO_CUTOFF)
        assert data_table_versions(cfg) == versions, mode

    read = delta_io.query_delta(
        "SELECT run_id, sum(rows_read) AS n FROM r GROUP BY 1", r=cfg.tables.ingest_runs
    ).to_pylist()
    assert {r["run_id"]: r["n"] for r in read if r["run_id"].startswith("again-")} == {
        "again-incremental": 0,  # every extract byte-identical to the one last read: skipped
        "again-full": {r["run_id"]: r["n"] for r in read}["demo"],
    }
    assert delta_io.row_count(cfg.tables.bronze) == rows


@pytest.fixture
def ingested(spark, tmp_path) -> PipelineConfig:
    """A lakehouse holding one ingest run of 10 demo people."""
    cfg = config_in(tmp_path)
    demo_data.generate(cfg, people=10, seed=3)
    ingest.run(spark, cfg, run_id="first")
    return cfg


@pytest.mark.heavy  # two jobs in child processes: about 16 s
def test_a_job_that_finds_the_lakehouse_locked_fails_clearly_or_waits_for_it(ingested, tmp_path):
    cfg = ingested
    versions = {name: delta_io.table_version(path) for name, path in cfg.tables.all().items()}
    lock_path = lakehouse_lock_path(cfg)
    other_job = FileLock(str(lock_path))
    other_job.acquire()  # another run holds the lakehouse
    try:
        impatient = start_job("ingest", cfg, conf_with_lock_timeout(tmp_path, 0.5), "--run-id", "impatient")
        _, log = impatient.communicate(timeout=120)
        assert impatient.returncode == 2, log[-3000:]
        assert f"lakehouse lock {lock_path} is held by another idres job; gave up after 0.5 s" in log
        assert {name: delta_io.table_version(path) for name, path in cfg.tables.all().items()} == versions

        patient = start_job("ingest", cfg, conf_with_lock_timeout(tmp_path, 300), "--run-id", "patient")
        waiting = f"waiting up to 300 s for the lakehouse lock {lock_path}"
        assert any(waiting in line for line in patient.stderr), "the job did not say it waits for the lock"
        assert patient.poll() is None
    finally:
        other_job.release()
    _, log = patient.communicate(timeout=300)
    assert patient.returncode == 0, log[-3000:]
    runs = delta_io.query_delta("SELECT DISTINCT run_id FROM r", r=cfg.tables.ingest_runs).column("run_id")
    assert sorted(runs.to_pylist()) == ["first", "patient"]


@pytest.mark.slow
def test_a_canary_identity_reaches_the_tables_and_no_log_xcom_report_commit_or_delta_log(local_dag_run):
    lakehouse, home = Path(local_dag_run["IDRES_LAKEHOUSE"]), Path(local_dag_run["AIRFLOW_HOME"])
    tables = load_config().with_paths(lakehouse=lakehouse).tables

    def table_text(path: Path) -> str:
        return json.dumps(delta_io.query_delta("SELECT * FROM t", t=path).to_pylist(), default=str, ensure_ascii=False)

    # Planted where it must be found: the canary is personal data the pipeline holds.
    assert canary_found(table_text(tables.bronze)) >= {"zqxcanar", "canary.zq7", "722 913 572"}
    assert canary_found(table_text(tables.silver)) >= {"zqxcanar", "canary.zq7", "722913572"}
    assert canary_found(table_text(tables.profiles)) >= {"zqxcanar", "canary.zq7"}

    with closing(sqlite3.connect(home / "airflow.db")) as db:
        xcom = db.execute("SELECT * FROM xcom").fetchall()
    assert xcom, "the run pushed no XCom"
    # `airflow dags test` writes the task logs, with the jobs' stdout and stderr, to its console, not logs/.
    console = (home.parent / "dag_run.log").read_text(encoding="utf-8")
    assert "quality gate: profiles passed" in console and "published: " in console
    task_logs = files_text(home / "logs") if (home / "logs").is_dir() else ""
    reports = Path(local_dag_run["IDRES_REPORTS"])
    assert list(reports.glob("runs/*/data_docs/index.html")) and list(reports.glob("runs/*/index.html"))
    commits = subprocess.run(
        ["git", "log", "--format=%an%ae%cn%ce%s%b"], cwd=PROJECT, capture_output=True, text=True, check=True
    ).stdout
    assert commits

    leaks = {
        "Airflow task logs": canary_found(task_logs),
        "XCom": canary_found(repr(xcom)),
        "Airflow metadata database": canary_found((home / "airflow.db").read_bytes().decode("utf-8", "replace")),
        "dags test console (task logs, jobs' stdout and stderr)": canary_found(console),
        "reports (GX results, Data Docs, auditor report, model charts)": canary_found(files_text(reports)),
        "git commit metadata": canary_found(commits),
        "Delta logs (file statistics, commit info)": canary_found(
            "".join(files_text(log) for log in sorted(lakehouse.rglob("_delta_log")))
        ),
    }
    assert leaks == {where: set() for where in leaks}


# Airflow allows run ids of 250 characters; these take 2 bytes each in UTF-8, a file name at most 255 bytes.
LONG_RUN_ID = "manual__" + "й" * 242


@pytest.mark.parametrize(
    ("action", "run_id", "incident_name"),
    [
        ("collect", "manual__crash", "-crashing-manual__crash.txt"),
        # a job in a child process each (about 9 s): make test runs the first, make test-faults all three
        pytest.param("persist", "manual__crash", "-crashing-manual__crash.txt", marks=pytest.mark.heavy),
        pytest.param(
            "write",
            LONG_RUN_ID,
            f"-crashing-manual__{'_' * 79}-{hashlib.sha256(LONG_RUN_ID.encode()).hexdigest()[:12]}.txt",
            marks=pytest.mark.heavy,
        ),
    ],
)
def test_a_crash_on_a_value_logs_only_the_error_class_and_keeps_its_text_beside_the_data(
    tmp_path, action, run_id, incident_name
):
    cfg = config_in(tmp_path)
    log = run_crashing_job(cfg, tmp_path, action=action, run_id=run_id)
    assert canary_found(log) == set()
    said = r"crashing failed: \w+ at jobs/runner\.py:\d+ in run_job\. Its full text may quote personal data"
    assert re.search(said, log), log[-3000:]
    incidents = list((cfg.lakehouse / "_incidents").iterdir())
    assert [p.name.endswith(incident_name) for p in incidents] == [True]
    assert str(incidents[0]) in log
    assert canary_found(incidents[0].read_text(encoding="utf-8")) == {"zqxcanar"}
    assert incidents[0].stat().st_mode & 0o777 == 0o600


def test_an_error_whose_jvm_died_is_described_by_its_class_never_its_message():
    """The failure handler asked the JVM for a Py4J error's Java class: with the JVM gone that raised too, and
    Python printed the original error, message and all."""

    class GoneJvm:
        def getClass(self):  # Py4J's name
            raise ConnectionRefusedError("the gateway is gone")

    error = RuntimeError("cannot parse 'zqxcanar'")
    error.java_exception = GoneJvm()
    assert describe_without_values(error) == "RuntimeError"


def test_candidates_that_retype_a_column_replace_a_whole_table_and_stop_before_a_table_they_add_to(tmp_path):
    cfg = config_in(tmp_path)
    stage_candidates(cfg, "r1", {"profile_id": ["pr_1", "pr_2"], "first_name": ["bob", "ann"], "visits": [1, 2]})
    publication.publish(cfg, run_id="r1")

    # Unify now holds visits as a fraction. Profiles are replaced whole, so they take the new type: a merge would
    # have cast 3.5 to the old long column as 3.
    stage_candidates(cfg, "r2", {"profile_id": ["pr_2", "pr_3"], "first_name": ["ann", "ion"], "visits": [2.0, 3.5]})
    result = publication.publish(cfg, run_id="r2")

    assert published_profiles(cfg) == [
        {"profile_id": "pr_2", "first_name": "ann", "visits": 2.0},
        {"profile_id": "pr_3", "first_name": "ion", "visits": 3.5},
    ]
    assert (result.inserted, result.updated, result.retired) == (1, 1, 1)

    # The registry keeps every id ever issued, so its rows cannot be replaced: a candidate registry that retypes a
    # column stops the publication before its first commit, naming the column and both types.
    versions = {**data_table_versions(cfg), "unify_runs": delta_io.table_version(cfg.tables.unify_runs)}
    stage_candidates(cfg, "r3", {"profile_id": ["pr_3"], "first_name": ["ion"], "visits": [4.0]})
    registry = pa.table({"profile_id": ["profile_id-1"], "value": [7]})
    delta_io.overwrite_delta(registry, cfg.tables.staged("profile_registry"), run_id="r3", job="resolve")
    with pytest.raises(ColumnTypeChangeError, match=r"profile_registry: .* value \(string -> long\); nothing") as err:
        publication.publish(cfg, run_id="r3")

    assert err.value.retyped == {"value": ("string", "long")}
    assert {**data_table_versions(cfg), "unify_runs": delta_io.table_version(cfg.tables.unify_runs)} == versions
    assert not (cfg.tables.staging / publication.JOURNAL).exists()
    assert delta_io.table_exists(cfg.tables.staged("profiles"))  # left staged for inspection

    # Likewise the audit row, the publication's last commit: a unify_runs whose counts are text (an older version's
    # table, or one altered by hand) stops it before the first commit, not after every data table's.
    stage_candidates(cfg, "r3", {"profile_id": ["pr_3"], "first_name": ["ion"], "visits": [4.0]})
    audit = pa.table({"run_id": ["r0"], "profiles": ["2"]})
    shutil.rmtree(cfg.tables.unify_runs)
    delta_io.overwrite_delta(audit, cfg.tables.unify_runs, run_id="r0", job="publish")
    versions = {**data_table_versions(cfg), "unify_runs": delta_io.table_version(cfg.tables.unify_runs)}
    with pytest.raises(ColumnTypeChangeError, match=r"unify_runs: .* profiles \(string -> long\); nothing"):
        publication.publish(cfg, run_id="r3")
    assert {**data_table_versions(cfg), "unify_runs": delta_io.table_version(cfg.tables.unify_runs)} == versions
    assert not (cfg.tables.staging / publication.JOURNAL).exists()


KILLED_PURGE = """
import os, signal, sys
from deltalake import DeltaTable
from jobs import delta_io
DeltaTable.create_checkpoint = lambda table: os.kill(os.getpid(), signal.SIGKILL)
delta_io.purge_history(sys.argv[1], run_id=sys.argv[2], job="subject_rights")
"""


def test_what_killed_purges_and_writes_left_is_undone_by_the_purges_retry_or_the_next_holder_of_the_lock(cfg):
    """A purge killed between setting the table's log retention to none and setting it back (SIGKILL skips its
    finally) left it at none, so the table's next checkpoint dropped its history. A killed write left its spill
    folder: rows outside any table, out of vacuum's and an erasure's reach."""
    path = cfg.tables.profile_registry
    write_deltalake(str(path), pa.table({"id": [1, 2]}), configuration={delta_io.LOG_RETENTION: "interval 90 days"})
    write_deltalake(str(path), pa.table({"id": [3]}), mode="append")

    def retention() -> str:
        return DeltaTable(str(path)).metadata().configuration[delta_io.LOG_RETENTION]

    def killed_purge(run_id: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(PROJECT)}
        purge = subprocess.run([sys.executable, "-c", KILLED_PURGE, str(path), run_id], env=env, check=False)
        assert purge.returncode == -signal.SIGKILL
        assert retention() == delta_io.NO_LOG_RETENTION

    killed_purge("e1")
    delta_io.purge_history(path, run_id="e1", job="subject_rights")  # the retry, with no lock taken
    assert retention() == "interval 90 days"

    killed_purge("e2")
    spills = [
        cfg.tables.profiles.parent / f"{delta_io.SPILL_PREFIX}profiles",
        cfg.tables.staged("profile_lineage").parent / f"{delta_io.SPILL_PREFIX}profile_lineage_replacing",
    ]
    for spill in spills:
        spill.mkdir(parents=True)
        pq.write_table(pa.table({"middle_name": ["Bohdanivna"]}), spill / "part-0.parquet")
    with lakehouse_lock(cfg, "ingest"):
        assert retention() == "interval 90 days"
        assert [s for s in spills if s.exists()] == []
    restored = DeltaTable(str(path)).history(1)[0]
    assert (restored["run_id"], restored["job"]) == ("e2", "subject_rights")
    version = DeltaTable(str(path)).version()
    with lakehouse_lock(cfg, "ingest"):
        pass
    assert DeltaTable(str(path)).version() == version
    assert sorted(p.name for p in path.parent.iterdir()) == ["profile_registry"]

    # a marker that does not read whole (cut short by a crash before markers were written atomically)
    DeltaTable(str(path)).alter.set_table_properties({delta_io.LOG_RETENTION: delta_io.NO_LOG_RETENTION})
    (path.parent / f"{delta_io.PURGE_MARKER_PREFIX}profile_registry").write_text("{", encoding="utf-8")
    with lakehouse_lock(cfg, "ingest"):
        assert retention() == delta_io.DEFAULT_LOG_RETENTION
    assert sorted(p.name for p in path.parent.iterdir()) == ["profile_registry"]


def test_an_unexpected_error_is_recorded_while_the_job_still_holds_the_lakehouse_lock(spark, tmp_path, monkeypatch):
    """An erasure waiting for the lock scans the incident files: a failed job's must be whole by the time it gets it."""
    monkeypatch.setenv("IDRES_LAKEHOUSE", str(tmp_path / "lakehouse"))
    monkeypatch.setattr(runner, "build_spark_session", lambda *args, **kwargs: spark)
    held_while_recording = []
    recorded = runner.record_incident

    def recording(cfg: PipelineConfig, job: str, run_id: str, exc: BaseException) -> Path:
        with lakehouse_lock_path(cfg).open("a") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held_while_recording.append(True)
            else:
                held_while_recording.append(False)
        return recorded(cfg, job, run_id, exc)

    def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> None:
        raise ValueError("cannot parse 'Bohdanivna'")

    monkeypatch.setattr(runner, "record_incident", recording)
    with pytest.raises(SystemExit) as exit_code:
        runner.run_job("crashing", run, ["--run-id", "r-1"])
    assert exit_code.value.code == 1
    assert held_while_recording == [True]
    (incident,) = (tmp_path / "lakehouse" / runner.INCIDENTS_DIR).iterdir()
    assert "Bohdanivna" in incident.read_text(encoding="utf-8")


KILLED_WITH_SCRATCH = """
import os, signal
from pathlib import Path
from jobs.scratch import ScratchDir
held = [ScratchDir(kind) for kind in ("checkpoints", "duckdb")]
for folder in held:
    (Path(folder.name) / "part-0.parquet").write_text("Bohdanivna")
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_scratch_folders_of_a_killed_job_are_removed_by_the_next_holder_of_the_lock(cfg, tmp_path, monkeypatch):
    """Splink's Spark checkpoints and DuckDB's spill hold copies of records; a killed job cannot remove its own."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "TMPDIR": str(temp)}
    killed = subprocess.run([sys.executable, "-c", KILLED_WITH_SCRATCH], env=env, check=False)
    assert killed.returncode == -signal.SIGKILL
    assert len(list(temp.glob("idres-*"))) == 2
    running = ScratchDir("duckdb")  # a running job's, this process's own
    # a running job's in another container sharing the temp dir: its pid is none here, but it holds the lock
    elsewhere = temp / "idres-duckdb-4194304-abc"  # above the largest pid Linux gives
    elsewhere.mkdir()
    owner = (elsewhere / ".owner").open("w")
    fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    just_made = temp / f"idres-duckdb-{os.getpid()}-new"  # its owner lock not taken yet: its live pid keeps it
    not_a_pid = temp / "idres-x-99999999999-y"  # no process can have it: kept, and no job fails on it
    other = temp / "idres-notes"  # not a scratch folder
    for folder in (just_made, not_a_pid, other):
        folder.mkdir()

    with lakehouse_lock(cfg, "ingest"):
        assert sorted(temp.iterdir()) == sorted([Path(running.name), elsewhere, just_made, not_a_pid, other])
    owner.close()  # that job ended: the kernel dropped its lock
    with lakehouse_lock(cfg, "ingest"):
        assert sorted(temp.iterdir()) == sorted([Path(running.name), just_made, not_a_pid, other])
    running.cleanup()


JVM_KILLED_WITH_SHUFFLE_FILES = """
import os, signal
from pyspark import StorageLevel
from jobs.config import load_config
from jobs.spark_session import build_spark_session
spark = build_spark_session(load_config().spark, "killed")
rows = spark.createDataFrame([("Bohdanivna", i) for i in range(1000)], "name string, n int")
rows.repartition(3, "n").persist(StorageLevel.DISK_ONLY).count()
# the kernel's OOM killer takes the largest process, the JVM, which then runs no shutdown hook
os.kill(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid(), signal.SIGKILL)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.heavy  # a JVM of its own: about 20 s
def test_sparks_shuffle_and_spill_files_of_a_killed_job_are_in_its_scratch_folder_and_removed_with_it(
    cfg, tmp_path, monkeypatch
):
    """Spark writes shuffle, spill and disk-cached blocks (copies of records) under its local dir, which a killed
    JVM leaves behind: the job's scratch folder holds them, so the next holder of the lock removes them."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "TMPDIR": str(temp)}
    env.pop("SPARK_LOCAL_DIRS", None)
    killed = subprocess.run([sys.executable, "-c", JVM_KILLED_WITH_SHUFFLE_FILES], env=env, check=False)
    assert killed.returncode == -signal.SIGKILL
    blocks = [path for path in temp.glob("idres-spark-*/blockmgr-*/**/*") if path.is_file()]
    assert blocks, "the killed job's shuffle and cached blocks are in its scratch folder"
    with lakehouse_lock(cfg, "ingest"):
        assert list(temp.iterdir()) == []


@pytest.mark.parametrize(
    ("job", "missing"),
    [
        ("standardize", "table bronze/customers is missing: run the ingest stage first"),
        ("consent", "table silver/customers is missing: run the standardize stage first"),
        ("train", "table silver/admitted_customers is missing: run the consent_gate stage first"),
        ("resolve", "table silver/admitted_customers is missing: run the consent_gate stage first"),
    ],
)
def test_a_stage_run_before_the_stage_it_reads_from_names_the_missing_table(
    job, missing, spark, tmp_path, monkeypatch, caplog
):
    """A task tested alone, or a worker whose IDRES_LAKEHOUSE names an empty folder, failed with a DeltaError whose
    table only its incident file named."""
    import importlib

    monkeypatch.setenv("IDRES_LAKEHOUSE", str(tmp_path / "lakehouse"))
    monkeypatch.setattr(runner, "build_spark_session", lambda *args, **kwargs: spark)
    with caplog.at_level(logging.ERROR, logger="idres"), pytest.raises(SystemExit) as exit_code:
        importlib.import_module(f"jobs.{job}").main(["--run-id", "r-1"])
    assert exit_code.value.code == 2
    assert any(missing in record.getMessage() for record in caplog.records)
    assert not (tmp_path / "lakehouse" / runner.INCIDENTS_DIR).exists()
