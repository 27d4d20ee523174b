"""One Spark session for the whole suite, small configs rooted in temporary folders, and one local run of
the identity_resolution DAG shared by the tests that need a whole pipeline's output."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from pyspark.sql import SparkSession

from jobs import consent, delta_io, demo_data, ingest, standardize
from jobs.config import DEFAULT_CONF_DIR, PipelineConfig, SparkConfig, load_config
from jobs.engines import open_engine
from jobs.linkage import latest_model, linkage_records
from jobs.spark_session import build_spark_session
from jobs.train import train_and_save

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEMO_DAG_PEOPLE = 40
DRIVER_CLASS_ARCHIVE = Path(sys.prefix) / "idres-driver.jsa"  # the Makefile's JVM_ARCHIVE, in the project's venv
DEMO_CUTOFF = "2026-11-01T00:00:00+00:00"  # the consent cutoff of the in-process demo runs (trained, staged_demo)

TEST_SPARK = SparkConfig(
    master="local[2]",
    shuffle_partitions=2,
    conf={**load_config().spark.conf, "spark.ui.enabled": "false", "spark.driver.memory": "2g"},
)


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> SparkSession:
    session = build_spark_session(TEST_SPARK, "idres-tests", checkpoint_dir=str(tmp_path_factory.mktemp("checkpoints")))
    yield session
    session.stop()


T = TypeVar("T")


def run_or_cancel(spark: SparkSession, action: Callable[[], T], seconds: float) -> T:
    """action's result; the test fails, and its Spark jobs are cancelled, if it runs longer than seconds.
    For a guard against a hang, with a bound far above the work's normal time: not a speed target."""
    outcome: dict[str, Any] = {}

    def guarded() -> None:
        spark.sparkContext.setJobGroup("idres-test-guarded", "a test's guarded action", interruptOnCancel=True)
        try:
            outcome["value"] = action()
        except BaseException as error:  # re-raised in the test's thread
            outcome["error"] = error

    worker = threading.Thread(target=guarded, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        spark.sparkContext.cancelJobGroup("idres-test-guarded")
        worker.join(60)
        pytest.fail(f"the action was still running after {seconds} s; its Spark jobs were cancelled")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def edited_conf(tmp_path: Path, file: str, *changes: tuple[tuple[str | int, ...], Any]) -> Path:
    """A copy of the project's conf (or the copy already there, edited before) whose YAML file has each (key path,
    value) change set."""
    conf = tmp_path / "conf"
    if not conf.is_dir():
        shutil.copytree(DEFAULT_CONF_DIR, conf)
    data = yaml.safe_load((conf / file).read_text(encoding="utf-8"))
    for (*parents, last), value in changes:
        node = data
        for step in parents:
            node = node[step]
        node[last] = value
    (conf / file).write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return conf


def config_in(root: Path) -> PipelineConfig:
    """The project's config with every data folder (lakehouse, landing, truth, models, reports) under root."""
    return load_config().rooted_at(root)


def airflow_env_in(root: Path, models: Path | None = None) -> dict[str, str]:
    """The environment `airflow` runs the project's DAGs in: Airflow's home, every data folder and the temp
    dir under root (laid out as config_in(root)), the models folder models when given, Spark stages on
    local[2]."""
    data = config_in(root)
    (root / "tmp").mkdir(exist_ok=True)
    return {
        **os.environ,
        "TMPDIR": str(root / "tmp"),
        "AIRFLOW_HOME": str(root / "airflow_home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",  # task logs in full, for the tests that read them
        "AIRFLOW_CONN_SPARK_DEFAULT": '{"conn_type": "spark", "host": "local[2]"}',
        "IDRES_LAKEHOUSE": str(data.lakehouse),
        "IDRES_LANDING": str(data.landing),
        "IDRES_GROUND_TRUTH": str(data.ground_truth),
        "IDRES_MODELS": str(models or data.models),
        "IDRES_REPORTS": str(data.reports),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def dag_run_config(env: dict[str, str]) -> PipelineConfig:
    """The project's config with the data folders an airflow_env_in environment points its runs at."""
    return load_config().with_paths(
        lakehouse=env["IDRES_LAKEHOUSE"],
        landing=env["IDRES_LANDING"],
        ground_truth=env["IDRES_GROUND_TRUTH"],
        models=env["IDRES_MODELS"],
        reports=env["IDRES_REPORTS"],
    )


def run_airflow(env: dict[str, str], *args: str) -> str:
    """Run the airflow CLI in env and return its stdout and stderr; fail the test with their end if it fails."""
    proc = subprocess.run([str(BIN / "airflow"), *args], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def run_demo_dag(env: dict[str, str], logical_date: str, mode: str = "full", demo_people: int = DEMO_DAG_PEOPLE) -> str:
    """One `airflow dags test` run of identity_resolution on demo_people demo people (0: the landing as it is);
    returns the run's console output (every task's log and the jobs' stdout and stderr)."""
    conf = json.dumps({"demo_people": demo_people, "mode": mode})
    return run_airflow(env, "dags", "test", "identity_resolution", logical_date, "-c", conf)


# A made-up identity no demo person has; local_dag_run plants it in one source record so tests can look
# for it wherever personal data must never go (logs, XCom, reports), and find it where it must (the tables).
CANARY = {
    "last_name": "Zqxcanary",
    "first_name": "Zqxcanarina",
    "email": "canary.zq7@example.com",
    "phone": "0722 913 572",
}


def plant_canary(cfg: PipelineConfig, source: str = "ro_shop") -> str:
    """Give one record of source's JSON-lines extract the CANARY identity; returns its source record id.

    The record chosen holds a contract basis for profile unification, so it is admitted and reaches gold.
    """
    src = cfg.source(source)
    id_column = src.columns["source_record_id"]
    events = [json.loads(line) for line in src.consent_feed.path.read_text(encoding="utf-8").splitlines()]
    unify_purpose = cfg.policy.unification_purpose
    contracted = {
        e["subject_id"]
        for e in events
        if (e["purpose"], e["lawful_basis"], e["status"]) == (unify_purpose, "contract", "granted")
    }
    lines = src.path.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if json.loads(line)[id_column] in contracted)
    row = json.loads(lines[index])
    row.update({src.columns[column]: value for column, value in CANARY.items()})
    lines[index] = json.dumps(row, ensure_ascii=False, sort_keys=True)
    src.path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return row[id_column]


def job_env(cfg: PipelineConfig) -> dict[str, str]:
    """The environment a job process runs in against cfg's data folders."""
    return {
        **os.environ,
        "PYTHONPATH": str(PROJECT),
        "IDRES_LAKEHOUSE": str(cfg.lakehouse),
        "IDRES_LANDING": str(cfg.landing),
        "IDRES_GROUND_TRUTH": str(cfg.ground_truth),
        "IDRES_MODELS": str(cfg.models),
        "IDRES_REPORTS": str(cfg.reports),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }


CANARY_NEEDLES = ("zqxcanar", CANARY["email"].split("@")[0], "722913572", CANARY["phone"][1:])


def canary_found(text: str) -> set[str]:
    """The canary's fragments (names, email, phone as written and in E.164) in text, case-insensitively."""
    lowered = text.lower()
    return {needle for needle in CANARY_NEEDLES if needle in lowered}


def files_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", errors="replace") for p in sorted(root.rglob("*")) if p.is_file())


# A job that meets a value it cannot handle, in a Spark task, and whose error quotes the value (as Spark and
# pyarrow errors do): an unexpected crash, not an IdresError.
CRASHING_JOB = """
from pyspark.sql import functions as F, types as T
from jobs.runner import run_job

def run(spark, cfg, run_id):
    @F.udf(T.StringType())
    def parse(name):
        raise ValueError(f"cannot parse {name!r}")

    parsed = spark.createDataFrame([({name!r},)], "name string").select(parse("name"))
    {action}

run_job("crashing", run, ["--run-id", {run_id!r}])
"""
CRASHING_ACTIONS = {
    "collect": "parsed.collect()",
    "write": "parsed.write.parquet(str(cfg.lakehouse / 'crashing_output'))",  # Spark's writer logs task failures
    "persist": "parsed.persist().count()",  # the block manager logs a failure computing a cached partition
}


def run_crashing_job(
    cfg: PipelineConfig, folder: Path, action: str = "collect", run_id: str = "manual__crash", **env: str
) -> str:
    """Run CRASHING_JOB, on the canary's first name, against cfg's data folders (env added to job_env's), its
    failing task in a collect, a write or a persisted frame (CRASHING_ACTIONS); return its output, having checked
    it failed as an unexpected error does (exit code 1)."""
    job = folder / "crashing_job.py"
    source = CRASHING_JOB.format(name=CANARY["first_name"], action=CRASHING_ACTIONS[action], run_id=run_id)
    job.write_text(source, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(job)], env={**job_env(cfg), **env}, capture_output=True, text=True, timeout=300
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    return log


@pytest.fixture(scope="session")
def local_dag_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of one local identity_resolution DAG run into a fresh lakehouse (it trains the model), on
    DEMO_DAG_PEOPLE demo people (what the DAG's demo_data task writes) with the CANARY planted in one record.
    The run's console output is kept in dag_run.log beside AIRFLOW_HOME."""
    root = tmp_path_factory.mktemp("dag-local")
    env = airflow_env_in(root)
    demo_data.generate(config_in(root), people=DEMO_DAG_PEOPLE, corrupt=True)
    plant_canary(config_in(root))
    run_airflow(env, "db", "migrate")
    (root / "dag_run.log").write_text(run_demo_dag(env, "2026-01-01", demo_people=0), encoding="utf-8")
    return env


@pytest.fixture
def cfg(tmp_path: Path) -> PipelineConfig:
    return config_in(tmp_path)


@pytest.fixture(scope="session")
def corrupt_demo_cfg(tmp_path_factory: pytest.TempPathFactory) -> PipelineConfig:
    """60 demo people with known bad rows appended to every source (generated once)."""
    cfg = config_in(tmp_path_factory.mktemp("corrupt-demo"))
    demo_data.generate(cfg, people=60, seed=7, corrupt=True)
    return cfg


def write_ua_crm(cfg: PipelineConfig, rows: list[dict[str, str]]) -> None:
    """Write rows (canonical column -> value) as the Ukrainian CRM's CSV extract."""
    import csv

    source = cfg.source("ua_crm")
    header = list(source.columns.values())
    source.path.parent.mkdir(parents=True, exist_ok=True)
    with source.path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter=source.delimiter)
        writer.writerow(header)
        for row in rows:
            writer.writerow([row.get(canonical, "") for canonical in source.columns])


def write_consent_feed(cfg: PipelineConfig, source: str, lines: list[str]) -> None:
    """Write a region's consent feed, one JSON line (or deliberately broken line) each."""
    path = cfg.source(source).consent_feed.path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture(scope="session")
def trained(spark, tmp_path_factory):
    """A config whose models folder holds a model trained on Spark on 400 demo people."""
    cfg = config_in(tmp_path_factory.mktemp("resolve"))
    demo_data.generate(cfg, people=400, seed=11)
    ingest.run(spark, cfg, run_id="demo")
    standardize.run(spark, cfg, run_id="demo")
    consent.run(spark, cfg, run_id="demo", cutoff=DEMO_CUTOFF)
    with open_engine(spark, "spark") as db:
        model = train_and_save(db, cfg, linkage_records(db, cfg))
    assert latest_model(cfg.models, cfg.linkage, cfg.policy) == model
    assert {p.name for p in (cfg.reports / "models" / model.version).iterdir()} == {
        "match_weights.html",
        "m_u_parameters.html",
        "unlinkables.html",
    }
    return cfg


def copy_lakehouse(cfg: PipelineConfig, root: Path) -> PipelineConfig:
    """A copy of cfg's lakehouse and model charts under root, sharing cfg's models folder."""
    import dataclasses
    import shutil

    shutil.copytree(cfg.lakehouse, root / "lakehouse")
    if (cfg.reports / "models").exists():
        shutil.copytree(cfg.reports / "models", root / "reports" / "models")
    return dataclasses.replace(
        cfg.with_paths(lakehouse=root / "lakehouse", reports=root / "reports"), models=cfg.models
    )


def data_table_versions(cfg: PipelineConfig) -> dict[str, int | None]:
    """The version of every bronze, silver and gold table (the audit tables record each run by design)."""
    lakehouse = cfg.lakehouse
    return {
        str(path.relative_to(lakehouse)): delta_io.table_version(path)
        for path in cfg.tables.all().values()
        if path.relative_to(lakehouse).parts[0] in ("bronze", "silver", "gold")
    }


@pytest.fixture(scope="session")
def staged_demo(spark, trained, tmp_path_factory) -> PipelineConfig:
    """The trained demo lakehouse (ingested, standardized, gated), resolved and unified by run 'demo':
    gold candidates staged, nothing published yet. Copy it (copy_lakehouse) before changing it."""
    from jobs import resolve, unify

    cfg = copy_lakehouse(trained, tmp_path_factory.mktemp("staged-demo"))
    resolve.run(spark, cfg, run_id="demo")
    unify.run(spark, cfg, run_id="demo")
    return cfg
