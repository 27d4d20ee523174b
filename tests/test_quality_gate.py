"""The quality gate: GX suites on a real demo run, write-audit-publish, and the checks' own logic."""

from __future__ import annotations

import dataclasses
import json

import great_expectations as gx
import pytest
from chispa import assert_df_equality
from pyspark.sql import functions as F

from expectations import QualityInputs, TableCheck, must_hold, required_unique
from expectations import silver as silver_suite
from expectations.profile_sources import with_source_checks
from expectations.profiles import cell_compliance
from jobs import delta_io, resolve, unify
from jobs.config import PUBLISHED_TABLES
from jobs.quality_gate import QualityGateError, checked_frame, gate_checks, run, validate
from tests.conftest import copy_lakehouse
from tests.test_report import RenderedPage

CONSENT_FAILURE = "profiles: expect_column_values_to_be_in_set(consent_compliant)"


def published_versions(cfg):
    return {t: delta_io.table_version(getattr(cfg.tables, t)) for t in PUBLISHED_TABLES}


def personal_values(spark, cfg) -> set[str]:
    silver = delta_io.read_delta(spark, cfg.tables.silver)
    values = set()
    for column in ("email", "phone", "last_name", "street"):
        values |= {r[0] for r in silver.where(F.length(column) > 5).select(column).distinct().collect()}
    return values


@pytest.fixture(scope="module")
def gated(spark, staged_demo, tmp_path_factory):
    """A copy of the staged demo run, passed through the gate once (run 'demo' published)."""
    cfg = copy_lakehouse(staged_demo, tmp_path_factory.mktemp("gate"))
    result = run(spark, cfg, run_id="demo")
    return cfg, result


def test_a_clean_run_passes_every_suite_and_publishes_with_data_docs_and_report(spark, gated, staged_demo):
    cfg, result = gated
    assert result.outcome.success and result.outcome.published and result.outcome.failed == []
    assert {s["suite"] for s in result.outcome.suites} == {
        "bronze",
        "ingest_reconciliation",
        "silver",
        "consent_ledger",
        "consent_event_reconciliation",
        "consent_reconciliation",
        "pairwise_matches",
        "profiles",
        "profile_sources",
        "profile_lineage",
    }
    staged = delta_io.read_delta(spark, staged_demo.tables.staged("profiles"))
    assert_df_equality(
        delta_io.read_delta(spark, cfg.tables.profiles), staged, ignore_row_order=True, ignore_nullable=True
    )
    assert not cfg.tables.staging.exists()  # published candidates leave staging
    run_dir = cfg.run_report_dir("demo")
    quality = json.loads((run_dir / "quality.json").read_text())
    assert quality["success"] and quality["published"] and quality["failed"] == []
    assert (run_dir / "data_docs" / "index.html").is_file()
    assert (run_dir / "index.html").is_file()
    # No personal value in the results, the Data Docs or the report: GX returns counts only.
    written = "".join(p.read_text(errors="replace") for p in run_dir.rglob("*.htm*") if "model" not in p.parts)
    written += (run_dir / "quality.json").read_text()
    values = personal_values(spark, cfg)
    assert len(values) > 100
    assert [v for v in values if v in written] == []


