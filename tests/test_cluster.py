"""Spark standalone cluster: the identity_resolution DAG gives the same gold tables as a local run, and no
cluster log holds a value a failed task quoted."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from chispa import assert_approx_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import delta_io
from jobs.config import load_config
from jobs.local_cluster import (
    SPARK_CONF_DIR,
    LocalCluster,
    LocalClusterError,
    _launch,
    local_cluster,
    start_cluster,
    stop_cluster,
)
from jobs.spark_session import JVM_LOGGERS_QUOTING_ERRORS
from tests.conftest import (
    airflow_env_in,
    canary_found,
    config_in,
    files_text,
    run_airflow,
    run_crashing_job,
    run_demo_dag,
)

COMPARED = ("profiles", "record_profiles", "profile_sources")


def keyed_by_first_record(spark: SparkSession, lakehouse: Path) -> dict[str, DataFrame]:
    """The compared gold tables with profile_id replaced by the profile's smallest record id.

    Profile ids are not comparable across two fresh lakehouses: a new id hashes the run id (Airflow's
    manual__<start time>) with the cluster's smallest record id (jobs.profile_ids), so that record id
    is the deterministic key here.
    """
    tables = load_config().with_paths(lakehouse=lakehouse).tables
    frames = {name: delta_io.read_delta(spark, getattr(tables, name)) for name in COMPARED}
    keys = frames["record_profiles"].groupBy("profile_id").agg(F.min("record_id").alias("profile_key"))
    return {
        name: df.join(keys, "profile_id").select("profile_key", *(c for c in df.columns if c != "profile_id"))
        for name, df in frames.items()
    }


def processes_mentioning(text: str) -> list[str]:
    """Ids of the running processes whose command line mentions text."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if text.encode() in cmdline.read_bytes():
                found.append(cmdline.parent.name)
        except OSError:  # the process ended meanwhile
            continue
    return found


def test_a_cluster_that_does_not_come_up_in_time_is_stopped_and_the_error_names_its_logs(tmp_path):
    with pytest.raises(LocalClusterError, match=f"no ALIVE worker .* see master.log and worker.log in {tmp_path}"):
        start_cluster(tmp_path, cores=1, memory="512m", timeout=0.5)
    assert processes_mentioning(str(tmp_path)) == []
    assert not (tmp_path / "cluster.json").exists()


def test_stopping_a_daemon_still_in_spark_class_stops_the_launcher_it_started(tmp_path):
    # spark-class runs Spark's launcher in a subshell before it execs the daemon; a stop in that moment (as
    # when a cluster does not come up within its timeout) must not leave the subshell running. This stand-in
    # spark-class stays at that step: a child process whose command line names tmp_path, like the launcher's.
    fake = tmp_path / "spark-class"
    fake.write_text('#!/bin/bash\nbash -c "sleep 300; true" "$1" &\nwait\n', encoding="utf-8")
    fake.chmod(0o755)
    pids = [_launch(str(fake), [str(tmp_path / name)], tmp_path / f"{name}.log") for name in ("master", "worker")]
    # While a stand-in's child forks sleep, the fork shows the child's command line for an instant: the count
    # is read until two readings 0.3 s apart agree.
    deadline = time.monotonic() + 10
    counts = [-1, len(processes_mentioning(str(tmp_path)))]
    while (counts[-1] != 4 or counts[-2] != 4) and time.monotonic() < deadline:
        time.sleep(0.3)
        counts.append(len(processes_mentioning(str(tmp_path))))
    assert counts[-2:] == [4, 4]  # two stand-ins, each with its child
    stop_cluster(LocalCluster("spark://127.0.0.1:1", "http://127.0.0.1:1", str(tmp_path), *pids), timeout=10)
    assert processes_mentioning(str(tmp_path)) == []


