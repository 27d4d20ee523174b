"""Every stage of the identity_resolution DAG in one Spark session, in the DAG's order.

For a local run as a single spark-submit, and for benchmarks that time each stage: demo_data (only
with --demo-people), ingest, standardize, consent_gate, train (only when resolve would train: no model
trained with the current conf/splink.yaml, and records admitted), resolve, unify, quality_gate. Each stage
is its job module's run(); nothing here repeats their logic.

    spark-submit jobs/pipeline.py [--demo-people 2000] [--demo-corrupt] [--mode full|incremental] [--cutoff ISO]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import SparkSession

from jobs import consent, demo_data, ingest, quality_gate, resolve, standardize, train, unify
from jobs.config import PipelineConfig
from jobs.ingest import RUN_MODES
from jobs.runner import job_arg_parser, run_job

log = logging.getLogger("idres.pipeline")

STAGES = ("demo_data", "ingest", "standardize", "consent_gate", "train", "resolve", "unify", "quality_gate")


@dataclass
class PipelineResult:
    run_id: str
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage that ran, in order
    spark_jobs: dict[str, int] = field(default_factory=dict)  # Spark jobs each stage started (actions, scans)
    gate_failure: str | None = None  # the quality gate's message when it failed (with record_gate_failure)
    results: dict[str, Any] = field(default_factory=dict)  # each stage's run() result

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def run(
    spark: SparkSession,
    cfg: PipelineConfig,
    run_id: str,
    demo_people: int = 0,
    demo_corrupt: bool = False,
    mode: str = "full",
    cutoff: str | None = None,
    stage_started: Callable[[str], None] | None = None,
    record_gate_failure: bool = False,
) -> PipelineResult:
    """Run the stages in DAG order; stage_started(name) is called as each begins (e.g. to mark a profiler).

    A failed quality gate raises QualityGateError (nothing published), unless record_gate_failure: then its
    message goes to the result, as benchmarks time a run whatever the gate decides.
    """
    stages: dict[str, Callable[[], Any]] = {
        "demo_data": lambda: demo_data.generate(cfg, people=demo_people, corrupt=demo_corrupt),
        "ingest": lambda: ingest.run(spark, cfg, run_id=run_id, mode=mode),
        "standardize": lambda: standardize.run(spark, cfg, run_id=run_id),
        "consent_gate": lambda: consent.run(spark, cfg, run_id=run_id, cutoff=cutoff),
        "train": lambda: train.run(spark, cfg, run_id=run_id),
        "resolve": lambda: resolve.run(spark, cfg, run_id=run_id),
        "unify": lambda: unify.run(spark, cfg, run_id=run_id),
        "quality_gate": lambda: quality_gate.run(spark, cfg, run_id=run_id),
    }
    result = PipelineResult(run_id=run_id)
    for name in STAGES:
        if name == "demo_data" and not demo_people:
            continue
        if name == "train" and not train.training_needed(cfg):
            continue
        if stage_started is not None:
            stage_started(name)
        started = time.perf_counter()
        spark.sparkContext.setJobGroup(f"idres-{name}", f"idres {name}")
        try:
            result.results[name] = stages[name]()
        except quality_gate.QualityGateError as failed:
            if not record_gate_failure:
                raise
            result.gate_failure = str(failed)
        result.seconds[name] = time.perf_counter() - started
        result.spark_jobs[name] = len(spark.sparkContext.statusTracker().getJobIdsForGroup(f"idres-{name}"))
        log.info(
            "pipeline %s: %s done in %.1f s (%d Spark jobs)",
            run_id,
            name,
            result.seconds[name],
            result.spark_jobs[name],
        )
    spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]
    log.info(
        "pipeline %s: %.1f s in all (%s)",
        run_id,
        result.total_seconds,
        ", ".join(f"{n} {s:.1f}" for n, s in result.seconds.items()),
    )
    return result


def main(argv: Sequence[str] | None = None) -> PipelineResult:
    parser = job_arg_parser("idres: every stage of the identity_resolution DAG in one Spark session")
    parser.add_argument("--demo-people", type=int, default=0, help="generate demo data first (0 = use the landing)")
    parser.add_argument("--demo-corrupt", action="store_true", help="append known-bad rows to the demo sources")
    parser.add_argument("--mode", choices=RUN_MODES, default="full", help="ingest mode")
    parser.add_argument("--cutoff", help="effective-consent cutoff, ISO 8601 with zone (default: now)")
    return run_job("pipeline", run, argv, parser)


if __name__ == "__main__":
    # Call through the package module, so Spark pickles its functions by reference, not as __main__'s.
    from jobs.pipeline import main as job_main

    job_main()