def test_a_profile_with_a_marketing_email_without_consent_fails_the_gate_and_publishes_nothing(spark, gated, tmp_path):
    cfg = copy_lakehouse(gated[0], tmp_path)
    before = published_versions(cfg)
    published = {t: delta_io.read_delta(spark, getattr(cfg.tables, t)).collect() for t in PUBLISHED_TABLES}
    # A higher match probability keeps fewer pairs (the same clusters), so resolve's own output changes too.
    cfg = dataclasses.replace(cfg, linkage=dataclasses.replace(cfg.linkage, match_probability=0.7))
    resolve.run(spark, cfg, run_id="run-2")
    unify.run(spark, cfg, run_id="run-2")
    assert delta_io.row_count(cfg.tables.staged("pairwise_matches")) < len(published["pairwise_matches"])

    # Corrupt one staged profile: a marketing email for a profile not permitted marketing_email.
    denied = (
        delta_io.read_delta(spark, cfg.tables.staged("profile_permissions"))
        .where("purpose = 'marketing_email' AND NOT allowed")
        .select("profile_id")
        .orderBy("profile_id")
        .first()["profile_id"]
    )
    staged = delta_io.read_delta(spark, cfg.tables.staged("profiles"))
    corrupted = staged.withColumn(
        "marketing_email",
        F.when(F.col("profile_id") == denied, F.lit("corrupt@example.org")).otherwise(F.col("marketing_email")),
    )
    delta_io.overwrite_delta(corrupted.localCheckpoint(), cfg.tables.staged("profiles"), run_id="run-2", job="test")

    with pytest.raises(QualityGateError) as failure:
        run(spark, cfg, run_id="run-2")

    assert CONSENT_FAILURE in str(failure.value)
    assert "corrupt@example.org" not in str(failure.value)
    assert published_versions(cfg) == before
    for t in PUBLISHED_TABLES:
        assert sorted(delta_io.read_delta(spark, getattr(cfg.tables, t)).collect()) == sorted(published[t]), t
    run_dir = cfg.run_report_dir("run-2")
    quality = json.loads((run_dir / "quality.json").read_text())
    assert quality["success"] is False and quality["published"] is False
    assert [f for f in quality["failed"] if f.startswith(CONSENT_FAILURE)] == quality["failed"]
    (profiles,) = [s for s in quality["suites"] if s["suite"] == "profiles"]
    (compliance,) = [e for e in profiles["expectations"] if e["column"] == "consent_compliant"]
    assert compliance["unexpected_count"] == 1
    report = (run_dir / "index.html").read_text()
    assert CONSENT_FAILURE in report and "FAILED, not published" in report
    # The report shows the rejected candidates (fewer pairs at 0.7), not the published run it did not replace.
    page = RenderedPage(report)
    assert "unpublished-candidates" in page.ids
    staged_pairs = delta_io.read_delta(spark, cfg.tables.staged("pairwise_matches")).count()
    assert page.tables["resolution-totals"][1][0] == str(staged_pairs) != str(len(published["pairwise_matches"]))
    assert (run_dir / "data_docs" / "index.html").is_file()
    assert cfg.tables.staged("profiles").exists()  # the failed candidates stay for inspection

    # The demo's frames are small, so the gate ran GX in pandas; on Spark (larger runs) it finds the same.
    assert {s["engine"] for s in quality["suites"]} == {"pandas"}
    on_spark = validate(gate_checks(spark, cfg), "run-2")
    assert {s["engine"] for s in on_spark.suites} == {"spark"}
    assert [{**s, "engine": "-"} for s in on_spark.suites] == [{**s, "engine": "-"} for s in quality["suites"]]


