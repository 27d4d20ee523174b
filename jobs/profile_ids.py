"""Stable profile ids: Splink's cluster ids change from run to run; ours do not.

A persistent mapping record -> profile_id is carried from run to run. Each run's clusters inherit
the previous ids by overlap:

1. every previous profile follows the new cluster holding most of its records (ties: one where it
   would keep its id, as no profile there holds more of its records or as many and is older; then the
   cluster with the smaller key), so a record that leaves it does not take its id away from the rest; one
   that would merge into another there follows instead a cluster holding as many of its records that no
   profile follows, so two profiles that trade records evenly both keep their ids (in one round: one whose
   first such cluster an older profile takes merges);
2. a cluster followed by several previous profiles keeps the id of the one with the largest
   overlap, and on a tie the oldest (created first, then the smaller id); the others are
   `merged` into it;
3. a cluster no previous profile follows gets a new id (new_profile_id, salted when the registry holds it):
   `split` from the profiles its records came from, or `created` when none of its records had a profile;
4. records that leave a profile for a cluster another previous profile keeps are `moved` to it (one event
   per profile they came from, with the records from it; both profiles keep their ids);
5. a previous profile none of whose records is still clustered is `retired`.

Rerunning on the same clusters therefore changes nothing, and growing data keeps known people's ids.
The rules are one SQL text, run on the engine that resolved the clusters (jobs.engines).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa

from jobs.engines import SqlEngine, sql_string, sql_timestamp

_UTC = pa.timestamp("us", tz="UTC")
REGISTRY_SCHEMA = pa.schema(
    [
        ("profile_id", pa.string()),
        ("status", pa.string()),
        ("created_at", _UTC),
        ("created_run_id", pa.string()),
        ("ended_at", _UTC),
        ("ended_run_id", pa.string()),
        ("successor_profile_id", pa.string()),
    ]
)
EVENTS_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("event_type", pa.string()),
        ("profile_id", pa.string()),
        ("related_profile_id", pa.string()),
        ("records", pa.int64()),
        ("event_at", _UTC),
    ]
)
IDENTITY_EVENTS_SCHEMA = EVENTS_SCHEMA.append(pa.field("event_id", pa.string()))  # as resolve stages them
ASSIGNMENTS_SCHEMA = pa.schema([("record_id", pa.string()), ("profile_id", pa.string())])
CLUSTERS_SCHEMA = pa.schema([("record_id", pa.string()), ("cluster_key", pa.string())])  # this run's clusters
PROFILE_ID_PATTERN = "pr_[0-9a-f]{20}"  # new_profile_id's: 20 hex digits of a SHA-256
ACTIVE = "active"
MERGED = "merged"
RETIRED = "retired"
STATUSES = (ACTIVE, MERGED, RETIRED)  # a registry row's: held by records, or ended (a merged one has a successor)
EVENT_TYPES = ("created", "split", MERGED, "moved", RETIRED)


@dataclass
class ProfileIdAssignment:
    """The outcome of one run, as tables on its engine: record -> profile, the registry after the run, and
    what changed."""

    assignments: str  # record_id, profile_id
    registry: str  # REGISTRY_SCHEMA, every profile ever issued
    events: str  # EVENTS_SCHEMA, this run's created / merged / split / moved / retired


def new_profile_id(run_id: str, *parts: str, reissued: bool = False) -> str:
    """SQL of a new id, from the run and the SQL expressions given (the cluster's smallest record id, so a rerun
    issues the same one). A reissued id takes the hash's next 20 hex digits: no text a record id can hold makes
    it another cluster's first choice."""
    first = 21 if reissued else 1
    return f"'pr_' || substring(sha256(concat_ws(':', {sql_string(run_id)}, {', '.join(parts)})), {first}, 20)"


def first_profile_id(run_id: str, first_record_id: str) -> str:
    """The id new_profile_id gives (not reissued) to a cluster of this run whose smallest record id is given."""
    return "pr_" + hashlib.sha256(f"{run_id}:{first_record_id}".encode()).hexdigest()[:20]


