"""silver/consent_ledger, its feeds' reconciliation (audit/consent_runs), the consent gate's
(audit/consent_decisions, every admitted record's grant in force at the cutoff) and the staged
gold/profile_permissions against the ledger (here, as an erasure's re-resolution reads no ledger)."""

from __future__ import annotations

from collections.abc import Sequence

import great_expectations as gx
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from expectations import (
    QualityInputs,
    TableCheck,
    equal_columns,
    holds,
    in_set,
    latest_run,
    must_hold,
    required_unique,
    run_reconciliation,
)
from jobs.canonical import CONSENT_STATUSES, LAWFUL_BASES, SUBJECT, lookup
from jobs.config import PurposePolicy
from jobs.consent import NONE_RECORDED, STATUS_PRECEDENCE, accepted_bases, lapsed_grant, refusals_in_force_when_received


def with_purpose_checks(ledger: DataFrame, consent_runs: DataFrame, purposes: Sequence[str]) -> DataFrame:
    """The ledger plus `purpose_declared`: an event the last consent run's counted attempt landed (its run id, source
    and landing time) names a purpose the policy declares. The ledger keeps every event for good, so one landed
    under an earlier policy may name a purpose since retired (the gate ignores those): checking it again would
    refuse every run after the change, and so would checking what an earlier attempt of the run landed before the
    policy changed."""
    keys = ["run_id", "source_system", "landed_at"]
    last_run = latest_run(consent_runs, "landed_at").select(*keys, F.lit(True).alias("_last_run")).distinct()
    return (
        ledger.join(F.broadcast(last_run), keys, "left")
        .withColumn("purpose_declared", holds(F.col("_last_run").isNull() | F.col("purpose").isin(*purposes)))
        .select(*ledger.columns, "purpose_declared")
    )


def applied_cutoff(consent_runs: DataFrame) -> DataFrame:
    """One row: `_cutoff`, the effective-consent cutoff the last consent run applied (null when none recorded it)."""
    applied = F.col("cutoff") if "cutoff" in consent_runs.columns else F.lit(None).cast("timestamp")
    return latest_run(consent_runs, "landed_at").agg(F.max(applied).alias("_cutoff"))


def deciding_events(events: DataFrame, keys: Sequence[str]) -> tuple[DataFrame, DataFrame]:
    """Of events (ledger rows with `_cutoff`, the cutoff the last consent run applied), per keys: those at or
    before the cutoff, with `_live` (not a lapsed grant) and `_latest` (the time of the latest live event, of the
    latest lapsed grant when all lapsed), and the events that may decide: at `_latest`, of the strongest status (a
    withdrawal before a denial before a grant), then the latest recorded (one with no recorded_at last), as
    effective consent orders them."""
    by_key = Window.partitionBy(*keys)
    timed = (
        events.where(F.col("event_time") <= F.col("_cutoff"))
        .withColumn("_live", ~lapsed_grant(F.col("_cutoff")))
        .withColumn("_may_decide", F.col("_live") | ~F.max("_live").over(by_key))
        .withColumn("_latest", F.max(F.when(F.col("_may_decide"), F.col("event_time"))).over(by_key))
    )
    recorded_late_first = F.coalesce(-F.unix_micros("recorded_at"), F.lit(2**62))
    precedence = F.struct(lookup(STATUS_PRECEDENCE)[F.col("status")].alias("status"), recorded_late_first.alias("r"))
    deciding = (
        timed.where(F.col("_may_decide") & (F.col("event_time") == F.col("_latest")))
        .withColumn("_precedence", precedence)
        .withColumn("_first", F.min("_precedence").over(by_key))
        .where(F.col("_precedence") == F.col("_first"))
    )
    return timed, deciding