def test_cell_compliance_needs_lineage_an_accepted_basis_and_a_permitted_purpose(spark, cfg):
    profiles = spark.createDataFrame(
        [("p1", "a@x.org", "a@x.org"), ("p2", "b@x.org", "b@x.org"), ("p3", "c@x.org", None), ("p4", None, None)],
        "profile_id string, email string, marketing_email string",
    )
    lineage = spark.createDataFrame(
        [
            ("p1", "email", "profile_unification", "contract"),
            ("p1", "marketing_email", "marketing_email", "consent"),
            ("p2", "email", "profile_unification", "consent"),
            ("p2", "marketing_email", "marketing_email", "legitimate_interest"),  # consent is the only basis
            ("p3", "email", "analytics", "consent"),  # analytics does not cover email
        ],
        "profile_id string, column string, purpose string, lawful_basis string",
    )
    permissions = spark.createDataFrame(
        [
            ("p1", "profile_unification", True),
            ("p1", "marketing_email", True),
            ("p2", "profile_unification", False),  # withdrawn for the profile
            ("p2", "marketing_email", True),
            ("p3", "analytics", True),
        ],
        "profile_id string, purpose string, allowed boolean",
    )
    actual = cell_compliance(profiles, lineage, permissions, ["email", "marketing_email"], cfg.policy)
    expected = spark.createDataFrame(
        [
            ("p1", "email", True),
            ("p1", "marketing_email", True),
            ("p2", "email", False),
            ("p2", "marketing_email", False),
            ("p3", "email", False),
        ],
        "profile_id string, column string, compliant boolean",
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_profile_id_churn_over_the_bound_fails_and_new_records_do_not_count(spark, cfg):
    previous = spark.createDataFrame(
        [("s", str(i), "pA" if i < 5 else "pB") for i in range(10)],
        "source_system string, source_record_id string, profile_id string",
    )
    moved = {"0", "1"}  # 2 of 10 published records change profile: 20 % churn
    sources = spark.createDataFrame(
        [("s", str(i), "pC" if str(i) in moved else ("pA" if i < 5 else "pB")) for i in range(10)]
        + [("s", "new", "pC")],
        "source_system string, source_record_id string, profile_id string",
    )
    profiles = spark.createDataFrame([("pA",), ("pB",), ("pC",)], "profile_id string")
    # "new" stands in for an admitted record the profiles lack: same count, another record
    admitted = sources.select(
        "source_system", F.regexp_replace("source_record_id", "new", "lost").alias("source_record_id")
    )
    checked = with_source_checks(sources, profiles, previous, admitted)
    kept = {r["source_record_id"]: r["profile_id_kept"] for r in checked.collect()}
    assert kept == {**{str(i): str(i) not in moved for i in range(10)}, "new": None}
    was_admitted = {r["source_record_id"]: r["record_admitted"] for r in checked.collect()}
    assert was_admitted == {**{str(i): True for i in range(10)}, "new": False}

    def churn_check(bound: float) -> TableCheck:
        return TableCheck("churn", "gold/profile_sources", checked, [must_hold("profile_id_kept", "churn", 1 - bound)])

    assert validate([churn_check(0.25)], "r").success
    failed = validate([churn_check(0.05)], "r")
    assert not failed.success
    assert failed.failed == ["churn: expect_column_values_to_be_in_set(profile_id_kept): churn"]


def test_gx_gets_only_the_values_its_expectations_read_and_every_column_when_one_inspects_the_set(spark):
    frame = spark.createDataFrame(
        [("p1", "a@x.org", 2, 2, True)],
        "profile_id string, email string, record_count int, cluster_size int, consent_compliant boolean",
    )
    expectations = [
        must_hold("consent_compliant", "compliant"),
        *required_unique("profile_id", description="unique ids"),
        gx.expectations.ExpectColumnPairValuesToBeEqual(column_A="record_count", column_B="cluster_size"),
    ]
    narrow = checked_frame(TableCheck("profiles", "gold/profiles", frame, expectations))
    expected = spark.createDataFrame(
        [(True, "p1", 2, 2)], "consent_compliant boolean, profile_id string, record_count int, cluster_size int"
    )
    assert_df_equality(narrow, expected, ignore_nullable=True)  # the unchecked email never reaches GX

    column_set = gx.expectations.ExpectTableColumnsToMatchSet(column_set=frame.columns, exact_match=True)
    same_columns = checked_frame(TableCheck("silver", "silver", frame, [*expectations, column_set]))
    expected = spark.createDataFrame([("p1", None, 2, 2, True)], frame.schema)
    assert_df_equality(same_columns, expected, ignore_nullable=True)  # every column, the unchecked email as nulls
    assert validate([TableCheck("silver", "silver", frame, [column_set])], "r").success


@pytest.mark.parametrize("extra", [None, "national_id_hash", "national_id"])
def test_silver_must_hold_exactly_the_columns_its_policy_allows(spark, cfg, extra):
    """A pseudonym the policy does not enable fails the column check as a sensitive column does."""
    columns = [*cfg.policy.silver_columns, *([extra] if extra else [])]
    frame = spark.createDataFrame([], ", ".join(f"{c} string" for c in columns))
    others = {f.name: None for f in dataclasses.fields(QualityInputs) if f.name not in ("cfg", "silver")}
    (check,) = silver_suite.checks(QualityInputs(cfg=cfg, silver=frame, **others))
    column_set = [e for e in check.expectations if e.expectation_type == "expect_table_columns_to_match_set"]
    assert len(column_set) == 1
    assert validate([TableCheck("silver", "silver", frame, column_set)], "r").success is (extra is None)


def test_a_key_field_the_policy_keeps_out_of_silver_is_not_checked_for_its_format(spark, cfg):
    policy = dataclasses.replace(
        cfg.policy,
        sensitive=(*cfg.policy.sensitive, "date_of_birth"),
        attribute_purposes={a: p for a, p in cfg.policy.attribute_purposes.items() if a != "date_of_birth"},
    )
    columns = policy.silver_columns
    assert "date_of_birth" not in columns and "phone" in columns
    frame = spark.createDataFrame([], ", ".join(f"{c} string" for c in columns))
    others = {f.name: None for f in dataclasses.fields(QualityInputs) if f.name not in ("cfg", "silver")}
    (check,) = silver_suite.checks(QualityInputs(cfg=dataclasses.replace(cfg, policy=policy), silver=frame, **others))
    assert validate([check], "r").success


def test_a_bronze_row_must_carry_its_own_sources_region_not_just_a_known_one(spark, cfg):
    from expectations import bronze as bronze_suite

    rows = [("ua_crm", "UA-1", "h1", "UA"), ("ro_shop", "R-1", "h2", "UA")]  # a Romanian record tagged Ukrainian
    frame = spark.createDataFrame(
        rows, "source_system string, source_record_id string, record_hash string, region string"
    )
    frame = frame.withColumn("ingested_at", F.current_timestamp())
    runs = spark.createDataFrame(
        [],
        "run_id string, source_system string, rows_read long, rows_landed long, rows_quarantined long, "
        "ingested_at timestamp",
    )
    others = {f.name: None for f in dataclasses.fields(QualityInputs) if f.name not in ("cfg", "bronze", "ingest_runs")}
    bronze, _reconciliation = bronze_suite.checks(QualityInputs(cfg=cfg, bronze=frame, ingest_runs=runs, **others))
    outcome = validate([bronze], "r")
    assert outcome.failed == [
        "bronze: expect_column_values_to_be_in_set(region_of_source): every row carries its source's region"
    ]
