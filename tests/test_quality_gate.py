"""The quality gate: GX suites on a real demo run, write-audit-publish, and the checks' own logic."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re

import great_expectations as gx
import pyarrow as pa
import pytest
from chispa import assert_df_equality
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expectations import PROFILE_ID_REGEX, QualityInputs, TableCheck, gold_columns, must_hold, required_unique
from expectations import bronze as bronze_suite
from expectations import consent_ledger as consent_suite
from expectations import identity_events as events_suite
from expectations import pairwise_matches as pairwise_suite
from expectations import profile_lineage as lineage_suite
from expectations import profile_registry as registry_suite
from expectations import profile_sources as sources_suite
from expectations import profiles as profiles_suite
from expectations import record_profiles as record_profiles_suite
from expectations import silver as silver_suite
from expectations.profile_lineage import supplied_columns
from expectations.profile_sources import with_source_checks
from expectations.profiles import with_consent_compliance
from jobs import delta_io, quality_gate, resolve, unify
from jobs.canonical import E164, SUBJECT
from jobs.config import PUBLISHED_TABLES
from jobs.errors import ExpectationNotComputedError
from jobs.profile_ids import IDENTITY_EVENTS_SCHEMA, REGISTRY_SCHEMA
from jobs.quality_gate import (
    QualityGateError,
    QualityOutcome,
    checked_frame,
    gate_checks,
    inputs_fingerprint,
    read_outcome,
    run,
    validate,
    write_outcome,
)
from tests.conftest import copy_lakehouse
from tests.test_report import RenderedPage

EFFECTIVE_DDL = (
    "source_system string, source_record_id string, purpose string, lawful_basis string, is_granted boolean, "
    "deciding_event_id string"
)
CONSENT_FAILURE = "profiles: expect_column_values_to_be_in_set(consent_compliant)"


def published_versions(cfg):
    return {t: delta_io.table_version(getattr(cfg.tables, t)) for t in PUBLISHED_TABLES}


def personal_values(spark, cfg) -> set[str]:
    silver = delta_io.read_delta(spark, cfg.tables.silver)
    values = set()
    for column in ("email", "phone", "last_name", "street"):
        values |= {r[0] for r in silver.where(F.length(column) > 5).select(column).distinct().collect()}
    return values


def inputs_with(cfg, **tables) -> QualityInputs:
    """QualityInputs holding only the named tables (the others None)."""
    others = {f.name: None for f in dataclasses.fields(QualityInputs) if f.name not in ("cfg", *tables)}
    return QualityInputs(cfg=cfg, **tables, **others)


def one_profile(spark, *record_ids: str) -> DataFrame:
    """record_profiles with every one of the records under profile P1."""
    return spark.createDataFrame([(r, "P1") for r in record_ids], "record_id string, profile_id string")


def suite_named(checks: list[TableCheck], suite: str) -> TableCheck:
    (check,) = [c for c in checks if c.suite == suite]
    return check


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
        "silver_reconciliation",
        "consent_ledger",
        "consent_event_reconciliation",
        "consent_reconciliation",
        "profile_permissions",
        "profile_permissions_coverage",
        "pairwise_matches",
        "record_profiles",
        "profile_registry",
        "identity_events",
        "identity_event_reconciliation",
        "profiles",
        "profile_sources",
        "profile_lineage",
        "gold_columns",
    }
    staged = delta_io.read_delta(spark, staged_demo.tables.staged("profiles"))
    assert_df_equality(
        delta_io.read_delta(spark, cfg.tables.profiles), staged, ignore_row_order=True, ignore_nullable=True
    )
    assert not cfg.tables.staging.exists()  # published candidates leave staging
    run_dir = cfg.run_report_dir("demo")
    quality = json.loads((run_dir / "quality.json").read_text())
    assert quality["success"] and quality["published"] and quality["failed"] == []
    linkage = cfg.linkage  # the thresholds the run resolved with, which a report written again later draws
    assert quality["thresholds"] == {
        "match_probability": linkage.match_probability,
        "cluster_probability": linkage.cluster_probability,
    }
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

    # A retry on the same inputs (Airflow's) is refused at once: the same failures, no second validation; it
    # writes the auditor report only when the refused attempt died before it.
    docs = run_dir / "data_docs" / "index.html"
    built = docs.stat().st_mtime_ns
    (run_dir / "index.html").unlink()
    with pytest.raises(QualityGateError, match="refused again, not validated") as again:
        run(spark, cfg, run_id="run-2")
    assert CONSENT_FAILURE in str(again.value) and docs.stat().st_mtime_ns == built
    assert "FAILED, not published" in (run_dir / "index.html").read_text()
    # Any change to what the outcome depends on (here a setting) validates again.
    changed = dataclasses.replace(cfg, quality=dataclasses.replace(cfg.quality, pandas_max_rows=100_000))
    with pytest.raises(QualityGateError) as validated:
        run(spark, changed, run_id="run-2")
    assert CONSENT_FAILURE in str(validated.value) and "refused again" not in str(validated.value)
    assert docs.stat().st_mtime_ns != built
    assert published_versions(cfg) == before


def test_the_inputs_fingerprint_changes_with_the_day_that_dates_of_birth_are_checked_against(gated, monkeypatch):
    """A date of birth of tomorrow fails today's gate and passes tomorrow's: a retry then validates again."""
    cfg = gated[0]
    today = inputs_fingerprint(cfg)
    assert inputs_fingerprint(cfg) == today

    class Tomorrow(dt.date):
        @classmethod
        def today(cls) -> dt.date:
            return dt.date.today() + dt.timedelta(days=1)

    monkeypatch.setattr(quality_gate, "date", Tomorrow)
    assert inputs_fingerprint(cfg) != today


def test_a_quality_json_cut_short_reads_as_none_and_a_whole_one_as_written(tmp_path):
    """A retry must not fail on a quality.json a killed attempt left half-written: it validates again."""
    outcome = QualityOutcome("r1", False, [], inputs="f" * 64)
    path = write_outcome(outcome, tmp_path)
    assert read_outcome(tmp_path) == outcome and [p.name for p in tmp_path.iterdir()] == ["quality.json"]
    path.write_text(path.read_text(encoding="utf-8")[:20], encoding="utf-8")
    assert read_outcome(tmp_path) is None
    assert read_outcome(tmp_path / "no-run") is None


def test_consent_compliance_needs_lineage_an_accepted_basis_and_a_permitted_purpose_for_every_value(spark, cfg):
    profiles = spark.createDataFrame(
        [
            ("p1", "a@x.org", "a@x.org"),
            ("p2", "b@x.org", "b@x.org"),
            ("p3", "c@x.org", None),
            ("p4", None, None),
            ("p5", "e@x.org", "e@x.org"),
            ("p6", "f@x.org", None),
            ("p7", "g@x.org", "g@x.org"),
        ],
        "profile_id string, email string, marketing_email string",
    )
    lineage = spark.createDataFrame(
        [
            ("p1", "email", "profile_unification", "contract"),
            ("p1", "marketing_email", "marketing_email", "consent"),
            ("p2", "email", "profile_unification", "consent"),
            ("p2", "marketing_email", "marketing_email", "legitimate_interest"),  # consent is the only basis
            ("p3", "email", "analytics", "consent"),  # analytics does not cover email
            ("p5", "email", "profile_unification", "consent"),  # marketing_email's value has no lineage
            ("p6", "email", "profile_unification", "consent"),
            ("p6", "marketing_email", "marketing_email", "consent"),  # lineage of no value
            ("p7", "email", "profile_unification", "consent"),
            ("p7", "marketing_email", "marketing_email", "consent"),  # not permitted to p7
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
            ("p5", "profile_unification", True),
            ("p5", "marketing_email", True),
            ("p6", "profile_unification", True),
            ("p7", "profile_unification", True),
            ("p7", "marketing_email", False),
        ],
        "profile_id string, purpose string, allowed boolean",
    )
    actual = with_consent_compliance(profiles, lineage, permissions, ["email", "marketing_email"], cfg.policy)
    expected = spark.createDataFrame(
        [
            ("p1", "a@x.org", "a@x.org", True),
            ("p2", "b@x.org", "b@x.org", False),
            ("p3", "c@x.org", None, False),
            ("p4", None, None, True),
            ("p5", "e@x.org", "e@x.org", False),
            ("p6", "f@x.org", None, True),
            ("p7", "g@x.org", "g@x.org", False),
        ],
        "profile_id string, email string, marketing_email string, consent_compliant boolean",
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
    ).withColumns({"unification_basis": F.lit("consent"), "unification_event_id": F.lit("e")})
    sources = sources.withColumns(
        {"record_id": record_id_of_row(), "unification_basis": F.lit("consent"), "unification_event_id": F.lit("e")}
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
    check, _counts = silver_suite.checks(inputs_with(cfg, silver=frame, bronze=frame))
    column_set = [e for e in check.expectations if e.expectation_type == "expect_table_columns_to_match_set"]
    assert len(column_set) == 1
    assert validate([TableCheck("silver", "silver", frame, column_set)], "r").success is (extra is None)


PROFILE_SUMMARY = ("regions", "region_count", "source_systems", "record_count", "last_updated_at")
SUMMARY_TYPES = {"regions": "array<string>", "region_count": "int", "source_systems": "array<string>"}


def profiles_check(spark, cfg, columns: list[str], rows: list[tuple], sources: list[tuple]) -> TableCheck:
    """The profiles suite on profiles of the given (string) columns and rows, with the given profile sources and
    no lineage or permission."""
    tables = {
        "profiles": spark.createDataFrame(rows, ", ".join(f"`{c}` {SUMMARY_TYPES.get(c, 'string')}" for c in columns)),
        "profile_lineage": spark.createDataFrame(
            [], "profile_id string, column string, purpose string, lawful_basis string"
        ),
        "profile_permissions": spark.createDataFrame([], "profile_id string, purpose string, allowed boolean"),
        "profile_sources": spark.createDataFrame(
            sources, "profile_id string, source_system string, source_record_id string, region string"
        ),
    }
    (check,) = profiles_suite.checks(inputs_with(cfg, **tables))
    return check


@pytest.mark.parametrize("extra", [None, "national_id", "notes"])
def test_gold_profiles_must_hold_only_the_survivorships_attributes_and_the_records_summary(spark, cfg, extra):
    """A column beyond the survivorship's would reach gold unchecked by lineage and consent."""
    columns = ["profile_id", *cfg.survivorship.columns, *PROFILE_SUMMARY, *([extra] if extra else [])]
    check = profiles_check(spark, cfg, columns, [], [])
    column_set = [e for e in check.expectations if e.expectation_type == "expect_table_columns_to_match_set"]
    assert len(column_set) == 1
    assert validate([TableCheck("profiles", "gold/profiles", check.frame, column_set)], "r").success is (extra is None)