def test_a_cluster_started_by_hand_comes_up_whatever_python3_is_first_on_path(tmp_path):
    """Spark's scripts find SPARK_HOME through the python3 first on PATH: without the project's .venv there (the
    README's start by hand, outside make), the master died for want of Spark's jars."""
    python = Path(sys.executable)
    bare = {"HOME": str(Path.home()), "PATH": "/usr/bin:/bin"}
    assert subprocess.run(["python3", "-c", "import pyspark"], env=bare, capture_output=True).returncode != 0
    cluster = tmp_path / "cluster"
    started = subprocess.run(
        [str(python), "-m", "jobs.local_cluster", "start", "--dir", str(cluster), "--cores", "1", "--memory", "512m"],
        env=bare,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
    )
    stopped = subprocess.run(
        [str(python), "-m", "jobs.local_cluster", "stop", "--dir", str(cluster)],
        env=bare,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    assert started.stdout.startswith("export AIRFLOW_CONN_SPARK_DEFAULT=")
    assert stopped.returncode == 0 and processes_mentioning(str(cluster)) == []


@pytest.fixture(scope="module")
def standalone_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("cluster"), cores=2, memory="2g") as cluster:
        yield cluster


# About 3.5 minutes (a second whole DAG run, on the cluster): make test-faults runs it, as make test's budget is spent.
@pytest.mark.heavy
@pytest.mark.slow
def test_the_dag_on_a_standalone_cluster_publishes_what_a_local_run_does(
    local_dag_run, standalone_cluster, spark, tmp_path
):
    env = airflow_env_in(tmp_path, models=Path(local_dag_run["IDRES_MODELS"]))  # the local run's trained model
    env["IDRES_LANDING"] = local_dag_run["IDRES_LANDING"]  # and its extracts, read as they are
    run_airflow(env, "db", "migrate")
    env.update(standalone_cluster.driver_env())
    earlier = {app["id"] for app in standalone_cluster.applications()}  # the module's other tests share the cluster
    run_demo_dag(env, "2026-01-01", demo_people=0)
    applications = [app for app in standalone_cluster.applications() if app["id"] not in earlier]

    assert applications, "no Spark application ran on the cluster"
    assert {app["state"] for app in applications} == {"FINISHED"}
    local = keyed_by_first_record(spark, Path(local_dag_run["IDRES_LAKEHOUSE"]))
    on_cluster = keyed_by_first_record(spark, Path(env["IDRES_LAKEHOUSE"]))
    for name in COMPARED:
        assert local[name].count() > 0, name
        # A cluster master resolves on Spark, a local one on DuckDB (resolve.engine auto): the same model
        # gives the same clusters, with match weights equal up to floating-point rounding.
        assert_approx_df_equality(
            on_cluster[name], local[name], precision=1e-9, ignore_row_order=True, ignore_nullable=True
        )


# The standalone cluster is started for it alone in make test (about 18 s): make test-faults runs it.
@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.fault
def test_a_task_failing_on_a_value_on_the_cluster_leaves_the_value_in_no_cluster_log(standalone_cluster, tmp_path):
    cfg = config_in(tmp_path)
    master = {"IDRES_SPARK_MASTER": standalone_cluster.master_url, **standalone_cluster.driver_env()}
    log = run_crashing_job(cfg, tmp_path, **master)

    assert canary_found(log) == set()
    (incident,) = (cfg.lakehouse / "_incidents").iterdir()
    assert canary_found(incident.read_text(encoding="utf-8")) == {"zqxcanar"}  # the error did quote it
    cluster_logs = Path(standalone_cluster.log_dir)
    assert list(cluster_logs.glob("work/app-*/*/stderr")), "no executor ran the job on the cluster"
    # the executors' logs (conf/spark/log4j2.properties), the worker's and the master's
    assert canary_found(files_text(cluster_logs)) == set()


def test_the_cluster_log4j2_turns_off_the_loggers_the_driver_turns_off():
    lines = (SPARK_CONF_DIR / "log4j2.properties").read_text(encoding="utf-8").splitlines()
    properties = dict(line.split(" = ", 1) for line in lines if " = " in line and not line.startswith("#"))
    off = {
        properties[key.removesuffix(".level") + ".name"]
        for key, value in properties.items()
        if key.startswith("logger.") and key.endswith(".level") and value == "off"
    }
    assert off == set(JVM_LOGGERS_QUOTING_ERRORS)
