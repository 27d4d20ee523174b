"""gold/profile_registry (staged): every profile id ever issued, active exactly while records hold it, with its
published history kept (no id dropped, no creation or ending rewritten)."""

from __future__ import annotations

import operator
from functools import reduce

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from expectations import QualityInputs, TableCheck, holds, must_hold, required_unique, well_formed_profile_ids
from jobs.profile_ids import ACTIVE, MERGED, STATUSES

HISTORY = ("status", "created_at", "created_run_id", "ended_at", "ended_run_id", "successor_profile_id")


def _as_published(*columns: str) -> Column:
    """The staged row's columns equal (null-safe) the published row's (`_p_<column>`)."""
    return reduce(operator.and_, [F.col(c).eqNullSafe(F.col(f"_p_{c}")) for c in columns])


def with_registry_checks(registry: DataFrame, previous: DataFrame, record_profiles: DataFrame) -> DataFrame:
    """The staged registry fully joined with the published one on profile_id (an id only published has null
    staged columns), plus `still_issued` (the id is still in the staged registry) and, true on the rows of an id
    only published:
    - `status_known`; `created_recorded` (creation time and run); `ended_as_status` (end time and run set exactly
      when no longer active); `successor_as_status` (set exactly when merged);
    - `active_as_held`: active exactly when a record of record_profiles holds the id;
    - `successor_held`: an id merged by this run (not ended when published) points at one a record holds (an id
      ended before keeps its successor, which an erasure may since have deleted);
    - `new_id_active`: an id not published before is one this run issued, so active;
    - `creation_kept`, `ending_kept`: a published id keeps its creation, and one ended before its status, end
      and successor."""
    held = record_profiles.select("profile_id").distinct()
    published = previous.select("profile_id", *[F.col(c).alias(f"_p_{c}") for c in HISTORY])
    status, successor = F.col("status"), F.col("successor_profile_id")
    was_published = F.col("_p_status").isNotNull()
    was_ended = was_published & (F.col("_p_status") != ACTIVE)
    ended = F.col("ended_at").isNotNull() & F.col("ended_run_id").isNotNull()
    still_open = F.col("ended_at").isNull() & F.col("ended_run_id").isNull()
    staged_checks = {
        "status_known": status.isin(*STATUSES),
        "created_recorded": F.col("created_at").isNotNull() & F.col("created_run_id").isNotNull(),
        "ended_as_status": F.when(status == ACTIVE, still_open).otherwise(ended),
        "successor_as_status": successor.isNotNull() == (status == MERGED),
        "active_as_held": F.col("_held").isNotNull() == (status == ACTIVE),
        "successor_held": successor.isNull() | was_ended | F.col("_successor_held").isNotNull(),
        "new_id_active": was_published | (status == ACTIVE),
        "creation_kept": ~was_published | _as_published("created_at", "created_run_id"),
        "ending_kept": ~was_ended | _as_published(*HISTORY),
    }
    return (
        registry.withColumn("_staged", F.lit(True))
        .join(published, "profile_id", "full")
        .join(held.withColumn("_held", F.lit(True)), "profile_id", "left")
        .join(
            held.select(F.col("profile_id").alias("successor_profile_id"), F.lit(True).alias("_successor_held")),
            "successor_profile_id",
            "left",
        )
        .withColumns({name: holds(F.col("_staged").isNull() | check) for name, check in staged_checks.items()})
        .withColumn("still_issued", holds(F.col("_staged")))
        .drop("_staged", "_held", "_successor_held", *[f"_p_{c}" for c in HISTORY])
    )


def checks(inputs: QualityInputs) -> list[TableCheck]:
    return [
        TableCheck(
            suite="profile_registry",
            table="gold/profile_registry",
            frame=with_registry_checks(
                inputs.profile_registry, inputs.previous_profile_registry, inputs.record_profiles
            ),
            expectations=[
                *required_unique("profile_id", description="one registry row per profile id"),
                well_formed_profile_ids("profile_id"),
                must_hold("status_known", "a known status: " + ", ".join(STATUSES)),
                must_hold("created_recorded", "every id records when and by which run it was issued"),
                must_hold("ended_as_status", "an end time and run exactly on the ids no longer active"),
                must_hold("successor_as_status", "a successor exactly on the merged ids"),
                must_hold("active_as_held", "an id is active exactly when a record is assigned to it"),
                must_hold("successor_held", "an id merged by this run points at a profile that holds records"),
                must_hold("new_id_active", "an id issued by this run is active"),
                must_hold("still_issued", "every published id is still in the registry (ids are never dropped)"),
                must_hold("creation_kept", "a published id keeps its creation time and run"),
                must_hold("ending_kept", "an id ended before keeps its status, end time and run, and successor"),
            ],
        )
    ]