def with_unification_in_force(
    admitted: DataFrame, ledger: DataFrame, consent_runs: DataFrame, policy: PurposePolicy
) -> DataFrame:
    """Admitted records' keys plus `unification_in_force`: the record's unification event (source system + event
    id) is one the ledger holds for this subject and the unification purpose that may decide it at the cutoff the
    last consent run applied (see deciding_events: no later event, such as a withdrawal, overrides it), and it is
    granted on a basis the policy accepts for the purpose and not expired (`expires_at` null or after the cutoff)."""
    events = (
        ledger.where(F.col("purpose") == policy.unification_purpose)
        .crossJoin(F.broadcast(applied_cutoff(consent_runs)))
        .transform(refusals_in_force_when_received, F.col("_cutoff"))
        .select(*SUBJECT, "event_id", "status", "lawful_basis", "event_time", "recorded_at", "expires_at", "_cutoff")
    )
    _, deciding = deciding_events(events, SUBJECT)
    bases = list(policy.purpose_bases[policy.unification_purpose])
    in_force = (
        (F.col("status") == "granted")
        & F.col("lawful_basis").isin(*bases)
        & F.col("_cutoff").isNotNull()
        & ~lapsed_grant(F.col("_cutoff"))
    )
    return (
        admitted.select(*SUBJECT, "unification_event_id")
        .join(
            deciding.select(
                *SUBJECT,
                F.col("event_id").alias("unification_event_id"),
                "status",
                "lawful_basis",
                "expires_at",
                "_cutoff",
            ),
            [*SUBJECT, "unification_event_id"],
            "left",
        )
        .select(*SUBJECT, holds(in_force).alias("unification_in_force"))
    )


def with_permission_checks(
    permissions: DataFrame, sources: DataFrame, ledger: DataFrame, consent_runs: DataFrame, policy: PurposePolicy
) -> DataFrame:
    """Profile permissions plus three flags, each computed from the ledger as of the cutoff the last consent run
    applied, over the events of the profile's records for the purpose:
    - `allowed_as_decided`: allowed exactly when the deciding status is granted on a basis the policy accepts;
    - `decided_by_latest`: decided_at is the time of the latest live event (of the latest lapsed grant when all
      lapsed; null when there is none);
    - `decided_as_recorded`: the deciding event named is one of the events that may decide (at that time, of
      the strongest status: a withdrawal before a denial before a grant, then the latest recorded), and the
      row's status and basis are that event's (`expired` for a lapsed grant); with no event, the status is
      none_recorded and no event is named."""
    events = sources.select("profile_id", *SUBJECT).join(
        ledger.crossJoin(F.broadcast(applied_cutoff(consent_runs)))
        .transform(refusals_in_force_when_received, F.col("_cutoff"))
        .select(
            *SUBJECT,
            "purpose",
            "event_id",
            "status",
            "lawful_basis",
            "event_time",
            "recorded_at",
            "expires_at",
            "_cutoff",
        ),
        list(SUBJECT),
    )
    timed, deciding = deciding_events(events, ("profile_id", "purpose"))
    latest = timed.select("profile_id", "purpose", "_latest").distinct()
    deciding = deciding.select(
        "profile_id",
        "purpose",
        F.col("source_system").alias("deciding_source_system"),
        F.col("source_record_id").alias("deciding_source_record_id"),
        F.col("event_id").alias("deciding_event_id"),
        F.when(~F.col("_live"), F.lit("expired")).otherwise(F.col("status")).alias("_event_status"),
        F.col("lawful_basis").alias("_event_basis"),
    )
    granted = holds(
        (F.col("status") == "granted")
        & F.array_contains(accepted_bases(policy)[F.col("purpose")], F.col("lawful_basis"))
    )
    as_recorded = F.when(
        F.col("_latest").isNull(), (F.col("status") == NONE_RECORDED) & F.col("deciding_event_id").isNull()
    ).otherwise((F.col("status") == F.col("_event_status")) & F.col("lawful_basis").eqNullSafe(F.col("_event_basis")))
    named = ["profile_id", "purpose", "deciding_source_system", "deciding_source_record_id", "deciding_event_id"]
    return (
        permissions.join(latest, ["profile_id", "purpose"], "left")
        .join(deciding, named, "left")
        .withColumn("allowed_as_decided", holds(F.col("allowed") == granted))
        .withColumn("decided_by_latest", F.col("decided_at").eqNullSafe(F.col("_latest")))
        .withColumn("decided_as_recorded", holds(as_recorded))
        .drop("_latest", "_event_status", "_event_basis")
    )