def test_a_column_beyond_what_resolve_and_unify_write_fails_the_gold_columns_suite(spark, gated):
    """Only gold/profiles had its columns checked: an email carried into profile_sources, or a health note into
    lineage, was published."""
    cfg, _ = gated
    tables = {name: delta_io.read_delta(spark, getattr(cfg.tables, name)) for name in gold_columns.WRITTEN_COLUMNS}
    tables["profiles"] = delta_io.read_delta(spark, cfg.tables.profiles)
    (check,) = gold_columns.checks(inputs_with(cfg, **tables))
    assert validate([check], "r").success  # the tables as the pipeline wrote them
    tables["profile_sources"] = tables["profile_sources"].withColumn("email", F.lit(None).cast("string"))
    tables["profile_lineage"] = tables["profile_lineage"].drop("policy_version").withColumn("health_note", F.lit(""))
    (check,) = gold_columns.checks(inputs_with(cfg, **tables))
    assert validate([check], "r").failed == [
        "gold_columns: expect_column_values_to_be_in_set(profile_sources_columns_as_written): profile_sources holds "
        "the columns its job writes and no other",
        "gold_columns: expect_column_values_to_be_in_set(profile_lineage_columns_as_written): profile_lineage holds "
        "the columns its job writes and no other",
    ]


def test_a_profile_without_source_records_fails_the_profiles_suite(spark, cfg):
    columns = ["profile_id", *cfg.survivorship.columns, *PROFILE_SUMMARY]
    empty_profile = ("pr_" + "0" * 20, *([None] * (len(columns) - 1)))  # no value, no record_count
    check = profiles_check(spark, cfg, columns, [empty_profile], [])
    assert validate([check], "r").failed == [
        "profiles: expect_column_values_to_not_be_null(cluster_size): every profile has source records in "
        "gold/profile_sources",
        "profiles: expect_column_values_to_be_in_set(summary_as_sources): regions, region_count and source_systems "
        "are its source records'",
    ]


