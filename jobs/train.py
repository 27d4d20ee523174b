"""Train the Splink model on the admitted records and save it, versioned, with its charts.

Lambda comes from deterministic rules, u from random sampling, m from expectation maximisation
on at least two blocking rules (conf/splink.yaml). The model is written as JSON named by its UTC
time and content hash; the charts go to reports/models/<version>/.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession
from splink import Linker

from jobs import delta_io
from jobs.config import PipelineConfig
from jobs.linkage import ModelVersion, linkage_input, save_model, save_model_charts, splink_settings, train
from jobs.runner import run_job

log = logging.getLogger("idres.train")


def spark_linker(spark: SparkSession, records: DataFrame, settings: object) -> Linker:
    """A Splink linker over a Spark DataFrame of linkage records, on the Spark backend."""
    from splink.backends.spark import SparkAPI

    db_api = SparkAPI(spark_session=spark)
    return Linker(db_api.register(records), settings)


def train_and_save(spark: SparkSession, cfg: PipelineConfig, admitted: DataFrame) -> ModelVersion:
    """Train on the admitted records; write the model and its charts; return the model version."""
    linker = spark_linker(spark, linkage_input(admitted, cfg.linkage), splink_settings(cfg.linkage))
    train(linker, cfg.linkage)
    model = save_model(linker, cfg.models)
    save_model_charts(linker, cfg.reports / "models" / model.version)
    log.info("trained Splink model %s", model.version)
    return model


def run(spark: SparkSession, cfg: PipelineConfig, run_id: str) -> ModelVersion:
    """Train a new model version on the currently admitted records."""
    return train_and_save(spark, cfg, delta_io.read_delta(spark, cfg.tables.admitted))


def main(argv: Sequence[str] | None = None) -> ModelVersion:
    return run_job("train", run, argv)


if __name__ == "__main__":
    # Call through the package module, so Spark pickles its functions by reference, not as __main__'s.
    from jobs.train import main as job_main

    job_main()