def checks(inputs: QualityInputs) -> list[TableCheck]:
    expect = gx.expectations
    ledger = TableCheck(
        suite="consent_ledger",
        table="silver/consent_ledger",
        frame=with_purpose_checks(inputs.consent_ledger, inputs.consent_runs, list(inputs.cfg.policy.purpose_bases)),
        expectations=[
            *required_unique("source_system", "event_id", description="one row per consent event"),
            in_set("lawful_basis", LAWFUL_BASES, "a GDPR Art. 6 lawful basis"),
            must_hold("purpose_declared", "every event the last run landed names a purpose the policy declares"),
            in_set("status", CONSENT_STATUSES, "a known consent status"),
            expect.ExpectColumnValuesToNotBeNull(column="status", description="every event has a status"),
            expect.ExpectColumnValuesToNotBeNull(column="source_record_id", description="every event has a subject"),
            expect.ExpectColumnValuesToNotBeNull(column="event_time", description="every event has a time"),
        ],
    )
    feeds = [s.name for s in inputs.cfg.sources if s.consent_feed is not None]
    landing = run_reconciliation(
        "consent_event_reconciliation",
        "audit/consent_runs",
        inputs.consent_runs,
        "landed_at",
        ("events_read", "events_landed", "events_quarantined"),
        feeds,
        "consent events",
    )
    decisions = latest_run(inputs.consent_audit, "decided_at").where(F.col("attribute") == "*")
    decided = (
        decisions.agg(
            F.count_distinct(*("source_system", "source_record_id")).alias("records_decided"),
            F.count("*").alias("decisions"),
            F.count(F.when(F.col("decision") == "admitted", True)).alias("records_admitted"),  # 0, not null, on none
        )
        .crossJoin(
            inputs.silver.agg(F.count("*").alias("silver_records")),
        )
        .crossJoin(
            with_unification_in_force(
                inputs.admitted, inputs.consent_ledger, inputs.consent_runs, inputs.cfg.policy
            ).agg(
                F.count("*").alias("admitted_rows"),
                F.count(F.when(F.col("unification_in_force"), True)).alias("admitted_in_force"),
            )
        )
    )
    reconciliation = TableCheck(
        suite="consent_reconciliation",
        table="audit/consent_decisions",
        frame=decided,
        expectations=[
            equal_columns(
                "silver_records",
                "records_decided",
                "the gate decided every silver record (admitted + excluded = silver)",
            ),
            equal_columns("records_decided", "decisions", "one record-level decision per record"),
            equal_columns(
                "records_admitted",
                "admitted_rows",
                "the admitted table holds exactly the admitted records",
            ),
            equal_columns(
                "admitted_rows",
                "admitted_in_force",
                "every admitted record's unification grant is in the ledger, the event deciding it at the run's "
                "cutoff, on an accepted basis, and unexpired",
            ),
        ],
    )
    permissions = TableCheck(
        suite="profile_permissions",
        table="gold/profile_permissions",
        frame=with_permission_checks(
            inputs.profile_permissions,
            inputs.profile_sources,
            inputs.consent_ledger,
            inputs.consent_runs,
            inputs.cfg.policy,
        ),
        expectations=[
            *required_unique("profile_id", "purpose", description="one permission per profile and purpose"),
            must_hold("allowed_as_decided", "allowed only on a grant whose basis the policy accepts for the purpose"),
            must_hold(
                "decided_by_latest",
                "decided by the latest live consent event of any of the profile's records as of the cutoff",
            ),
            must_hold(
                "decided_as_recorded",
                "the deciding event named may decide (the latest, of the strongest status, the latest recorded), "
                "and the status and basis are its own",
            ),
        ],
    )
    declared = inputs.profiles.sparkSession.createDataFrame(
        [(p,) for p in inputs.cfg.policy.purposes], "purpose string"
    )
    grid = inputs.profiles.select("profile_id").distinct().crossJoin(F.broadcast(declared))
    coverage = TableCheck(
        suite="profile_permissions_coverage",
        table="gold/profile_permissions",
        frame=grid.agg(F.count("*").alias("profile_purposes"))
        .crossJoin(
            grid.join(inputs.profile_permissions, ["profile_id", "purpose"], "left_semi").agg(
                F.count("*").alias("profile_purposes_held")
            )
        )
        .crossJoin(inputs.profile_permissions.agg(F.count("*").alias("permission_rows"))),
        expectations=[
            equal_columns(
                "profile_purposes", "profile_purposes_held", "a permission for every profile and declared purpose"
            ),
            equal_columns(
                "permission_rows", "profile_purposes", "no permission beyond the profiles' declared purposes"
            ),
        ],
    )
    return [ledger, landing, reconciliation, permissions, coverage]