def assign_stable_profile_ids(
    db: SqlEngine, clusters: str, previous: str, registry: str, run_id: str, now: datetime
) -> ProfileIdAssignment:
    """Give this run's clusters (record_id, cluster_key) stable profile ids, given the previous
    assignments (record_id, profile_id) and the profile registry: tables on the engine db."""
    run, at = sql_string(run_id), sql_timestamp(now)
    active = f"(SELECT profile_id, created_at FROM {registry} WHERE status = '{ACTIVE}')"
    overlap = db.create(
        "ids_overlap",
        f"""SELECT o.cluster_key, o.profile_id, o.overlap, a.created_at
        FROM (
            SELECT c.cluster_key, p.profile_id, count(*) AS overlap
            FROM {clusters} c JOIN {previous} p ON c.record_id = p.record_id
            GROUP BY c.cluster_key, p.profile_id
        ) o LEFT JOIN {active} a ON o.profile_id = a.profile_id""",
    )
    # Each previous profile follows the cluster holding most of its records, on a tie one where it would keep its
    # id (no profile there has more of its records, or as many and is older); each cluster keeps the id of the
    # follower with the largest overlap, then the oldest, then the smallest id.
    keeps_id_first = "overlap DESC, created_at ASC NULLS LAST, profile_id ASC"
    followed = db.create(
        "ids_followed",
        f"""SELECT cluster_key, profile_id, overlap, created_at, row_number() OVER (
            PARTITION BY cluster_key ORDER BY {keeps_id_first}
        ) AS cluster_rank
        FROM (
            SELECT *, row_number() OVER (
                PARTITION BY profile_id ORDER BY overlap DESC, would_keep_id DESC, cluster_key ASC
            ) AS profile_rank
            FROM (
                SELECT *, row_number() OVER (PARTITION BY cluster_key ORDER BY {keeps_id_first}) = 1 AS would_keep_id
                FROM {overlap}
            ) candidates
        ) followed WHERE profile_rank = 1""",
    )
    # A profile that would merge into another, and holds as many of its records in a cluster no profile follows,
    # follows that one instead and keeps its id there (two profiles that trade records evenly both keep theirs):
    # each such cluster takes the first of those profiles in keep-id order, on a tie the cluster with the smaller key.
    rehomed = db.create(
        "ids_rehomed",
        f"""SELECT cluster_key, profile_id, overlap FROM (
            SELECT *, row_number() OVER (PARTITION BY cluster_key ORDER BY {keeps_id_first}) AS taken
            FROM (
                SELECT o.cluster_key, o.profile_id, o.overlap, o.created_at, row_number() OVER (
                    PARTITION BY o.profile_id ORDER BY o.cluster_key
                ) AS choice
                FROM {overlap} o JOIN {followed} f ON o.profile_id = f.profile_id AND o.overlap = f.overlap
                WHERE f.cluster_rank > 1 AND o.cluster_key NOT IN (SELECT cluster_key FROM {followed})
            ) free WHERE choice = 1
        ) contenders WHERE taken = 1""",
    )
    ranked = db.create(
        "ids_ranked",
        f"""SELECT cluster_key, profile_id, overlap, cluster_rank FROM {followed}
        WHERE profile_id NOT IN (SELECT profile_id FROM {rehomed})
        UNION ALL
        SELECT cluster_key, profile_id, overlap, 1 FROM {rehomed}""",
    )
    survivors = f"(SELECT cluster_key, profile_id FROM {ranked} WHERE cluster_rank = 1)"
    merged = db.create(
        "ids_merged",
        f"""SELECT r.profile_id, s.profile_id AS related_profile_id, r.overlap
        FROM {ranked} r JOIN {survivors} s ON r.cluster_key = s.cluster_key
        WHERE r.cluster_rank > 1""",
    )
    # A run published and run again with its run id (cleared after a fix) may part a cluster it created from the
    # records that keep its id: the part's new id would be that id again, so it takes one reissued with this
    # resolve's instant (never an earlier attempt's, whose ids the registry may hold, merged or retired).
    fresh = db.create(
        "ids_fresh",
        f"""SELECT f.cluster_key, CASE WHEN r.profile_id IS NULL THEN f.first_choice ELSE f.reissued END AS profile_id,
            f.records
        FROM (
            SELECT cluster_key, records, {new_profile_id(run_id, "first_record_id")} AS first_choice,
                {new_profile_id(run_id, "first_record_id", sql_string(now.isoformat()), reissued=True)} AS reissued
            FROM (
                SELECT cluster_key, count(*) AS records, min(record_id) AS first_record_id
                FROM {clusters} GROUP BY cluster_key
            ) sizes
            WHERE NOT EXISTS (SELECT 1 FROM {survivors} s WHERE s.cluster_key = sizes.cluster_key)
        ) f LEFT JOIN {registry} r ON r.profile_id = f.first_choice""",
    )
    assignments = db.create(
        "ids_assignments",
        f"""SELECT c.record_id, i.profile_id
        FROM {clusters} c JOIN (
            SELECT cluster_key, profile_id FROM {survivors} UNION ALL SELECT cluster_key, profile_id FROM {fresh}
        ) i ON c.cluster_key = i.cluster_key""",
    )
    retired = db.create(
        "ids_retired",
        f"""SELECT profile_id FROM {active} a
        WHERE NOT EXISTS (SELECT 1 FROM {overlap} o WHERE o.profile_id = a.profile_id)""",
    )
    # A new cluster whose records came from previous profiles is split from each of them (one row per profile, with
    # the records that came from it); else created (with all its records). A kept cluster's records from a profile
    # that followed another cluster were moved from it.
    events = db.create(
        "ids_events",
        f"""SELECT {run} AS run_id, event_type, profile_id, related_profile_id, CAST(records AS BIGINT) AS records,
            {at} AS event_at
        FROM (
            SELECT CASE WHEN o.profile_id IS NULL THEN 'created' ELSE 'split' END AS event_type,
                f.profile_id, o.profile_id AS related_profile_id, coalesce(o.overlap, f.records) AS records
            FROM {fresh} f LEFT JOIN {overlap} o ON f.cluster_key = o.cluster_key
            UNION ALL
            SELECT '{MERGED}', profile_id, related_profile_id, overlap FROM {merged}
            UNION ALL
            SELECT 'moved', s.profile_id, r.profile_id, o.overlap
            FROM {overlap} o JOIN {survivors} s ON o.cluster_key = s.cluster_key
                JOIN {ranked} r ON o.profile_id = r.profile_id
            WHERE r.cluster_key <> o.cluster_key
            UNION ALL
            SELECT '{RETIRED}', profile_id, CAST(NULL AS VARCHAR), 0 FROM {retired}
        ) changes""",
    )
    updated = db.create(
        "ids_registry",
        f"""SELECT r.profile_id, coalesce(e.status, r.status) AS status, r.created_at, r.created_run_id,
            CASE WHEN e.status IS NULL THEN r.ended_at ELSE {at} END AS ended_at,
            CASE WHEN e.status IS NULL THEN r.ended_run_id ELSE {run} END AS ended_run_id,
            coalesce(e.successor_profile_id, r.successor_profile_id) AS successor_profile_id
        FROM {registry} r LEFT JOIN (
            SELECT profile_id, '{MERGED}' AS status, related_profile_id AS successor_profile_id FROM {merged}
            UNION ALL
            SELECT profile_id, '{RETIRED}', CAST(NULL AS VARCHAR) FROM {retired}
        ) e ON r.profile_id = e.profile_id
        UNION ALL
        SELECT profile_id, '{ACTIVE}', {at}, {run}, CAST(NULL AS TIMESTAMPTZ), CAST(NULL AS VARCHAR),
            CAST(NULL AS VARCHAR)
        FROM {fresh}""",
    )
    return ProfileIdAssignment(assignments=assignments, registry=updated, events=events)