def test_a_profiles_regions_and_source_systems_must_be_its_source_records(spark, cfg):
    """The README's queries (customers in two or more regions, profiles per region) read these columns."""
    profiles = spark.createDataFrame(
        [
            ("pr_" + "1" * 20, ["RO", "UA"], 2, ["ro_shop", "ua_crm"]),
            ("pr_" + "2" * 20, ["UA"], 2, ["ua_crm"]),  # one region counted twice
            ("pr_" + "3" * 20, ["UA"], 1, ["ua_crm"]),  # its records are Romanian
        ],
        "profile_id string, regions array<string>, region_count int, source_systems array<string>",
    ).withColumns({c: F.lit(None).cast("string") for c in cfg.survivorship.columns})  # no value: none to check
    sources = spark.createDataFrame(
        [
            ("pr_" + "1" * 20, "ua_crm", "UA-1", "UA"),
            ("pr_" + "1" * 20, "ro_shop", "R-1", "RO"),
            ("pr_" + "2" * 20, "ua_crm", "UA-2", "UA"),
            ("pr_" + "3" * 20, "ro_shop", "R-3", "RO"),
        ],
        "profile_id string, source_system string, source_record_id string, region string",
    )
    lineage = spark.createDataFrame([], "profile_id string, column string, purpose string, lawful_basis string")
    tables = {
        "profiles": profiles,
        "profile_sources": sources,
        "profile_lineage": lineage,
        "profile_permissions": spark.createDataFrame([], "profile_id string, purpose string, allowed boolean"),
    }
    checked = profiles_suite.with_profile_checks(inputs_with(cfg, **tables)).select("profile_id", "summary_as_sources")
    expected = spark.createDataFrame(
        [("pr_" + "1" * 20, True), ("pr_" + "2" * 20, False), ("pr_" + "3" * 20, False)], checked.schema
    )
    assert_df_equality(checked, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_key_field_the_policy_keeps_out_of_silver_is_not_checked_for_its_format(spark, cfg):
    policy = dataclasses.replace(
        cfg.policy,
        sensitive=(*cfg.policy.sensitive, "date_of_birth"),
        attribute_purposes={a: p for a, p in cfg.policy.attribute_purposes.items() if a != "date_of_birth"},
    )
    columns = policy.silver_columns
    assert "date_of_birth" not in columns and "phone" in columns
    frame = spark.createDataFrame([], ", ".join(f"{c} string" for c in columns))
    check, _counts = silver_suite.checks(
        inputs_with(dataclasses.replace(cfg, policy=policy), silver=frame, bronze=frame)
    )
    assert validate([check], "r").success


def test_a_bronze_row_must_carry_its_own_sources_region_not_just_a_known_one(spark, cfg):
    rows = [("ua_crm", "UA-1", "h1", "UA"), ("ro_shop", "R-1", "h2", "UA")]  # a Romanian record tagged Ukrainian
    frame = spark.createDataFrame(
        rows, "source_system string, source_record_id string, record_hash string, region string"
    )
    frame = frame.withColumns({"ingested_at": F.current_timestamp(), "run_id": F.lit("i1")})
    runs = spark.createDataFrame(
        [],
        "run_id string, source_system string, rows_read long, rows_landed long, rows_quarantined long, "
        "ingested_at timestamp",
    )
    quarantine = spark.createDataFrame([], QUARANTINE)
    bronze, _reconciliation = bronze_suite.checks(
        inputs_with(cfg, bronze=frame, ingest_runs=runs, quarantine=quarantine)
    )
    outcome = validate([bronze], "r")
    assert outcome.failed == [
        "bronze: expect_column_values_to_be_in_set(region_of_source): every row carries its source's region"
    ]


QUARANTINE = "source_system string, source_record_id string, reason string, run_id string, quarantined_at timestamp"


def test_a_bronze_row_of_a_record_its_run_quarantined_as_a_duplicate_id_fails(spark, cfg):
    first, retry = dt.datetime(2026, 11, 1, 10, tzinfo=dt.UTC), dt.datetime(2026, 11, 1, 12, tzinfo=dt.UTC)
    frame = spark.createDataFrame(
        [
            ("i2", "ua_crm", "UA-1", retry),
            ("i2", "ua_crm", "UA-2", retry),
            ("i2", "ua_crm", "UA-3", retry),
            ("i2", "ua_crm", "UA-4", retry),
        ],
        "run_id string, source_system string, source_record_id string, ingested_at timestamp",
    )
    quarantine = spark.createDataFrame(
        [
            ("ua_crm", "UA-1", "duplicate_source_id", "i2", retry),  # landed by the attempt that quarantined it
            ("ua_crm", "UA-2", "duplicate_source_id", "i1", retry),  # an earlier extract repeated it; i2's had it once
            ("ua_crm", "UA-3", "unparseable_date", "i2", retry),  # another version of it was bad
            # the run's first attempt, on an extract fixed since
            ("ua_crm", "UA-4", "duplicate_source_id", "i2", first),
        ],
        QUARANTINE,
    )
    checked = bronze_suite.with_quarantine_checks(frame, quarantine).select(
        "run_id", "source_record_id", "not_quarantined_as_duplicate"
    )
    expected = spark.createDataFrame(
        [("i2", "UA-1", False), ("i2", "UA-2", True), ("i2", "UA-3", True), ("i2", "UA-4", True)],
        "run_id string, source_record_id string, not_quarantined_as_duplicate boolean",
    )
    assert_df_equality(checked, expected, ignore_row_order=True, ignore_nullable=True)


# The columns the consent suites read, for the tables a test leaves empty.
CONSENT_TABLES = {
    "consent_ledger": "source_system string, event_id string, source_record_id string, purpose string, status string, "
    "lawful_basis string, event_time timestamp, recorded_at timestamp, expires_at timestamp, run_id string, "
    "landed_at timestamp",
    "consent_runs": "run_id string, source_system string, events_read long, events_landed long, "
    "events_quarantined long, landed_at timestamp, cutoff timestamp",
    "consent_audit": "run_id string, source_system string, source_record_id string, attribute string, "
    "decision string, decided_at timestamp",
    "silver": "source_system string, source_record_id string",
    "admitted": "source_system string, source_record_id string, unification_event_id string",
    "profile_permissions": "profile_id string, purpose string, allowed boolean, lawful_basis string, status string, "
    "decided_at timestamp, deciding_source_system string, deciding_source_record_id string, deciding_event_id string",
    "profile_sources": "profile_id string, source_system string, source_record_id string",
    "profiles": "profile_id string",
}


def consent_check(spark, cfg, suite: str, **tables) -> TableCheck:
    """The named suite of expectations.consent_ledger on the given tables (the others empty; a ledger without
    landing times landed none of them in the last consent run)."""
    empty = {name: spark.createDataFrame([], schema) for name, schema in CONSENT_TABLES.items() if name not in tables}
    ledger = tables.get("consent_ledger")
    if ledger is not None and "landed_at" not in ledger.columns:
        tables["consent_ledger"] = ledger.withColumn("landed_at", F.lit(None).cast("timestamp"))
    return suite_named(consent_suite.checks(inputs_with(cfg, **tables, **empty)), suite)


def timestamps(df, *columns: str):
    return df.withColumns({c: F.to_timestamp(c) for c in columns})


def test_every_admitted_record_needs_a_ledger_grant_in_force_at_the_runs_cutoff(spark, cfg):
    event_time = F.to_timestamp(F.coalesce("event_time", F.lit("2026-01-01 00:00:00")))
    ledger = spark.createDataFrame(
        [
            ("s", "e1", "r1", "profile_unification", "granted", "consent", None, None),  # open-ended
            (
                "s",
                "e2",
                "r2",
                "profile_unification",
                "granted",
                "contract",
                "2026-12-01 00:00:00",
                None,
            ),  # after the cutoff
            ("s", "e3", "r3", "profile_unification", "granted", "consent", "2026-10-01 00:00:00", None),  # expired
            ("s", "e4", "r4", "profile_unification", "withdrawn", "consent", None, None),
            ("s", "e5", "r5", "profile_unification", "granted", "legitimate_interest", None, None),  # not accepted
            ("s", "e6", "r6", "marketing_email", "granted", "consent", None, None),  # another purpose
            ("s", "e7", "rX", "profile_unification", "granted", "consent", None, None),  # another subject's
            (
                "s",
                "e9",
                "r9",
                "profile_unification",
                "granted",
                "consent",
                "2026-11-01 00:00:00",
                None,
            ),  # at the cutoff
            # a grant a later withdrawal, or a later grant, overrides at the cutoff
            ("s", "e10", "r10", "profile_unification", "granted", "consent", None, None),
            ("s", "w10", "r10", "profile_unification", "withdrawn", None, None, "2026-06-01 00:00:00"),
            ("s", "e11", "r11", "profile_unification", "granted", "consent", None, None),
            ("s", "g11", "r11", "profile_unification", "granted", "consent", None, "2026-06-01 00:00:00"),
            # a withdrawal after the cutoff does not
            ("s", "e12", "r12", "profile_unification", "granted", "consent", None, None),
            ("s", "w12", "r12", "profile_unification", "withdrawn", None, None, "2026-11-15 00:00:00"),
            # unless it was received before the cutoff (a year typed wrong): it had happened by then
            ("s", "e13", "r13", "profile_unification", "granted", "consent", None, None),
            ("s", "w13", "r13", "profile_unification", "withdrawn", None, None, "2205-11-15 00:00:00"),
            # or by the run that applied the cutoff, which lands its events after it
            ("s", "e14", "r14", "profile_unification", "granted", "consent", None, None),
            ("s", "w14", "r14", "profile_unification", "withdrawn", None, None, "2205-11-15 00:00:00"),
        ],
        "source_system string, event_id string, source_record_id string, purpose string, status string, "
        "lawful_basis string, expires_at string, event_time string",
    ).withColumns(
        {
            "expires_at": F.to_timestamp("expires_at"),
            "event_time": event_time,
            "recorded_at": F.when(F.col("event_id") == "w13", F.to_timestamp(F.lit("2026-10-15 00:00:00"))),
            # received when it happened, but w13
            "landed_at": F.when(F.col("event_id") == "w13", F.to_timestamp(F.lit("2026-10-16")))
            .when(F.col("event_id") == "w14", F.to_timestamp(F.lit("2026-11-02")))
            .otherwise(event_time),
            "run_id": F.lit("r2"),
        }
    )
    runs = spark.createDataFrame(
        [("r1", "2026-10-01 00:00:00", "2026-12-15 00:00:00"), ("r2", "2026-11-02 00:00:00", "2026-11-01 00:00:00")],
        "run_id string, landed_at string, cutoff string",
    ).select(
        "run_id",
        F.lit("s").alias("source_system"),
        *[F.lit(0).alias(c) for c in ("events_read", "events_landed", "events_quarantined")],
        *[F.to_timestamp(c).alias(c) for c in ("landed_at", "cutoff")],
    )
    subjects = {f"r{i}": f"e{i}" for i in range(1, 15)}  # e8 is in no ledger
    admitted = spark.createDataFrame(
        [("s", r, e) for r, e in subjects.items()],
        "source_system string, source_record_id string, unification_event_id string",
    )
    in_force = consent_suite.with_unification_in_force(admitted, ledger, runs, cfg.policy)
    assert {r["source_record_id"]: r["unification_in_force"] for r in in_force.collect()} == {
        "r1": True,
        "r2": True,
        "r3": False,
        "r4": False,
        "r5": False,
        "r6": False,
        "r7": False,
        "r8": False,
        "r9": False,
        "r10": False,
        "r11": False,
        "r12": True,
        "r13": False,
        "r14": False,
    }

    def reconciliation(records: list[str]) -> TableCheck:
        kept = admitted.where(F.col("source_record_id").isin(*records))
        audit = kept.select(
            *SUBJECT, F.lit("*").alias("attribute"), F.lit("admitted").alias("decision"), F.lit("x").alias("run_id")
        ).withColumn("decided_at", F.current_timestamp())
        tables = {"consent_ledger": ledger, "consent_runs": runs, "consent_audit": audit, "silver": kept}
        return consent_check(spark, cfg, "consent_reconciliation", admitted=kept, **tables)

    assert validate([reconciliation(["r1", "r2"])], "r").success
    assert validate([reconciliation(["r1", "r3"])], "r").failed == [
        "consent_reconciliation: expect_column_pair_values_to_be_equal(admitted_rows=admitted_in_force): every "
        "admitted record's unification grant is in the ledger, the event deciding it at the run's cutoff, on an "
        "accepted basis, and unexpired"
    ]


def test_every_profile_needs_one_permission_per_declared_purpose_and_no_other(spark, cfg):
    purposes = cfg.policy.purposes
    profiles = spark.createDataFrame([("p1",), ("p2",)], "profile_id string")
    complete = [(p, purpose, False) for p in ("p1", "p2") for purpose in purposes]

    def outcome(rows):
        full = CONSENT_TABLES["profile_permissions"]
        permissions = spark.createDataFrame([(*r, *[None] * (full.count(",") - 2)) for r in rows], full)
        check = consent_check(
            spark, cfg, "profile_permissions_coverage", profiles=profiles, profile_permissions=permissions
        )
        return validate([check], "r")

    pair = "profile_permissions_coverage: expect_column_pair_values_to_be_equal"
    missing = f"{pair}(profile_purposes=profile_purposes_held): a permission for every profile and declared purpose"
    beyond = f"{pair}(permission_rows=profile_purposes): no permission beyond the profiles' declared purposes"
    assert outcome(complete).success
    assert outcome(complete[1:]).failed == [missing, beyond]  # p1 has no row for the first purpose
    assert outcome([*complete, ("p3", purposes[0], False)]).failed == [beyond]  # a profile the table lacks
    assert outcome([*complete[1:], ("p1", "retired_purpose", False)]).failed == [missing]  # as many rows, one wrong


def test_silver_must_hold_one_row_per_source_record_of_bronze(spark, cfg):
    schema = "source_system string, source_record_id string, record_hash string"
    bronze = spark.createDataFrame([("s", "1", "h1"), ("s", "1", "h2"), ("s", "2", "h3"), ("t", "1", "h4")], schema)

    def outcome(records: list[tuple[str, str]]):
        frame = spark.createDataFrame(records, "source_system string, source_record_id string")
        return validate(
            [suite_named(silver_suite.checks(inputs_with(cfg, bronze=bronze, silver=frame)), "silver_reconciliation")],
            "r",
        )

    assert outcome([("s", "1"), ("s", "2"), ("t", "1")]).success  # two versions of s/1, one record
    dropped = (
        "silver_reconciliation: expect_column_pair_values_to_be_equal(bronze_records=silver_records): "
        "silver holds one row per source record in bronze (none dropped)"
    )
    assert outcome([("s", "1"), ("t", "1")]).failed == [dropped]
    not_in_bronze = (
        "silver_reconciliation: expect_column_pair_values_to_be_equal(silver_records=silver_records_in_bronze): "
        "every silver row is a record in bronze"
    )
    assert outcome([("s", "1"), ("t", "1"), ("t", "9")]).failed == [not_in_bronze]  # s/2 dropped, t/9 made up


def test_a_source_row_must_name_its_record_by_both_ids_and_the_grant_it_was_admitted_on(spark, cfg):
    """The publication merges profile_sources on record_id: a row naming another record's dropped an admitted
    record from gold; and the basis it names for the unification must be the one the consent gate admitted on."""
    admitted = spark.createDataFrame(
        [("s", "1", "consent", "e1"), ("s", "2", "contract", "e2"), ("s", "3", "consent", "e3")],
        "source_system string, source_record_id string, unification_basis string, unification_event_id string",
    )
    rows = [
        ("p1", "s:1", "s", "1", "consent", "e1", "UA"),
        ("p1", "s:1", "s", "2", "contract", "e2", "UA"),  # s/2 under s/1's record id
        ("p2", "s:3", "s", "3", "legitimate_interest", "e9", "RO"),  # a basis, event and region not its own
    ]
    sources = spark.createDataFrame(
        rows,
        "profile_id string, record_id string, source_system string, source_record_id string, "
        "unification_basis string, unification_event_id string, region string",
    )
    cfg = dataclasses.replace(cfg, sources=(dataclasses.replace(cfg.sources[0], name="s", region="UA"),))
    tables = {
        "admitted": admitted,
        "profiles": spark.createDataFrame([("p1",), ("p2",)], "profile_id string"),
        "previous_profile_sources": spark.createDataFrame(
            [], "profile_id string, source_system string, source_record_id string"
        ),
        "profile_sources": sources,
    }
    (check,) = sources_suite.checks(inputs_with(cfg, **tables))
    checked = check.frame.select("source_record_id", "record_id_of_source", "unification_as_admitted")
    expected = spark.createDataFrame([("1", True, True), ("2", False, True), ("3", True, False)], checked.schema)
    assert_df_equality(checked, expected, ignore_row_order=True, ignore_nullable=True)
    assert validate([check], "r").failed == [
        "profile_sources: expect_column_values_to_be_unique(record_id): each source record belongs to one profile",
        "profile_sources: expect_column_values_to_be_in_set(record_id_of_source): record_id is "
        "<source_system>:<source_record_id>",
        "profile_sources: expect_column_values_to_be_in_set(region_of_source): every record carries its source's "
        "region",
        "profile_sources: expect_column_values_to_be_in_set(unification_as_admitted): the unification basis and "
        "event are those the consent gate admitted the record on",
    ]


def record_id_of_row():
    """The record id a row's source_system and source_record_id make, as resolve and unify write it."""
    return F.concat_ws(":", "source_system", "source_record_id")


def test_a_lineage_row_must_name_a_record_that_holds_the_profiles_value(spark, cfg):
    admitted = spark.createDataFrame(
        [
            ("s", "1", "Ann", None, "1990-01-02"),
            ("s", "2", "Anna", None, "1990-01-02"),
            ("s", "3", "Bo", "b@x.org", None),
        ],
        "source_system string, source_record_id string, first_name string, email string, date_of_birth string",
    ).withColumn("date_of_birth", F.to_date("date_of_birth"))
    profiles = spark.createDataFrame(
        [("p1", "Ann", None, "1990-01-02"), ("p2", "Bo", "b@x.org", None)],
        "profile_id string, first_name string, email string, date_of_birth string",
    ).withColumn("date_of_birth", F.to_date("date_of_birth"))
    sources = spark.createDataFrame(
        [("p1", "s", "1"), ("p1", "s", "2"), ("p2", "s", "3"), ("p2", "s", "4")],  # s/4 is not admitted
        "profile_id string, source_system string, source_record_id string",
    )
    supplied = supplied_columns(sources, admitted, profiles, ["first_name", "email", "date_of_birth"])
    assert {r["source_record_id"]: r["supplied"] for r in supplied.collect()} == {
        "1": ["first_name", "date_of_birth"],  # the profile holds no email, which no record supplies
        "2": ["date_of_birth"],  # Anna is not the profile's Ann
        "3": ["first_name", "email"],
        "4": None,
    }

    def lineage_outcome(record_of_first_name: str, *more: tuple[str, str, str, str]):
        lineage = spark.createDataFrame(
            [
                ("p1", "first_name", "s", record_of_first_name),
                ("p1", "date_of_birth", "s", "2"),
                ("p2", "email", "s", "3"),
                *more,
            ],
            "profile_id string, column string, source_system string, source_record_id string",
        ).withColumns(
            {
                "purpose": F.lit("profile_unification"),
                "lawful_basis": F.lit("consent"),
                "consent_event_id": F.lit("e1"),
                "rule": F.lit("r"),
                "record_id": record_id_of_row(),
            }
        )
        permissions = spark.createDataFrame([], "profile_id string, purpose string, allowed boolean")
        tables = {
            "profile_sources": sources,
            "profile_permissions": permissions,
            "profile_lineage": lineage,
            "effective_consent": spark.createDataFrame([], EFFECTIVE_DDL),
        }
        (check,) = lineage_suite.checks(inputs_with(cfg, admitted=admitted, profiles=profiles, **tables))
        value_check = [e for e in check.expectations if e.configuration.kwargs.get("column") == "value_from_record"]
        return validate([TableCheck(check.suite, check.table, check.frame, value_check)], "r")

    assert lineage_outcome("1").success
    failed = [
        "profile_lineage: expect_column_values_to_be_in_set(value_from_record): "
        "the named record holds the profile's value of the column"
    ]
    assert lineage_outcome("2").failed == failed
    assert lineage_outcome("1", ("p2", "date_of_birth", "s", "3")).failed == failed  # a row for a value p2 lacks


def test_a_lineage_row_must_name_its_records_grant_in_force_of_its_purpose_and_basis(spark, cfg):
    """Effective consent holds each record's deciding event per purpose: an earlier grant it replaced (e2), another
    record's (e3), another purpose's (e5) or a refusal (e8) is no reason to hold a value."""
    effective = spark.createDataFrame(
        [
            ("s", "1", "profile_unification", "consent", True, "e1"),
            ("s", "2", "profile_unification", "consent", True, "e3"),  # another record's grant
            ("s", "1", "marketing_email", "consent", True, "e5"),
            ("s", "1", "analytics", "consent", False, "e8"),  # withdrawn
            ("t", "1", "profile_unification", "consent", True, "e7"),  # the same ids in another source
        ],
        EFFECTIVE_DDL,
    )
    cells = [
        ("first_name", "e1"),
        ("last_name", "e2"),  # replaced by e1
        ("email", "e3"),
        ("phone", "e4"),  # no such event
        ("street", "e5"),
        ("city", "e8"),
        ("postcode", "e7"),
        ("country", None),
    ]
    lineage = spark.createDataFrame(
        [("p1", column, "s", "1", event) for column, event in cells],
        "profile_id string, column string, source_system string, source_record_id string, consent_event_id string",
    ).withColumns(
        {
            "purpose": F.lit("profile_unification"),
            "lawful_basis": F.lit("consent"),
            "rule": F.lit("r"),
            "record_id": record_id_of_row(),
        }
    )
    admitted = spark.createDataFrame(
        [("s", "1", "Ann")], "source_system string, source_record_id string, first_name string"
    )
    tables = {
        "admitted": admitted,
        "profiles": spark.createDataFrame([("p1", "Ann")], "profile_id string, first_name string"),
        "profile_sources": spark.createDataFrame(
            [("p1", "s", "1")], "profile_id string, source_system string, source_record_id string"
        ),
        "profile_permissions": spark.createDataFrame(
            [("p1", "profile_unification", True)], "profile_id string, purpose string, allowed boolean"
        ),
        "profile_lineage": lineage,
        "effective_consent": effective,
    }

    (check,) = lineage_suite.checks(inputs_with(cfg, **tables))

    expected = spark.createDataFrame(
        [(column, event, column == "first_name") for column, event in cells],
        "column string, consent_event_id string, consent_event_recorded boolean",
    )
    assert_df_equality(
        check.frame.select("column", "consent_event_id", "consent_event_recorded"),
        expected,
        ignore_row_order=True,
        ignore_nullable=True,
    )
    event_check = [e for e in check.expectations if e.configuration.kwargs.get("column") == "consent_event_recorded"]
    outcome = validate([TableCheck(check.suite, check.table, check.frame, event_check)], "r")
    assert outcome.failed == [
        "profile_lineage: expect_column_values_to_be_in_set(consent_event_recorded): "
        "the named event is the record's grant in force of the purpose on the basis (effective consent)"
    ]


def test_a_lineage_row_must_name_a_member_record_a_permitted_purpose_and_an_accepted_basis(spark, cfg):
    rows = [
        # profile, column, record, purpose, basis
        ("p1", "first_name", "1", "profile_unification", "contract"),
        ("p1", "last_name", "1", "marketing_email", "consent"),  # p1's marketing_email is not allowed
        ("p1", "email", "1", "analytics", "consent"),  # p1 has no analytics permission
        ("p1", "phone", "1", "marketing_sms", "legitimate_interest"),  # allowed, but consent is the only basis
        ("p2", "first_name", "2", "profile_unification", "consent"),
        ("p2", "last_name", "1", "profile_unification", "consent"),  # s/1 is p1's record
        ("p3", "first_name", "3", "profile_unification", "consent"),  # p3 has no permission at all
    ]
    lineage = spark.createDataFrame(
        rows, "profile_id string, column string, source_record_id string, purpose string, lawful_basis string"
    ).withColumns({"source_system": F.lit("s"), "consent_event_id": F.lit("e"), "rule": F.lit("r")})
    lineage = lineage.withColumn("record_id", record_id_of_row())
    members = [("p1", "1"), ("p2", "2"), ("p3", "3")]
    tables = {
        "admitted": spark.createDataFrame(
            [("s", r) for _, r in members], "source_system string, source_record_id string"
        ),
        "profiles": spark.createDataFrame([(p,) for p, _ in members], "profile_id string"),
        "profile_sources": spark.createDataFrame(
            [(p, "s", r) for p, r in members], "profile_id string, source_system string, source_record_id string"
        ),
        "profile_permissions": spark.createDataFrame(
            [
                ("p1", "profile_unification", True),
                ("p1", "marketing_email", False),
                ("p1", "marketing_sms", True),
                ("p2", "profile_unification", True),
                ("p2", "analytics", True),
            ],
            "profile_id string, purpose string, allowed boolean",
        ),
        "profile_lineage": lineage,
        "effective_consent": spark.createDataFrame([], EFFECTIVE_DDL),
    }

    (check,) = lineage_suite.checks(inputs_with(cfg, **tables))

    flags = "record_in_profile", "purpose_permitted", "basis_accepted"
    expected = spark.createDataFrame(
        [
            ("p1", "first_name", True, True, True),
            ("p1", "last_name", True, False, True),
            ("p1", "email", True, False, True),
            ("p1", "phone", True, True, False),
            ("p2", "first_name", True, True, True),
            ("p2", "last_name", False, True, True),
            ("p3", "first_name", True, False, True),
        ],
        "profile_id string, column string, " + ", ".join(f"{f} boolean" for f in flags),
    )
    assert_df_equality(
        check.frame.select("profile_id", "column", *flags), expected, ignore_row_order=True, ignore_nullable=True
    )


def test_profile_permissions_follow_the_latest_live_consent_event_of_any_of_the_profiles_records(spark, cfg):
    cutoff = "2026-11-01 00:00:00"
    ledger = timestamps(
        spark.createDataFrame(
            [
                ("e1", "r1", "profile_unification", "granted", "contract", "2026-07-01", None, None),
                ("e2", "r2", "profile_unification", "granted", "consent", "2026-06-01", None, None),
                ("e3", "r1", "marketing_email", "granted", "consent", "2026-09-01", None, None),
                ("e4", "r2", "marketing_email", "withdrawn", "consent", "2026-10-01", None, None),
                ("e5", "r2", "marketing_email", "granted", "consent", "2026-12-01", None, None),  # after the cutoff
                ("e6", "r1", "analytics", "granted", "consent", "2026-08-01", "2026-10-15", None),  # lapsed, alone
                # p2: two grants at one instant; the later recorded (on a basis SMS does not accept) decides
                ("e7", "r3", "marketing_sms", "granted", "consent", "2026-09-01", None, "2026-09-01 10:00:00"),
                ("e8", "r4", "marketing_sms", "granted", "contract", "2026-09-01", None, "2026-09-02 10:00:00"),
            ],
            "event_id string, source_record_id string, purpose string, status string, lawful_basis string, "
            "event_time string, expires_at string, recorded_at string",
        ),
        "event_time",
        "expires_at",
        "recorded_at",
    ).withColumns({"source_system": F.lit("s"), "run_id": F.lit("c1")})
    runs = spark.createDataFrame(
        [("c1", "s", 0, 0, 0, cutoff, cutoff)], CONSENT_TABLES["consent_runs"].replace("timestamp", "string")
    ).transform(timestamps, "landed_at", "cutoff")
    sources = spark.createDataFrame(
        [("p1", "s", "r1"), ("p1", "s", "r2"), ("p2", "s", "r3"), ("p2", "s", "r4")], CONSENT_TABLES["profile_sources"]
    )
    decided = [
        ("p1", "profile_unification", True, "contract", "granted", "2026-07-01", "s", "r1", "e1"),
        ("p1", "marketing_email", False, "consent", "withdrawn", "2026-10-01", "s", "r2", "e4"),
        ("p1", "analytics", False, "consent", "expired", "2026-08-01", "s", "r1", "e6"),
        ("p1", "marketing_sms", False, None, "none_recorded", None, None, None, None),
        ("p2", "marketing_sms", False, "contract", "granted", "2026-09-01", "s", "r4", "e8"),
    ]
    earliest = ("p1", "marketing_email", True, "consent", "granted", "2026-09-01", "s", "r1", "e3")  # not the latest
    lapsed_allowed = ("p1", "analytics", True, "consent", "expired", "2026-08-01", "s", "r1", "e6")
    # The latest event is r2's withdrawal: a row that calls it a grant, or names r1's earlier grant at its time.
    withdrawal_as_grant = ("p1", "marketing_email", True, "consent", "granted", "2026-10-01", "s", "r2", "e4")
    earlier_grant_named = ("p1", "marketing_email", True, "consent", "granted", "2026-10-01", "s", "r1", "e3")
    invented = ("p1", "marketing_sms", True, "consent", "granted", None, None, None, None)  # no event at all
    earlier_recorded = ("p2", "marketing_sms", True, "consent", "granted", "2026-09-01", "s", "r3", "e7")
    schema = CONSENT_TABLES["profile_permissions"].replace("timestamp", "string")

    def check(rows) -> TableCheck:
        permissions = spark.createDataFrame(rows, schema).transform(timestamps, "decided_at")
        tables = {"consent_ledger": ledger, "consent_runs": runs, "profile_sources": sources}
        return consent_check(spark, cfg, "profile_permissions", profile_permissions=permissions, **tables)

    rows = [*decided, earliest, lapsed_allowed, withdrawal_as_grant, earlier_grant_named, invented, earlier_recorded]
    flags = check(rows).frame.collect()
    checked = ("allowed", "allowed_as_decided", "decided_by_latest", "decided_as_recorded")
    assert sorted(((r["purpose"], r["deciding_event_id"], *(r[c] for c in checked)) for r in flags), key=str) == sorted(
        [
            ("profile_unification", "e1", True, True, True, True),
            ("marketing_email", "e4", False, True, True, True),
            ("analytics", "e6", False, True, True, True),
            ("marketing_sms", None, False, True, True, True),
            ("marketing_sms", "e8", False, True, True, True),
            ("marketing_email", "e3", True, True, False, False),  # earliest
            ("analytics", "e6", True, False, True, True),  # lapsed_allowed
            ("marketing_email", "e4", True, True, True, False),  # withdrawal_as_grant
            ("marketing_email", "e3", True, True, True, False),  # earlier_grant_named
            ("marketing_sms", None, True, True, True, False),  # invented
            ("marketing_sms", "e7", True, True, True, False),  # earlier_recorded
        ],
        key=str,
    )
    assert validate([check(decided)], "r").success
    assert validate([check([*decided[:1], earliest, *decided[2:]])], "r").failed == [
        "profile_permissions: expect_column_values_to_be_in_set(decided_by_latest): "
        "decided by the latest live consent event of any of the profile's records as of the cutoff",
        "profile_permissions: expect_column_values_to_be_in_set(decided_as_recorded): "
        "the deciding event named may decide (the latest, of the strongest status, the latest recorded), and the "
        "status and basis are its own",
    ]
    assert validate([check([*decided[:1], withdrawal_as_grant, *decided[2:3], invented])], "r").failed == [
        "profile_permissions: expect_column_values_to_be_in_set(decided_as_recorded): "
        "the deciding event named may decide (the latest, of the strongest status, the latest recorded), and the "
        "status and basis are its own",
    ]


def test_a_run_ingested_again_under_its_id_after_its_extract_was_fixed_passes_the_bronze_suites(spark, tmp_path):
    """README: a run cleared in Airflow after an extract was fixed runs again under its id. The first attempt's
    quarantined duplicate id and the version it landed before the fix were counted against the second attempt,
    which every retry then failed."""
    from jobs import demo_data, ingest
    from tests.conftest import config_in, write_ua_crm

    cfg = config_in(tmp_path)
    demo_data.generate(cfg, people=5, seed=8)
    record = {"first_name": "Олександр", "date_of_birth": "24.08.1991", "updated_at": "01.03.2025 10:15"}
    koval = {**record, "source_record_id": "UA-1", "last_name": "Коваль"}
    bondar = {**record, "source_record_id": "UA-2", "last_name": "Бондар"}
    write_ua_crm(cfg, [koval, bondar, {**bondar, "last_name": "Бондаренко"}])  # UA-2 twice: both quarantined
    ingest.run(spark, cfg, run_id="r1")
    write_ua_crm(cfg, [{**koval, "last_name": "Ковальчук"}, bondar])  # fixed: UA-1's name corrected, UA-2 once

    ingest.run(spark, cfg, run_id="r1")

    bronze = delta_io.read_delta(spark, cfg.tables.bronze)
    tables = {"bronze": bronze, "ingest_runs": delta_io.read_delta(spark, cfg.tables.ingest_runs)}
    checks = bronze_suite.checks(
        inputs_with(cfg, **tables, quarantine=delta_io.read_delta(spark, cfg.tables.quarantine))
    )
    assert validate(checks, "r1").failed == []
    ua = bronze.where("source_system = 'ua_crm'").select("source_record_id", "last_name", "run_id")
    expected = spark.createDataFrame(
        [("UA-1", "Коваль", "r1"), ("UA-1", "Ковальчук", "r1"), ("UA-2", "Бондар", "r1")], ua.schema
    )
    assert_df_equality(ua, expected, ignore_row_order=True, ignore_nullable=True)
    # The checks match attempts by time, as each table stores it: else they would hold for want of a match.
    at = {r.last_name: r.ingested_at for r in bronze.where("source_system = 'ua_crm'").collect()}
    (counted,) = tables["ingest_runs"].where("run_id = 'r1' AND source_system = 'ua_crm'").collect()
    assert counted.ingested_at == at["Ковальчук"] != at["Коваль"]
    quarantined = delta_io.read_delta(spark, cfg.tables.quarantine).where("source_record_id = 'UA-2'")
    assert {r.quarantined_at for r in quarantined.collect()} == {at["Коваль"]}


def test_the_last_ingest_run_writes_no_more_bronze_rows_per_source_than_it_landed(spark, cfg):
    runs = spark.createDataFrame(
        [
            ("i1", "ua_crm", 5, 5, 0, "2026-10-01 00:00:00"),
            ("i2", "ua_crm", 3, 2, 1, "2026-11-01 12:00:00"),
            ("i2", "ro_shop", 2, 1, 1, "2026-11-01 12:00:00"),
            ("i2", "eu_loyalty", 0, 0, 0, "2026-11-01 12:00:00"),
        ],
        "run_id string, source_system string, rows_read long, rows_landed long, rows_quarantined long, "
        "ingested_at string",
    ).transform(timestamps, "ingested_at")
    earlier = [("i1", "ua_crm", str(i), "2026-10-01 00:00:00") for i in range(5)]  # they do not count against i2
    # i2's first attempt, on an ro_shop extract fixed since: its rows stay in bronze, and i2's counts are the retry's
    first_attempt = [("i2", "ro_shop", "x", "2026-11-01 10:00:00"), ("i2", "ro_shop", "y", "2026-11-01 10:00:00")]

    def reconciliation(written: list[tuple[str, str, str, str]]) -> TableCheck:
        bronze = (
            spark.createDataFrame(
                [*earlier, *first_attempt, *written],
                "run_id string, source_system string, source_record_id string, ingested_at string",
            )
            .transform(timestamps, "ingested_at")
            .withColumns({"record_hash": F.col("source_record_id"), "region": F.lit("UA")})
        )
        return suite_named(
            bronze_suite.checks(
                inputs_with(cfg, bronze=bronze, ingest_runs=runs, quarantine=spark.createDataFrame([], QUARANTINE))
            ),
            "ingest_reconciliation",
        )

    at = "2026-11-01 12:00:00"
    landed = [("i2", "ua_crm", "a", at), ("i2", "ua_crm", "b", at), ("i2", "ro_shop", "c", at)]
    assert validate([reconciliation(landed)], "r").success
    duplicate_landed = ("i2", "ro_shop", "d", at)  # the quarantined row written to bronze as well
    assert validate([reconciliation([*landed, duplicate_landed])], "r").failed == [
        "ingest_reconciliation: expect_column_values_to_be_in_set(bronze_within_landed): "
        "the last run wrote no more bronze rows per source than it landed"
    ]


def failed_checks(outcome) -> list[str]:
    """The failed expectations as `suite: expectation(column)`, without their descriptions."""
    return [
        f"{s['suite']}: {e['expectation']}({e['column']})"
        for s in outcome.suites
        for e in s["expectations"]
        if not e["success"]
    ]


def in_set_failure(suite: str, column: str) -> str:
    return f"{suite}: expect_column_values_to_be_in_set({column})"


def spark_schema(spark, schema: pa.Schema):
    return spark.createDataFrame(schema.empty_table()).schema


# Well-formed profile ids for the resolution suites' hand-made tables.
P0, P1, P2, P3, P4 = (f"pr_{c * 20}" for c in "01234")
T0, T1, T2 = (dt.datetime(2026, m, 1, tzinfo=dt.UTC) for m in (1, 2, 3))


def test_record_profiles_must_assign_each_admitted_record_the_active_profile_its_profile_sources_give(spark, cfg):
    admitted = spark.createDataFrame(
        [("ua_crm", "1"), ("ua_crm", "2"), ("ro_shop", "3")], "source_system string, source_record_id string"
    )
    unified = [(P1, "ua_crm", "1"), (P1, "ua_crm", "2"), (P2, "ro_shop", "3")]
    registry = spark.createDataFrame(
        [(P0, "merged"), (P1, "active"), (P2, "active")], "profile_id string, status string"
    )
    schema = "record_id string, profile_id string, source_system string, source_record_id string"

    def assignments(rows):
        return spark.createDataFrame([(f"{s}:{r}", p, s, r) for p, s, r in rows], schema)

    def outcome(assigned, sources=unified):
        sources = spark.createDataFrame(sources, CONSENT_TABLES["profile_sources"])
        tables = {"profile_sources": sources, "profile_registry": registry, "admitted": admitted}
        (check,) = record_profiles_suite.checks(inputs_with(cfg, record_profiles=assignments(assigned), **tables))
        return validate([check], "r")

    checked = record_profiles_suite.with_assignment_checks(
        spark.createDataFrame(
            [
                ("ua_crm:1", P1, "ua_crm", "1"),
                ("ua_crm:9", P1, "ua_crm", "2"),  # another record's id
                ("ro_shop:3", P0, "ro_shop", "3"),  # merged, and not what profile_sources says
                ("ro_shop:4", P2, "ro_shop", "4"),  # in no profile_sources row
            ],
            schema,
        ),
        spark.createDataFrame(unified, CONSENT_TABLES["profile_sources"]),
        registry,
    )
    expected = spark.createDataFrame(
        [
            ("ua_crm:1", P1, "ua_crm", "1", True, True, True),
            ("ua_crm:9", P1, "ua_crm", "2", False, True, True),
            ("ro_shop:3", P0, "ro_shop", "3", True, False, False),
            ("ro_shop:4", P2, "ro_shop", "4", True, False, True),
        ],
        f"{schema}, record_id_of_source boolean, sources_agree boolean, profile_active boolean",
    )
    assert_df_equality(checked, expected, ignore_row_order=True, ignore_nullable=True, ignore_column_order=True)

    agree = in_set_failure("record_profiles", "sources_agree")
    assert outcome(unified).success
    in_two = failed_checks(outcome([*unified, (P1, "ro_shop", "3")]))
    assert "record_profiles: expect_column_values_to_be_unique(record_id)" in in_two
    assert failed_checks(outcome([*unified[:2], (P2, "ro_shop", "4")])) == [agree]  # a record not admitted
    assert failed_checks(outcome([*unified[:2], (P1, "ro_shop", "3")])) == [agree]  # another profile than gold's
    assert failed_checks(outcome(unified[:2])) == ["record_profiles: expect_table_row_count_to_equal(table)"]
    merged = [*unified[:2], (P0, "ro_shop", "3")]  # both tables give the record a profile merged away
    assert failed_checks(outcome(merged, sources=merged)) == [in_set_failure("record_profiles", "profile_active")]


def test_the_registry_keeps_every_published_id_and_is_active_exactly_where_records_are_assigned(spark, cfg):
    published = [
        (P0, "merged", T0, "r0", T0, "r0", P4),  # its successor was erased since
        (P1, "active", T0, "r0", None, None, None),
        (P2, "active", T0, "r0", None, None, None),
    ]
    # Run r2 merges P2 into P1 and issues P3.
    staged = [
        published[0],
        published[1],
        (P2, "merged", T0, "r0", T1, "r2", P1),
        (P3, "active", T1, "r2", None, None, None),
    ]
    held = spark.createDataFrame([(P1,), (P1,), (P3,)], "profile_id string")
    schema = spark_schema(spark, REGISTRY_SCHEMA)
    previous = spark.createDataFrame(published, schema)

    def outcome(rows):
        registry = spark.createDataFrame(rows, schema)
        tables = {"profile_registry": registry, "previous_profile_registry": previous, "record_profiles": held}
        (check,) = registry_suite.checks(inputs_with(cfg, **tables))
        return validate([check], "r")

    unheld = (P4, "active", T1, "r2", None, None, None)
    checked = registry_suite.with_registry_checks(spark.createDataFrame([*staged[1:], unheld], schema), previous, held)
    expected = spark.createDataFrame(
        [(P0, False, True), (P1, True, True), (P2, True, True), (P3, True, True), (P4, True, False)],
        "profile_id string, still_issued boolean, active_as_held boolean",
    )
    assert_df_equality(
        checked.select("profile_id", "still_issued", "active_as_held"),
        expected,
        ignore_row_order=True,
        ignore_nullable=True,
    )

    def failure(column: str) -> list[str]:
        return [in_set_failure("profile_registry", column)]

    assert outcome(staged).success
    assert failed_checks(outcome(staged[1:])) == failure("still_issued")  # a published id dropped
    assert failed_checks(outcome([*staged, unheld])) == failure("active_as_held")
    assert failed_checks(outcome([*staged[:2], (P2, "active", T0, "r0", None, None, None), staged[3]])) == failure(
        "active_as_held"
    )  # P2's records went to P1, yet it stays active
    assert failed_checks(outcome([*staged[:2], (P2, "merged", T0, "r0", T1, "r2", P0), staged[3]])) == failure(
        "successor_held"
    )
    assert failed_checks(outcome([(P0, "merged", T0, "r0", T1, "r2", P4), *staged[1:]])) == failure("ending_kept")
    assert failed_checks(outcome([staged[0], (P1, "active", T1, "r2", None, None, None), *staged[2:]])) == failure(
        "creation_kept"
    )
    assert failed_checks(outcome([*staged[:3], (P3, "active", T1, "r2", T1, "r2", None)])) == failure("ended_as_status")
    assert failed_checks(outcome([*staged[:3], (P3, "active", T1, "r2", None, None, P1)])) == failure(
        "successor_as_status"
    )
    unknown = failed_checks(outcome([*staged[:3], (P3, "issued", T1, "r2", None, None, None)]))
    assert failure("status_known")[0] in unknown


def test_identity_events_are_this_runs_known_changes_as_the_registry_records_them(spark, cfg):
    registry = spark.createDataFrame(
        [
            (P1, "active", T0, "r1", None, None, None),
            (P2, "merged", T0, "r1", T1, "r2", P1),
            (P3, "active", T1, "r2", None, None, None),
            (P4, "retired", T0, "r1", T1, "r2", None),
        ],
        spark_schema(spark, REGISTRY_SCHEMA),
    )
    previous = spark.createDataFrame(  # as run r1 published it
        [(p, "active", T0, "r1", None, None, None) for p in (P1, P2, P4)], spark_schema(spark, REGISTRY_SCHEMA)
    )
    schema = spark_schema(spark, IDENTITY_EVENTS_SCHEMA)
    run2 = [
        ("r2", "created", P3, None, 2, T1, "e1"),
        ("r2", "merged", P2, P1, 1, T1, "e2"),
        ("r2", "retired", P4, None, 0, T1, "e3"),
    ]

    def outcome(rows, before=previous):
        events = spark.createDataFrame(rows, schema)
        tables = {"identity_events": events, "profile_registry": registry, "previous_profile_registry": before}
        return validate(events_suite.checks(inputs_with(cfg, **tables)), "r")

    def failure(column: str) -> list[str]:
        return [in_set_failure("identity_events", column)]

    assert outcome(run2).success
    assert outcome([], before=registry).success  # a run that changed no id
    assert failed_checks(outcome([])) == [  # a run that changed ids and staged no event of them
        "identity_event_reconciliation: expect_column_pair_values_to_be_equal(profiles_issued=issued_events)",
        "identity_event_reconciliation: expect_column_pair_values_to_be_equal(profiles_ended=ended_events)",
    ]
    earlier = ("r1", "created", P1, None, 3, T0, "e0")  # as the registry has it, but run r1's
    assert failed_checks(outcome([*run2, earlier])) == failure("of_latest_run")
    unknown = failed_checks(outcome([*run2, ("r2", "renamed", P1, None, 1, T1, "e4")]))
    assert in_set_failure("identity_events", "event_type") in unknown
    assert failed_checks(outcome([run2[0], ("r2", "merged", P2, P3, 1, T1, "e2"), run2[2]])) == failure(
        "registry_agrees"
    )  # merged into another profile than the registry's successor
    assert failed_checks(outcome([*run2[:2], ("r2", "retired", P4, None, 1, T1, "e3")])) == failure("records_as_type")
    assert failed_checks(outcome([*run2[:2], ("r2", "retired", P4, P1, 0, T1, "e3")])) == failure("related_as_type")
    assert failed_checks(outcome([*run2[:2], ("r2", "retired", P4, None, 0, T1, "e2")])) == [
        "identity_events: expect_column_values_to_be_unique(event_id)"
    ]

    # The retirement's event missing: the registry ended two ids of the published ones, its events one.
    counts = events_suite.change_counts(spark.createDataFrame(run2[:2], schema), registry, previous)
    expected = spark.createDataFrame(
        [(1, 2, 1, 1)], "profiles_issued long, profiles_ended long, issued_events long, ended_events long"
    )
    assert_df_equality(counts, expected, ignore_nullable=True)
    assert failed_checks(outcome(run2[:2])) == [
        "identity_event_reconciliation: expect_column_pair_values_to_be_equal(profiles_ended=ended_events)"
    ]


def test_a_gate_after_unify_alone_validates_the_published_resolution_and_no_identity_event(spark, gated, tmp_path):
    cfg = copy_lakehouse(gated[0], tmp_path)
    unify.run(spark, cfg, run_id="unify-again")
    assert not delta_io.table_exists(cfg.tables.staged("record_profiles"))

    result = run(spark, cfg, run_id="unify-again")

    assert result.outcome.success and result.outcome.published
    counts = {
        s["suite"]: {e["element_count"] for e in s["expectations"] if e["element_count"] is not None}
        for s in result.outcome.suites
    }
    assert counts["record_profiles"] == {delta_io.row_count(cfg.tables.record_profiles)}
    assert counts["profile_registry"] == {delta_io.row_count(cfg.tables.profile_registry)}
    assert counts["identity_events"] == {0}


def test_a_missing_probability_or_status_fails_its_suite(spark, cfg):
    """A range or set expectation skips nulls (and GX's pandas engine NaN too): each of these needs its own check."""
    admitted = spark.createDataFrame(
        [("s", "1"), ("s", "2"), ("s", "3")], "source_system string, source_record_id string"
    )
    pairs = spark.createDataFrame(
        [("s:1", "s:2", 0.9, 3.0), ("s:3", "s:1", None, 3.0), ("s:2", "s:2", float("nan"), 3.0)],
        "record_id_l string, record_id_r string, match_probability double, match_weight double",
    )
    record_profiles = one_profile(spark, "s:1", "s:2", "s:3")
    checked = pairwise_suite.with_pair_checks(pairs, admitted, record_profiles, 0.9).select(
        "record_id_l", "record_id_r", "a_probability"
    )
    expected = spark.createDataFrame(
        [("s:1", "s:2", True), ("s:3", "s:1", False), ("s:2", "s:2", False)],
        "record_id_l string, record_id_r string, a_probability boolean",
    )
    assert_df_equality(checked, expected, ignore_row_order=True, ignore_nullable=True)
    one_missing = pairs.where(F.col("record_id_l") == "s:1").union(pairs.where(F.col("match_probability").isNull()))
    inputs = inputs_with(cfg, pairwise_matches=one_missing, admitted=admitted, record_profiles=record_profiles)
    outcome = validate(pairwise_suite.checks(inputs), "r")
    assert failed_checks(outcome) == ["pairwise_matches: expect_column_values_to_be_in_set(a_probability)"]
    for pandas_max_rows in (0, 1000):  # Spark's engine, pandas'
        unweighted = pairs.where(F.col("record_id_l") == "s:1").withColumn("match_weight", F.lit(float("nan")))
        inputs = inputs_with(cfg, pairwise_matches=unweighted, admitted=admitted, record_profiles=record_profiles)
        outcome = validate(pairwise_suite.checks(inputs), "r", pandas_max_rows=pandas_max_rows)
        assert failed_checks(outcome) == ["pairwise_matches: expect_column_values_to_be_in_set(a_weight)"]

    ledger = spark.createDataFrame(
        [("s", "e1", "1", "profile_unification", None, "consent", None, "r")],
        "source_system string, event_id string, source_record_id string, purpose string, status string, "
        "lawful_basis string, expires_at timestamp, run_id string",
    ).withColumns({"event_time": F.current_timestamp(), "recorded_at": F.lit(None).cast("timestamp")})
    check = consent_check(spark, cfg, "consent_ledger", consent_ledger=ledger)
    assert "consent_ledger: expect_column_values_to_not_be_null(status)" in failed_checks(validate([check], "r"))


def test_a_pair_scored_in_both_orders_fails_the_pairs_suite(spark, cfg):
    admitted = spark.createDataFrame(
        [("s", "1"), ("s", "2"), ("s", "3")], "source_system string, source_record_id string"
    )
    schema = "record_id_l string, record_id_r string, match_probability double, match_weight double"
    once = spark.createDataFrame([("s:1", "s:2", 0.9, 3.0), ("s:1", "s:3", 0.2, -1.0)], schema)
    twice = once.union(spark.createDataFrame([("s:2", "s:1", 0.9, 3.0)], schema))

    profiled = one_profile(spark, "s:1", "s:2", "s:3")

    passed = validate(
        pairwise_suite.checks(inputs_with(cfg, pairwise_matches=once, admitted=admitted, record_profiles=profiled)), "r"
    )
    failed = validate(
        pairwise_suite.checks(inputs_with(cfg, pairwise_matches=twice, admitted=admitted, record_profiles=profiled)),
        "r",
    )

    assert failed_checks(passed) == []
    assert failed_checks(failed) == [
        "pairwise_matches: expect_compound_columns_to_be_unique(record_id_lesser,record_id_greater)"
    ]


def test_a_pair_at_the_cluster_probability_across_two_profiles_fails_the_pairs_suite(spark, cfg):
    """Splink clusters every pair at or above the cluster probability into one cluster, so its records share a
    profile; a pair below it may join two."""
    assert cfg.linkage.cluster_probability == 0.9
    admitted = spark.createDataFrame(
        [("s", "1"), ("s", "2"), ("s", "3"), ("s", "4")], "source_system string, source_record_id string"
    )
    schema = "record_id_l string, record_id_r string, match_probability double, match_weight double"
    pairs = spark.createDataFrame(
        [("s:1", "s:2", 0.9, 3.2), ("s:3", "s:4", 0.95, 4.2), ("s:2", "s:3", 0.89, 3.0)], schema
    )
    together = spark.createDataFrame(
        [("s:1", "P1"), ("s:2", "P1"), ("s:3", "P2"), ("s:4", "P2")], "record_id string, profile_id string"
    )
    split = together.withColumn("profile_id", F.when(F.col("record_id") == "s:2", "P3").otherwise(F.col("profile_id")))

    checked = pairwise_suite.with_pair_checks(pairs, admitted, split, 0.9).select(
        "record_id_l", "record_id_r", "clustered_together"
    )
    passed = validate(
        pairwise_suite.checks(inputs_with(cfg, pairwise_matches=pairs, admitted=admitted, record_profiles=together)),
        "r",
    )
    failed = validate(
        pairwise_suite.checks(inputs_with(cfg, pairwise_matches=pairs, admitted=admitted, record_profiles=split)), "r"
    )

    expected = spark.createDataFrame(
        [("s:1", "s:2", False), ("s:3", "s:4", True), ("s:2", "s:3", True)],
        "record_id_l string, record_id_r string, clustered_together boolean",
    )
    assert_df_equality(checked, expected, ignore_row_order=True, ignore_nullable=True)
    assert failed_checks(passed) == []
    assert failed_checks(failed) == ["pairwise_matches: expect_column_values_to_be_in_set(clustered_together)"]


@pytest.mark.parametrize("pandas_max_rows", [0, 1000], ids=["spark", "pandas"])
def test_an_expectation_gx_could_not_compute_fails_the_gate_as_an_error_not_as_a_refusal(spark, pandas_max_rows):
    """GX catches what a metric's computation raises (a lost executor, here a pattern the engine cannot compile)
    and reports a plain failure: recorded as a refusal, every retry of the run was refused again unvalidated."""
    frame = spark.createDataFrame([("a",)], "value string")
    unreadable = gx.expectations.ExpectColumnValuesToMatchRegex(column="value", regex="(")
    check = TableCheck("broken", "t", frame, [unreadable])
    with pytest.raises(ExpectationNotComputedError, match=r"suite broken could not compute .*\(value\)"):
        validate([check], "r", pandas_max_rows=pandas_max_rows)


def test_the_silver_patterns_read_the_same_on_pandas_and_on_spark(spark):
    """GX matches a regex with Python's re on pandas and Java's on Spark: `\\s` and `$` differ between them."""
    values = [
        "a@b.co",
        "a b@x.com",
        "a\u00a0b@x.com",
        "a\u2028b@x.com",
        "a@b.co\n",
        "+380501234567",
        "+380501234567\n",
        "+380501234567\r",
        "+380501234567\u2028",
        "+380501234567\u0085",
    ]
    values += ["pr_" + "0" * 20, "pr_" + "0" * 20 + "\u2028", "pr_" + "0" * 20 + "\r"]
    patterns = {"email": silver_suite.EMAIL, "phone": E164, "profile_id": PROFILE_ID_REGEX}
    expected = {
        "email": [True] + [False] * 12,
        "phone": [False] * 5 + [True] + [False] * 7,
        "profile_id": [False] * 10 + [True, False, False],
    }
    frame = spark.createDataFrame([(i, v) for i, v in enumerate(values)], "i int, v string")
    on_spark = frame.select("i", *[F.col("v").rlike(p).alias(name) for name, p in patterns.items()]).orderBy("i")
    rows = on_spark.collect()
    for name, pattern in patterns.items():
        assert [bool(re.search(pattern, v)) for v in values] == expected[name], name
        assert [r[name] for r in rows] == expected[name], name


@pytest.mark.parametrize("pandas_max_rows", [1000, 0])  # GX on pandas, and on Spark
@pytest.mark.parametrize("checks_column_set", [True, False])
def test_an_expectation_of_a_column_the_table_lacks_is_a_failed_check_not_an_error(
    spark, checks_column_set, pandas_max_rows
):
    """A column the policy lets silver hold since the table was written, or one a suite names that the table
    lacks: a finding to report, as GX's column-set check reports it, not an engine failure that stops the gate
    without a verdict."""
    frame = spark.createDataFrame([("a",)], "value string")
    column_set = [gx.expectations.ExpectTableColumnsToMatchSet(column_set=["value", "date_of_birth"], exact_match=True)]
    check = TableCheck(
        "held",
        "t",
        frame,
        [
            *(column_set if checks_column_set else []),
            gx.expectations.ExpectColumnValuesToNotBeNull(column="date_of_birth"),
            gx.expectations.ExpectColumnValuesToNotBeNull(column="value"),
        ],
    )
    expected = ["held: expect_column_values_to_not_be_null(date_of_birth)"]
    expected += ["held: expect_table_columns_to_match_set(table)"] if checks_column_set else []
    assert sorted(failed_checks(validate([check], "r", pandas_max_rows=pandas_max_rows))) == expected


def test_an_erasure_after_a_run_the_gate_refused_publishes_nothing_of_that_run(spark, gated, tmp_path):
    """A run refused in its silver suite leaves its admitted records behind, which the gold suites an erasure
    runs do not check: an erasure of another person then re-resolves none of them, and withdraws only its own
    profile from what the last passed run published."""
    from jobs import consent, subject_rights
    from tests.conftest import DEMO_CUTOFF

    cfg = copy_lakehouse(gated[0], tmp_path)
    broken = "no-address-here"
    silver = delta_io.read_delta(spark, cfg.tables.silver)
    victim, subject = silver.where("email IS NOT NULL").orderBy(*SUBJECT).select(*SUBJECT).take(2)
    is_victim = (F.col("source_system") == victim[0]) & (F.col("source_record_id") == victim[1])
    delta_io.merge_delta(
        silver.where(is_victim).withColumn("email", F.lit(broken)).localCheckpoint(),
        cfg.tables.silver,
        keys=SUBJECT,
        run_id="run-2",
        job="test",
        update_changed=True,
    )
    consent.run(spark, cfg, run_id="run-2", cutoff=DEMO_CUTOFF)
    resolve.run(spark, cfg, run_id="run-2")
    unify.run(spark, cfg, run_id="run-2")
    with pytest.raises(QualityGateError, match="silver: expect_column_values_to_match_regex"):
        run(spark, cfg, run_id="run-2")
    assert delta_io.read_delta(spark, cfg.tables.admitted).where(F.col("email") == broken).count() == 1
    record = f"{subject[0]}:{subject[1]}"
    erased_profile = (
        delta_io.read_delta(spark, cfg.tables.record_profiles).where(F.col("record_id") == record).first()["profile_id"]
    )
    published = delta_io.read_delta(spark, cfg.tables.profiles).localCheckpoint()

    certificate = subject_rights.run(spark, cfg, run_id="erase-1", action="erase", record=[record])

    assert json.loads(certificate.read_text())["re_resolution"].startswith("not published: not re-resolved")
    expected = published.where(F.col("profile_id") != erased_profile)
    assert_df_equality(
        delta_io.read_delta(spark, cfg.tables.profiles), expected, ignore_row_order=True, ignore_nullable=True
    )
