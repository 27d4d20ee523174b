"""audit/identity_events (staged): this run's profile-id changes, each as the registry records it, and every
change the registry records this run an event."""

from __future__ import annotations

import great_expectations as gx
from pyspark.sql import DataFrame
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
    well_formed_profile_ids,
)
from jobs.profile_ids import ACTIVE, EVENT_TYPES, MERGED, RETIRED

ISSUING = ("created", "split")  # events of an id this run issued
ENDING = (MERGED, RETIRED)  # events of an id this run ended
RELATING = ("split", MERGED, "moved")  # events naming the profile the records came from or went to


def with_event_checks(events: DataFrame, registry: DataFrame) -> DataFrame:
    """Events with `of_latest_run` (the run of the newest event), `related_as_type` (a related profile exactly on
    the types that name one), `records_as_type` (none for a retirement, some for any other change) and
    `registry_agrees`: the staged registry holds the event's profile as the event left it (issued by the event's
    run at its time and active; merged into the related profile or retired, by the run at its time; records
    moved to an active one)."""
    latest = latest_run(events, "event_at").select(F.col("run_id").alias("_latest_run")).distinct()
    state = registry.select(
        "profile_id",
        *[F.col(c).alias(f"_r_{c}") for c in ("status", "created_at", "created_run_id", "ended_at", "ended_run_id")],
        F.col("successor_profile_id").alias("_r_successor"),
    )
    event_type, run, at = F.col("event_type"), F.col("run_id"), F.col("event_at")
    issued = (F.col("_r_created_run_id") == run) & (F.col("_r_created_at") == at) & (F.col("_r_status") == ACTIVE)
    ended = (F.col("_r_ended_run_id") == run) & (F.col("_r_ended_at") == at) & (F.col("_r_status") == event_type)
    agrees = (
        F.when(event_type.isin(*ISSUING), issued)
        .when(event_type == MERGED, ended & (F.col("_r_successor") == F.col("related_profile_id")))
        .when(event_type == RETIRED, ended)
        .when(event_type == "moved", F.col("_r_status") == ACTIVE)
    )
    return (
        events.join(F.broadcast(latest), run == F.col("_latest_run"), "left")
        .join(state, "profile_id", "left")
        .withColumn("of_latest_run", holds(F.col("_latest_run").isNotNull()))
        .withColumn("related_as_type", holds(F.col("related_profile_id").isNotNull() == event_type.isin(*RELATING)))
        .withColumn(
            "records_as_type",
            holds(F.when(event_type == RETIRED, F.col("records") == 0).otherwise(F.col("records") >= 1)),
        )
        .withColumn("registry_agrees", holds(agrees))
        .drop("_latest_run", *[c for c in state.columns if c.startswith("_r_")])
    )


def change_counts(events: DataFrame, registry: DataFrame, previous: DataFrame) -> DataFrame:
    """One row: the profiles this run issued and ended by the registry against the published one before it
    (`profiles_issued`: ids it did not hold; `profiles_ended`: ids it held active that are ended now), and by the
    newest run's events (`issued_events`, `ended_events`: distinct profiles of its issuing and ending events).
    Counted from the registries, not from the events' time: a run that staged no event still has to match."""
    was = previous.select("profile_id", F.col("status").alias("_was"))
    registry_counts = registry.join(was, "profile_id", "left").agg(
        F.count(F.when(F.col("_was").isNull(), True)).alias("profiles_issued"),
        F.count(F.when((F.col("_was") == ACTIVE) & (F.col("status") != ACTIVE), True)).alias("profiles_ended"),
    )
    latest = latest_run(events, "event_at")
    event_counts = latest.agg(
        F.count_distinct(F.when(F.col("event_type").isin(*ISSUING), F.col("profile_id"))).alias("issued_events"),
        F.count_distinct(F.when(F.col("event_type").isin(*ENDING), F.col("profile_id"))).alias("ended_events"),
    )
    return registry_counts.crossJoin(event_counts)


def checks(inputs: QualityInputs) -> list[TableCheck]:
    expect = gx.expectations
    events = TableCheck(
        suite="identity_events",
        table="audit/identity_events",
        frame=with_event_checks(inputs.identity_events, inputs.profile_registry),
        expectations=[
            *required_unique("event_id", description="one row per event"),
            must_hold("of_latest_run", "only the events of this run (the run of the newest event)"),
            in_set("event_type", EVENT_TYPES, "a known event type"),
            expect.ExpectColumnValuesToNotBeNull(column="event_type", description="every event has a type"),
            expect.ExpectColumnValuesToNotBeNull(column="profile_id", description="every event names its profile"),
            well_formed_profile_ids("profile_id"),
            well_formed_profile_ids("related_profile_id", "well-formed related profile ids"),
            must_hold("related_as_type", "a related profile exactly on split, merged and moved events"),
            must_hold("records_as_type", "a retirement moves no record, every other change some"),
            must_hold("registry_agrees", "the registry holds each event's profile as the event left it"),
        ],
    )
    reconciliation = TableCheck(
        suite="identity_event_reconciliation",
        table="audit/identity_events",
        frame=change_counts(inputs.identity_events, inputs.profile_registry, inputs.previous_profile_registry),
        expectations=[
            equal_columns(
                "profiles_issued",
                "issued_events",
                "every id the run issued has a created or split event",
            ),
            equal_columns(
                "profiles_ended",
                "ended_events",
                "every id the run ended has a merged or retired event",
            ),
        ],
    )
    return [events, reconciliation]