def retire_withdrawn(db: SqlEngine, registry: str, withdrawn: str, run_id: str, now: datetime) -> tuple[str, str]:
    """The registry rows of the active profiles named in `withdrawn` (profile_id), retired by this run, and their
    `retired` events (EVENTS_SCHEMA): for profiles whose records left gold outside a resolve (an erasure whose
    re-resolution was not published), so that their ids stay issued, as the next resolve would have left them."""
    run, at = sql_string(run_id), sql_timestamp(now)
    ended = db.create(
        "withdrawn_registry",
        f"""SELECT profile_id, '{RETIRED}' AS status, created_at, created_run_id, {at} AS ended_at,
            {run} AS ended_run_id, CAST(NULL AS VARCHAR) AS successor_profile_id
        FROM {registry} WHERE status = '{ACTIVE}' AND profile_id IN (SELECT profile_id FROM {withdrawn})""",
    )
    events = db.create(
        "withdrawn_events",
        f"""SELECT {run} AS run_id, '{RETIRED}' AS event_type, profile_id, CAST(NULL AS VARCHAR) AS related_profile_id,
            CAST(0 AS BIGINT) AS records, {at} AS event_at
        FROM {ended}""",
    )
    return ended, events


def with_event_ids(db: SqlEngine, events: str, staged_at: datetime) -> str:
    """This run's identity events (EVENTS_SCHEMA), each with its event_id: a hash of the run, the instant resolve
    staged it, the event type and its profiles. The instant, because a run published again under its run id
    (cleared in Airflow after an extract was fixed) may repeat an event of its first publication, a record moved
    between the same two profiles, and the published events, which take only ids they do not hold, must record
    it again; a resumed publication reads the staged ids, so it adds each event once."""
    at = sql_string(staged_at.isoformat())
    return db.create(
        "events",
        f"""SELECT *, sha256(concat_ws('|', run_id, {at}, event_type, profile_id, related_profile_id)) AS event_id
        FROM {events}""",
    )
