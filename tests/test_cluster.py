"""The identity_resolution DAG on a Spark standalone cluster gives the same gold tables as a local run."""

from __future__ import annotations

from pathlib import Path

import pytest
from chispa import assert_approx_df_equality
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from jobs import delta_io
from jobs.config import load_config
from jobs.local_cluster import LocalClusterError, local_cluster, start_cluster
from tests.conftest import airflow_env_in, run_airflow, run_demo_dag

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


@pytest.mark.slow
def test_the_dag_on_a_standalone_cluster_publishes_what_a_local_run_does(local_dag_run, spark, tmp_path):
    env = airflow_env_in(tmp_path, models=Path(local_dag_run["IDRES_MODELS"]))  # the local run's trained model
    env["IDRES_LANDING"] = local_dag_run["IDRES_LANDING"]  # and its extracts, read as they are
    run_airflow(env, "db", "migrate")
    with local_cluster(tmp_path / "cluster", cores=2, memory="2g") as cluster:
        env.update(cluster.driver_env())
        run_demo_dag(env, "2026-01-01", demo_people=0)
        applications = cluster.applications()

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
