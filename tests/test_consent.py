from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random

import pytest
from chispa import assert_df_equality
from deltalake import DeltaTable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyspark.sql import functions as F

from jobs import consent, delta_io, ingest, standardize
from jobs.config import CONSENT_FEED_COLUMNS
from jobs.errors import IdresError
from tests.conftest import write_consent_feed, write_ua_crm

UTC = dt.UTC
CUTOFF = "2026-06-01T00:00:00+00:00"
LEDGER_SCHEMA = (
    "source_system string, source_record_id string, event_id string, purpose string, lawful_basis string, "
    "status string, event_time timestamp, recorded_at timestamp, collection_method string, notice_version string, "
    "expires_at timestamp"
)


def ts(day: str, hour: int = 10) -> dt.datetime:
    return dt.datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def ledger_row(subject, event_id, purpose, basis, status, event_time, recorded=None, expires=None):
    return ("s", subject, event_id, purpose, basis, status, event_time, recorded or event_time, "web", "v1", expires)


def test_effective_consent_takes_the_latest_event_and_withdrawal_wins_ties(spark):
    cutoff = dt.datetime.fromisoformat(CUTOFF)
    rows = [
        ledger_row("1", "a", "profile_unification", "consent", "granted", ts("2025-01-01")),
        ledger_row("1", "b", "profile_unification", "consent", "withdrawn", ts("2025-02-01")),
        ledger_row("2", "c", "profile_unification", "consent", "granted", ts("2025-01-01")),
        ledger_row("2", "d", "profile_unification", "consent", "withdrawn", ts("2025-01-01")),  # same instant
        ledger_row("3", "e", "profile_unification", "consent", "granted", ts("2025-01-01"), expires=ts("2026-01-01")),
        ledger_row("4", "f", "marketing_email", "consent", "denied", ts("2025-01-01")),
        ledger_row("4", "g", "marketing_email", "consent", "granted", ts("2025-03-01")),
        ledger_row("5", "h", "profile_unification", "contract", "granted", ts("2025-01-01")),
        ledger_row("5", "i", "profile_unification", "contract", "withdrawn", ts("2027-01-01")),  # after cutoff
        # A lapsed grant decides nothing: the latest event before it does, a withdrawal or an open-ended grant.
        ledger_row("6", "j", "marketing_email", "consent", "withdrawn", ts("2025-03-01")),
        ledger_row("6", "k", "marketing_email", "consent", "granted", ts("2025-04-01"), expires=ts("2025-05-01")),
        ledger_row("7", "l", "marketing_email", "consent", "granted", ts("2025-01-01")),
        ledger_row("7", "m", "marketing_email", "consent", "granted", ts("2025-04-01"), expires=ts("2025-05-01")),
        # At the cutoff exactly: a grant expiring then is no longer in force; an event then is counted.
        ledger_row("8", "n", "profile_unification", "consent", "granted", ts("2025-01-01"), expires=cutoff),
        ledger_row("9", "o", "profile_unification", "consent", "granted", ts("2025-01-01")),
        ledger_row("9", "p", "profile_unification", "consent", "withdrawn", cutoff),
    ]
    ledger = spark.createDataFrame(rows, LEDGER_SCHEMA)
    actual = consent.effective_consent(ledger, cutoff).select(
        "source_record_id", "purpose", "lawful_basis", "effective_status", "is_granted", "deciding_event_id"
    )
    expected = spark.createDataFrame(
        [
            ("1", "profile_unification", "consent", "withdrawn", False, "b"),
            ("2", "profile_unification", "consent", "withdrawn", False, "d"),
            ("3", "profile_unification", "consent", "expired", False, "e"),
            ("4", "marketing_email", "consent", "granted", True, "g"),
            ("5", "profile_unification", "contract", "granted", True, "h"),
            ("6", "marketing_email", "consent", "withdrawn", False, "j"),
            ("7", "marketing_email", "consent", "granted", True, "l"),
            ("8", "profile_unification", "consent", "expired", False, "n"),
            ("9", "profile_unification", "consent", "withdrawn", False, "p"),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_refusal_dated_after_it_was_received_takes_effect_by_then(spark):
    """A withdrawal typed 2205 for 2025 never took effect, and nothing flagged it; a grant dated ahead starts later.
    A recorded_at typed years back (2015) moved a withdrawal before the grant it came after, which then decided.
    One received after the cutoff (a DAG run's cutoff comes before it lands its events) is in force as of it."""
    cutoff = dt.datetime.fromisoformat(CUTOFF)
    typo = ts("2205-06-01")

    def row(subject, event_id, status, event_time, recorded=None, landed=None):
        return (
            "s",
            subject,
            event_id,
            "profile_unification",
            "consent",
            status,
            event_time,
            recorded,
            "web",
            "v1",
            None,
            landed,
        )

    rows = [row(s, f"g{s}", "granted", ts("2025-01-01"), ts("2025-01-01"), ts("2025-01-02")) for s in "12356"]
    rows += [
        row("1", "w1", "withdrawn", typo, recorded=ts("2025-06-01"), landed=ts("2025-06-02")),
        row("2", "w2", "withdrawn", typo, landed=ts("2025-07-01")),  # no recorded_at: received then
        row("3", "w3", "withdrawn", typo, landed=ts("2026-07-01")),  # received after the cutoff
        row("3", "w3b", "withdrawn", ts("2026-06-15"), landed=ts("2026-07-01")),  # happened after the cutoff
        row("4", "g4", "granted", typo, recorded=ts("2025-01-01"), landed=ts("2025-01-02")),
        row("5", "w5", "withdrawn", ts("2025-02-01"), recorded=ts("2025-03-01"), landed=ts("2025-03-02")),
        row("6", "w6", "withdrawn", ts("2025-06-01"), recorded=ts("2015-06-01"), landed=ts("2025-06-02")),
    ]
    ledger = spark.createDataFrame(rows, f"{LEDGER_SCHEMA}, landed_at timestamp")

    actual = consent.effective_consent(ledger, cutoff).select(
        "source_record_id", "effective_status", "deciding_event_id", "event_time"
    )

    expected = spark.createDataFrame(
        [
            ("1", "withdrawn", "w1", ts("2025-06-02")),  # received then
            ("2", "withdrawn", "w2", ts("2025-07-01")),
            ("3", "withdrawn", "w3", cutoff),
            ("5", "withdrawn", "w5", ts("2025-02-01")),  # recorded later: in force from when it happened
            ("6", "withdrawn", "w6", ts("2025-06-01")),  # recorded "before": in force from when it happened
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


event_strategy = st.tuples(
    st.sampled_from(["1", "2", "3"]),
    st.sampled_from(["profile_unification", "marketing_email"]),
    st.sampled_from(["consent", "contract"]),
    st.sampled_from(["granted", "withdrawn", "denied"]),
    st.integers(min_value=0, max_value=4),  # few distinct days, so ties are common
    st.integers(min_value=0, max_value=2),
    st.booleans(),
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=st.lists(event_strategy, min_size=1, max_size=12), seed=st.integers(0, 10_000))
def test_effective_consent_ignores_event_order_and_duplication(spark, events, seed):
    rows = [
        ledger_row(
            s,
            f"ev{i}",
            p,
            b,
            status,
            ts("2025-01-01") + dt.timedelta(days=d),
            recorded=ts("2025-01-01") + dt.timedelta(days=d, hours=r),
            expires=ts("2025-01-03") if expiring else None,
        )
        for i, (s, p, b, status, d, r, expiring) in enumerate(events)
    ]
    rng = random.Random(seed)
    shuffled = rows + rng.sample(rows, k=len(rows) // 2 + 1)
    rng.shuffle(shuffled)
    cutoff = dt.datetime.fromisoformat(CUTOFF)
    original = consent.effective_consent(spark.createDataFrame(rows, LEDGER_SCHEMA), cutoff)
    replayed = consent.effective_consent(spark.createDataFrame(shuffled, LEDGER_SCHEMA), cutoff)
    assert_df_equality(original, replayed, ignore_row_order=True)


# ---- the gate, end to end on a hand-made Ukrainian CRM extract -------------------------------------------------

CANARIES = ("Qzxcanaryfirst", "Qzxcanarylast", "qzx.canary@example.org", "Qzxcanary street 9", "+380671112233")


def test_one_event_id_with_two_contents_is_a_conflict_and_replays_are_one_event(spark, cfg):
    """A refusal under the id of another event lands under an id of its own (refusal_own_id), beside the grant;
    two grants under one id are a conflict."""

    def mapped(event_id, status, subject="UA-1"):
        feed = (subject, "profile_unification", "consent", status, "2025-01-01T10:00:00Z", None, "web", "v1", None)
        return ("ua_crm", "UA", *feed, event_id, None, "feed.jsonl", None)

    columns = ", ".join(f"{c} string" for c in ("source_system", "region", *CONSENT_FEED_COLUMNS))
    events = spark.createDataFrame(
        [
            mapped("e1", "granted"),
            mapped("e1", "granted"),  # a replay
            mapped("e2", "granted"),
            mapped("e2", "withdrawn"),  # the same id, another event
            mapped("e3", "granted"),
            mapped("e3", "granted", "UA-2"),  # the same id, another grant
            mapped(None, "granted", "UA-7"),
            mapped(None, "granted", "UA-7"),  # a replay without an id
            mapped(None, "denied", "UA-7"),
        ],
        f"{columns}, {ingest.CORRUPT} string, {ingest.SOURCE_FILE} string, {ingest.UNDECODABLE_LINE} string",
    )

    reasons = consent.assign_consent_reasons(events, cfg.policy).select(
        "source_record_id",
        "status",
        F.regexp_replace("event_id", "#[0-9a-f]{64}$", "#<sha256>").alias("event_id"),
        ingest.REASON,
    )

    rows = sorted(reasons.collect(), key=lambda r: (r["source_record_id"], r["status"], r["event_id"]))
    assert [(r["source_record_id"], r["event_id"], r["status"], r[ingest.REASON]) for r in rows[:6]] == [
        ("UA-1", "e1", "granted", None),
        ("UA-1", "e1", "granted", None),
        ("UA-1", "e2", "granted", None),
        ("UA-1", "e3", "granted", "conflicting_event_id"),
        ("UA-1", "e2#<sha256>", "withdrawn", None),
        ("UA-2", "e3", "granted", "conflicting_event_id"),
    ]
    denied, granted, replayed = (r["event_id"] for r in rows[6:])
    assert granted == replayed != denied  # ids from the content: the same event, the same id
    assert all(i.startswith("h:") and len(i) == 2 + 64 for i in (denied, granted))
    assert [r[ingest.REASON] for r in rows[6:]] == [None, None, None]


def mapped_events(spark, rows):
    """Feed rows (subject, basis, status, event_time, recorded_at, expires_at, event_id) as map_consent_events
    gives them."""
    columns = ", ".join(f"{c} string" for c in ("source_system", "region", *CONSENT_FEED_COLUMNS))
    return spark.createDataFrame(
        [
            (
                "ua_crm",
                "UA",
                who,
                "profile_unification",
                basis,
                status,
                at,
                recorded,
                "web",
                "v1",
                expires,
                eid,
                None,
                "f",
                None,
            )
            for who, basis, status, at, recorded, expires, eid in rows
        ],
        f"{columns}, {ingest.CORRUPT} string, {ingest.SOURCE_FILE} string, {ingest.UNDECODABLE_LINE} string",
    )


def test_event_times_must_be_a_zoned_iso_date_and_time(spark, cfg):
    rows = [
        ("T1", "consent", "granted", "10:00:00Z", None, None, "t1"),  # Spark alone reads a bare time as today's
        ("T2", "consent", "granted", "T10:00:00+02:00", None, None, "t2"),
        ("T3", "consent", "granted", "+12025-01-01T10:00:00Z", None, None, "t3"),
        ("T4", "consent", "granted", "2025-01-01", None, None, "t4"),  # a date alone has no zone
        ("T5", "consent", "granted", "2025-01-01T10:00Z", None, None, "t5"),  # seconds are optional in ISO 8601
        ("T6", "consent", "granted", "2025-01-01 10:00:00+02", None, None, "t6"),
        ("T7", "consent", "granted", "2025-01-01 10:00:00 UTC", None, None, "t7"),
        ("T8", "consent", "granted", "2025-01-01T10:00:00.5Z", "2025-01-01T10:00:00", None, "t8"),
        # IANA region ids with a hyphen, a digit or a sign, and of three parts
        ("T9", "consent", "granted", "2025-01-01T10:00:00 America/Port-au-Prince", None, None, "t9"),
        ("T10", "consent", "granted", "2025-01-01T10:00:00 Etc/GMT+2", None, None, "t10"),
        ("T11", "consent", "granted", "2025-01-01T10:00 America/Argentina/Buenos_Aires", None, None, "t11"),
        # ids without an area, RFC 3339's lower-case t and z, and an id no zone has
        ("T12", "consent", "granted", "2025-01-01T10:00:00 GMT", None, None, "t12"),
        ("T13", "consent", "granted", "2025-01-01T12:00:00 EET", None, None, "t13"),
        ("T14", "consent", "granted", "2025-01-01T10:00 Zulu", None, None, "t14"),
        ("T15", "consent", "granted", "2025-01-01t10:00:00z", None, None, "t15"),
        ("T16", "consent", "granted", "2025-01-01T06:00:00 America/La_Paz", None, None, "t16"),
        ("T17", "consent", "granted", "2025-01-01T10:00:00 Mars", None, None, "t17"),
        # RFC 3339 as feeds mostly write it, read without the normalizations: an offset and a fraction, a bad date
        ("T18", "consent", "granted", "2025-01-01T12:30:00.25+02:30", None, None, "t18"),
        ("T19", "consent", "granted", "2025-02-30T10:00:00Z", None, None, "t19"),
        # Java's short ids that IANA does not have (British summer time read as Dhaka's), and an IANA id with digits
        ("T20", "consent", "granted", "2025-06-01T10:00:00 BST", None, None, "t20"),
        ("T21", "consent", "granted", "2025-06-01T10:00 IST", None, None, "t21"),
        ("T22", "consent", "granted", "2025-01-01 10:00:00PST", None, None, "t22"),
        ("T23", "consent", "granted", "2025-01-01T05:00:00 EST5EDT", None, None, "t23"),
    ]
    actual = consent.assign_consent_reasons(mapped_events(spark, rows), cfg.policy).select(
        "source_record_id", "event_time", ingest.REASON
    )
    expected = spark.createDataFrame(
        [
            ("T1", None, "unparseable_timestamp"),
            ("T2", None, "unparseable_timestamp"),
            ("T3", None, "unparseable_timestamp"),
            ("T4", dt.datetime(2025, 1, 1, tzinfo=UTC), "timestamp_without_time_zone"),
            ("T5", ts("2025-01-01"), None),
            ("T6", ts("2025-01-01", 8), None),
            ("T7", ts("2025-01-01"), None),
            ("T8", ts("2025-01-01").replace(microsecond=500000), "timestamp_without_time_zone"),
            ("T9", ts("2025-01-01", 15), None),
            ("T10", ts("2025-01-01", 12), None),
            ("T11", ts("2025-01-01", 13), None),
            ("T12", ts("2025-01-01"), None),
            ("T13", ts("2025-01-01"), None),
            ("T14", ts("2025-01-01"), None),
            ("T15", ts("2025-01-01"), None),
            ("T16", ts("2025-01-01"), None),
            ("T17", None, "unparseable_timestamp"),
            ("T18", ts("2025-01-01").replace(microsecond=250000), None),
            ("T19", None, "unparseable_timestamp"),
            ("T20", None, "unparseable_timestamp"),
            ("T21", None, "unparseable_timestamp"),
            ("T22", None, "unparseable_timestamp"),
            ("T23", ts("2025-01-01"), None),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_refusal_lands_without_a_basis_or_an_unreadable_optional_time_and_wins(spark, cfg):
    """A withdrawal needs no lawful basis, and its recorded_at or expiry decides nothing: discarding it for them
    left the earlier grant in force."""
    grant = ("UA-1", "consent", "granted", "2025-01-01T10:00:00Z", None, None, None)
    rows = [
        grant,
        ("UA-1", None, "withdrawn", "2025-06-01T10:00:00Z", "2025-06-01 10:00:05", None, None),
        ("UA-2", "consent", "granted", "2025-01-01T10:00:00Z", None, None, "g2"),
        ("UA-2", "because", "denied", "2025-06-01T10:00:00Z", None, "never", "d2"),
        ("UA-3", "consent", "granted", "2025-01-01T10:00:00Z", None, None, "g3"),
        ("UA-3", None, "granted", "2025-06-01T10:00:00Z", None, None, "g3b"),  # a grant still needs its basis
        ("UA-4", "consent", "granted", "2025-01-01T10:00:00Z", "2025-01-01 10:00:05", None, "g4"),
        # two withdrawals without ids, a microsecond apart at the same millisecond: two events, two ids
        ("UA-5", "consent", "withdrawn", "2025-06-01T10:00:00.000100Z", None, None, None),
        ("UA-5", "consent", "withdrawn", "2025-06-01T10:00:00.000900Z", None, None, None),
        # a basis with a byte the feed's encoding could not decode: a grant's is bad input, a refusal's is dropped
        ("UA-6", "consent", "granted", "2025-01-01T10:00:00Z", None, None, "g6"),
        ("UA-6", "cons\ufffdnt", "withdrawn", "2025-06-01T10:00:00Z", None, None, "w6"),
        ("UA-7", "cons\ufffdnt", "granted", "2025-01-01T10:00:00Z", None, None, "g7"),
    ]
    events = consent.assign_consent_reasons(mapped_events(spark, rows), cfg.policy)
    actual = events.select("source_record_id", "status", "lawful_basis", "recorded_at", "expires_at", ingest.REASON)
    expected = spark.createDataFrame(
        [
            ("UA-1", "granted", "consent", None, None, None),
            ("UA-1", "withdrawn", None, None, None, None),
            ("UA-2", "granted", "consent", None, None, None),
            ("UA-2", "denied", None, None, None, None),
            ("UA-3", "granted", "consent", None, None, None),
            ("UA-3", "granted", None, None, None, "invalid_lawful_basis"),
            ("UA-4", "granted", "consent", ts("2025-01-01").replace(second=5), None, "timestamp_without_time_zone"),
            ("UA-5", "withdrawn", "consent", None, None, None),
            ("UA-5", "withdrawn", "consent", None, None, None),
            ("UA-6", "granted", "consent", None, None, None),
            ("UA-6", "withdrawn", None, None, None, None),
            ("UA-7", "granted", "cons\ufffdnt", None, None, "bad_encoding"),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    assert events.where("source_record_id = 'UA-5'").select("event_id").distinct().count() == 2

    landed = events.where(F.col(ingest.REASON).isNull())
    decided = consent.effective_consent(landed, ts("2026-01-01")).select("source_record_id", "effective_status")
    expected = spark.createDataFrame(
        [("UA-1", "withdrawn"), ("UA-2", "denied"), ("UA-3", "granted"), ("UA-5", "withdrawn"), ("UA-6", "withdrawn")],
        decided.schema,
    )
    assert_df_equality(decided, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_refusal_in_a_jsonl_feed_with_an_undecodable_byte_outside_what_decides_it_lands_and_wins(
    spark, cfg, tmp_path
):
    """A withdrawal quarantined for a bad byte in its notice version, or in a key it does not need, left the
    earlier grant in force. What it is decided by must be sound; a grant must be sound throughout."""

    def line(subject, status, eid, **changes):
        fields = {"event_id": eid, "subject_id": subject, "purpose": "profile_unification", "status": status}
        fields |= {"lawful_basis": "consent", "event_time": "2025-06-01T10:00:00Z", "notice_version": "v1"}
        text = json.dumps({k: v for k, v in (fields | changes).items() if v is not None}, ensure_ascii=False)
        return text.encode().replace(b"@", b"\xe9").replace(b"^", b"\\ud83d")  # a Latin-1 byte; half an emoji

    granted = (*range(1, 9), 11)
    grants = [line(f"UA-{n}", "granted", f"g{n}", event_time="2025-01-01T10:00:00Z") for n in granted]
    lines = [
        *grants,
        line("UA-1", "withdrawn", "w1", lawful_basis="cons@nt"),
        line("UA-2", "withdrawn", "w2", notice_version="v@1"),
        line("UA-3", "withdrawn", "w3", **{"comm@nt": "x"}),  # a key the feed does not map
        line("UA-4", "withdrawn", "w@4"),  # its id: the refusal lands under one made from its content
        line("UA-5", "withdrawn", "w5", purpose="profile_unific@tion"),
        line("UA-6", "withdrawn", "w6", notice_version="v^"),
        line("UA-7", "Withdrawn", "w7"),  # a status in another letter case
        line("UA-11", "withdrawn", "w11", purpose="Profile_Unification"),  # and a purpose
        line(None, "withdrawn", "w8", **{"subject_@id": "UA-8"}),  # the subject's key
        line("UA-9", "granted", "g9", **{"comm@nt": "x"}),
        line("UA-9", "granted", "g9b", notice_version="v^"),
        line("UA-10", "Granted", "g10", purpose="newsletter"),  # quarantined with its status as written
    ]
    path = tmp_path / "consent_events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    source = cfg.source("ua_crm")
    source = dataclasses.replace(source, consent_feed=dataclasses.replace(source.consent_feed, path=path))
    feed = source.consent_feed
    raw = ingest.read_feed(
        spark, "feed", path, "jsonl", feed.columns.values(), id_column="subject_id", undecodable_lines_whole=False
    )
    events = consent.assign_consent_reasons(consent.map_consent_events(raw, source), cfg.policy)
    refusals = events.where("event_id not like 'g%'")
    actual = refusals.select("source_record_id", "status", "lawful_basis", "notice_version", ingest.REASON)
    expected = spark.createDataFrame(
        [
            ("UA-1", "withdrawn", None, "v1", None),
            ("UA-2", "withdrawn", "consent", None, None),
            ("UA-3", "withdrawn", "consent", "v1", None),
            ("UA-4", "withdrawn", "consent", "v1", None),
            ("UA-5", "withdrawn", "consent", "v1", "bad_encoding"),
            ("UA-6", "withdrawn", "consent", None, None),
            ("UA-7", "withdrawn", "consent", "v1", None),
            ("UA-11", "withdrawn", "consent", "v1", None),
            (None, "withdrawn", "consent", "v1", "bad_encoding"),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    assert refusals.where("source_record_id = 'UA-11'").first()["purpose"] == "profile_unification"
    assert refusals.where("source_record_id = 'UA-4'").first()["event_id"].startswith("h:")
    assert [r[ingest.REASON] for r in events.where("source_record_id = 'UA-9'").collect()] == ["bad_encoding"] * 2
    # The quarantine keeps what the feed wrote: the line a bad byte was in, a status as cased
    raw = {
        r["source_record_id"]: r["raw"]
        for r in events.select("source_record_id", consent.raw_event_values().alias("raw")).collect()
    }
    assert raw[None] == lines[-4].decode("utf-8", errors="replace")
    assert json.loads(raw["UA-10"])["status"] == "Granted"

    landed = events.where(F.col(ingest.REASON).isNull())
    decided = consent.effective_consent(landed, ts("2026-01-01")).select("source_record_id", "effective_status")
    expected = spark.createDataFrame(
        [(f"UA-{n}", "granted" if n in (5, 8) else "withdrawn") for n in granted], decided.schema
    )
    assert_df_equality(decided, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_refusal_whose_event_time_cannot_be_read_takes_effect_when_it_was_recorded(spark, cfg):
    """A withdrawal quarantined for its event time (no zone, a date alone, none) left the grant before it in force;
    it had happened by the time its source recorded it. A grant, or a refusal with no time to go by, still cannot
    be placed in time."""
    grant = ("consent", "granted", "2025-01-01T10:00:00Z", None, None)
    rows = [
        ("UA-1", *grant, "g1"),
        ("UA-1", None, "withdrawn", "2025-06-01 10:00:00", "2025-06-01T10:00:05Z", None, "w1"),  # no zone
        ("UA-2", *grant, "g2"),
        ("UA-2", None, "withdrawn", "2025-06-01", "2025-06-02T08:00:00+03:00", None, "w2"),  # a date alone
        ("UA-3", *grant, "g3"),
        ("UA-3", None, "denied", None, "2025-06-03T10:00:00Z", None, None),  # no time, no id
        ("UA-4", *grant, "g4"),
        ("UA-4", None, "withdrawn", "2025-06-01 10:00:00", "2025-06-01 10:00:05", None, "w4"),  # neither zoned
        ("UA-5", "consent", "granted", "2025-01-01 10:00:00", "2025-01-01T10:00:05Z", None, "g5"),  # a grant
    ]
    events = consent.assign_consent_reasons(mapped_events(spark, rows), cfg.policy)
    landed_time = F.when(F.col(ingest.REASON).isNull(), F.col("event_time")).alias("event_time")
    actual = events.where("status <> 'granted' OR source_record_id = 'UA-5'").select(
        "source_record_id", "status", landed_time, ingest.REASON
    )
    expected = spark.createDataFrame(
        [
            ("UA-1", "withdrawn", dt.datetime(2025, 6, 1, 10, 0, 5, tzinfo=UTC), None),
            ("UA-2", "withdrawn", dt.datetime(2025, 6, 2, 5, tzinfo=UTC), None),
            ("UA-3", "denied", dt.datetime(2025, 6, 3, 10, tzinfo=UTC), None),
            ("UA-4", "withdrawn", None, "timestamp_without_time_zone"),
            ("UA-5", "granted", None, "timestamp_without_time_zone"),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    landed = events.where(F.col(ingest.REASON).isNull())
    decided = consent.effective_consent(landed, ts("2026-01-01")).select("source_record_id", "effective_status")
    expected = spark.createDataFrame(
        [("UA-1", "withdrawn"), ("UA-2", "withdrawn"), ("UA-3", "denied"), ("UA-4", "granted")], decided.schema
    )
    assert_df_equality(decided, expected, ignore_row_order=True, ignore_nullable=True)
    # The same rows again give the same events, ids included (the id of UA-3's denial is made from its content).
    again = consent.assign_consent_reasons(mapped_events(spark, rows), cfg.policy)
    assert_df_equality(again.select(*events.columns), events, ignore_row_order=True, ignore_nullable=True)


def test_copies_of_a_refusal_differing_only_in_what_it_never_decides_by_are_one_event_also_on_a_rerun(spark, cfg):
    """Compared as they land: a copy's invalid basis or unzoned recorded_at is dropped from a refusal, so copies
    differing only there were quarantined as conflicting (the withdrawal lost) or landed one arbitrary copy that
    the ledger then found conflicting with the same feed's next run."""
    rows = [
        ("UA-1", "consent", "granted", "2025-01-01T10:00:00Z", None, None, "g1"),
        ("UA-1", None, "withdrawn", "2025-06-01T10:00:00Z", None, None, "w1"),
        ("UA-1", "n/a", "withdrawn", "2025-06-01T10:00:00Z", None, None, "w1"),
        ("UA-2", "consent", "granted", "2025-01-01T10:00:00Z", None, None, "g2"),
        ("UA-2", "consent", "withdrawn", "2025-06-01T10:00:00Z", "2025-06-01 10:00:05", None, "w2"),
        ("UA-2", "consent", "withdrawn", "2025-06-01T10:00:00Z", "2025-06-01T10:00:05Z", None, "w2"),
        ("UA-3", "consent", "granted", "2025-01-01T10:00:00Z", None, None, "g3"),
        ("UA-3", "consent", "withdrawn", "2025-06-01T10:00:00Z", None, None, "g3"),  # one id, two events
        ("UA-4", "consent", "granted", "2025-01-01T10:00:00Z", None, None, "g4"),
        ("UA-4", "consent", "granted", "2025-01-01T10:00:00Z", "2025-01-01T10:00:05Z", None, "g4"),  # a grant's
        # one copy carries a basis, the other (its basis invalid, dropped) a recorded_at and an expiry: the latter
        ("UA-5", "consent", "withdrawn", "2025-06-01T10:00:00Z", None, None, "w5"),
        ("UA-5", "n/a", "withdrawn", "2025-06-01T10:00:00Z", "2025-06-01T10:00:05Z", "2027-01-01T00:00:00Z", "w5"),
        # two fields each, a basis each: the one carrying a recorded_at (the README's order), whatever the bases
        ("UA-6", "legitimate_interest", "withdrawn", "2025-06-01T10:00:00Z", None, "2027-01-01T00:00:00Z", "w6"),
        ("UA-6", "consent", "withdrawn", "2025-06-01T10:00:00Z", "2025-06-01T10:00:05Z", None, "w6"),
    ]
    events = consent.assign_consent_reasons(mapped_events(spark, rows), cfg.policy)
    own_id = F.regexp_replace("event_id", "#[0-9a-f]{64}$", "#<sha256>").alias("event_id")
    reasons = events.select("source_record_id", own_id, ingest.REASON).distinct()
    expected = spark.createDataFrame(
        [
            ("UA-1", "g1", None),
            ("UA-1", "w1", None),
            ("UA-2", "g2", None),
            ("UA-2", "w2", None),
            ("UA-3", "g3", None),
            ("UA-3", "g3#<sha256>", None),  # the withdrawal under an id of its own, beside the grant
            ("UA-4", "g4", "conflicting_event_id"),
            ("UA-5", "w5", None),
            ("UA-6", "w6", None),
        ],
        reasons.schema,
    )
    assert_df_equality(reasons, expected, ignore_row_order=True, ignore_nullable=True)

    landing = events.where(F.col(ingest.REASON).isNull()).withColumn("source_file", F.col(ingest.SOURCE_FILE))
    ledger = consent.one_copy_per_event(landing.orderBy(F.rand(7)))
    landed = ledger.select("source_record_id", own_id, "status", "lawful_basis", "recorded_at")
    expected = spark.createDataFrame(
        [
            ("UA-1", "g1", "granted", "consent", None),
            ("UA-1", "w1", "withdrawn", None, None),
            ("UA-2", "g2", "granted", "consent", None),
            ("UA-2", "w2", "withdrawn", "consent", ts("2025-06-01").replace(second=5)),  # the copy that carries it
            ("UA-3", "g3", "granted", "consent", None),
            ("UA-3", "g3#<sha256>", "withdrawn", "consent", None),
            ("UA-5", "w5", "withdrawn", None, ts("2025-06-01").replace(second=5)),
            ("UA-6", "w6", "withdrawn", "consent", ts("2025-06-01").replace(second=5)),
        ],
        landed.schema,
    )
    assert_df_equality(landed, expected, ignore_row_order=True, ignore_nullable=True)

    # The same feed again, against what it landed: every landing event lands as the same event again.
    delivered_again = consent.assign_consent_reasons(mapped_events(spark, rows), cfg.policy)
    again = consent.mark_ledger_conflicts(delivered_again, ledger)
    landing_again = again.where(F.col(ingest.REASON).isNull()).select("source_system", "event_id").distinct()
    assert_df_equality(
        landing_again, ledger.select("source_system", "event_id"), ignore_row_order=True, ignore_nullable=True
    )


def test_instants_of_a_typed_feed_keep_their_zone(spark, cfg):
    """A Parquet feed's timestamp columns are instants: cast to text they lost the zone and were quarantined."""
    source = cfg.source("ua_crm")
    raw = spark.createDataFrame(
        [
            (
                "e1",
                "UA-1",
                "profile_unification",
                "consent",
                "granted",
                ts("2025-01-01"),
                ts("2025-01-01"),
                "web",
                "v1",
                None,
            )
        ],
        "event_id string, subject_id string, purpose string, lawful_basis string, status string, "
        "event_time timestamp, recorded_at timestamp, method string, notice_version string, expires_at timestamp",
    ).select(
        "*",
        F.lit(None).cast("string").alias(ingest.CORRUPT),
        F.lit("f").alias(ingest.SOURCE_FILE),
        F.lit(None).cast("string").alias(ingest.UNDECODABLE_LINE),
    )
    events = consent.assign_consent_reasons(consent.map_consent_events(raw, source), cfg.policy)
    actual = events.select("source_record_id", "event_time", "recorded_at", ingest.REASON)
    expected = spark.createDataFrame([("UA-1", ts("2025-01-01"), ts("2025-01-01"), None)], actual.schema)
    assert_df_equality(actual, expected, ignore_nullable=True)


@pytest.mark.parametrize("cutoff", ["2026-02-30T00:00:00+00:00", "yesterday", "2026-01-01T00:00:00"])
def test_a_cutoff_that_is_no_zoned_iso_time_is_refused_before_anything_runs(spark, cfg, cutoff):
    with pytest.raises(IdresError, match=r"^--cutoff must be an ISO 8601 time with a time zone"):
        consent.run(spark, cfg, run_id="r", cutoff=cutoff)
    assert not cfg.lakehouse.exists() or not any(cfg.lakehouse.iterdir())


def test_a_cutoff_in_the_future_is_refused_before_anything_runs(spark, cfg):
    """Every later run applies at least the latest cutoff applied: a mistyped year would expire grants early and
    bring future-dated events into force for good."""
    ahead = (dt.datetime.now(UTC) + dt.timedelta(hours=1)).isoformat()
    with pytest.raises(IdresError, match=r"^--cutoff .* is in the future \(now "):
        consent.run(spark, cfg, run_id="r", cutoff=ahead)
    assert not cfg.lakehouse.exists() or not any(cfg.lakehouse.iterdir())


def person(rid: str, email: str | None = None) -> dict[str, str]:
    return {
        "source_record_id": rid,
        "first_name": CANARIES[0],
        "last_name": CANARIES[1],
        "email": email or CANARIES[2],
        "phone": CANARIES[4],
        "street": CANARIES[3],
        "city": "Київ",
        "date_of_birth": "01.02.1990",
        "national_id": "1234567890",
        "updated_at": "01.03.2025 10:00",
    }


def event(rid: str, purpose: str, basis: str, status: str, at: str, expires: str | None = None, eid: str = "") -> str:
    return json.dumps(
        {
            "event_id": eid or f"{rid}-{purpose}-{status}-{at}",
            "subject_id": rid,
            "purpose": purpose,
            "lawful_basis": basis,
            "status": status,
            "event_time": at,
            "recorded_at": at,
            "method": "web_form",
            "notice_version": "v4.0",
            "expires_at": expires,
        }
    )


GOOD_EVENTS = [
    event("UA-1", "profile_unification", "consent", "granted", "2025-01-01T10:00:00+02:00"),
    event("UA-1", "profile_unification", "consent", "withdrawn", "2025-06-01T10:00:00+02:00"),
    event("UA-2", "profile_unification", "contract", "granted", "2025-01-01T10:00:00+02:00"),
    event("UA-2", "marketing_email", "consent", "denied", "2025-01-01T10:01:00+02:00"),
    event("UA-3", "profile_unification", "consent", "granted", "2025-01-01T10:00:00+02:00", "2026-01-01T00:00:00Z"),
    event("UA-5", "profile_unification", "consent", "granted", "2025-01-01T10:00:00+02:00"),
    event("UA-5", "marketing_email", "consent", "granted", "2025-01-01T10:00:00+02:00"),
    event("UA-5", "marketing_sms", "consent", "granted", "2025-01-01T10:00:00+02:00"),
    event("UA-6", "profile_unification", "legitimate_interest", "granted", "2025-01-01T10:00:00+02:00"),
    event("UA-7", "profile_unification", "consent", "denied", "2025-01-01T10:00:00+02:00"),
    event("UA-8", "profile_unification", "consent", "granted", "2025-01-01T10:00:00+02:00"),
    event("UA-8", "profile_unification", "consent", "denied", "2025-03-01T10:00:00+02:00"),
]
BAD_EVENTS = [
    event("UA-5", "newsletter", "consent", "granted", "2025-01-01T10:00:00+02:00"),
    event("UA-5", "analytics", "because", "granted", "2025-01-01T10:00:00+02:00"),
    event("UA-5", "analytics", "consent", "maybe", "2025-01-01T10:00:00+02:00"),
    event("UA-5", "analytics", "consent", "granted", "2025-01-01T10:00:00"),
    event("UA-5", "analytics", "consent", "granted", "2025-02-30T10:00:00Z"),
    '{"event_id": "broken", "subject_id": ',
]
LATE_EVENT = event("UA-4", "profile_unification", "consent", "granted", "2025-02-01T09:00:00+02:00")


@pytest.fixture(scope="module")
def gate_world(spark, tmp_path_factory):
    from tests.conftest import config_in

    cfg = config_in(tmp_path_factory.mktemp("gate"))
    cfg = dataclasses.replace(cfg, sources=(cfg.source("ua_crm"),))
    write_ua_crm(
        cfg,
        [
            person("UA-1"),
            person("UA-2"),
            person("UA-3"),
            person("UA-4"),
            person("UA-5"),
            person("UA-6", email="not an email"),
            person("UA-7"),
            person("UA-8"),
        ],
    )
    write_consent_feed(cfg, "ua_crm", GOOD_EVENTS + BAD_EVENTS)
    ingest.run(spark, cfg, run_id="r1")
    standardize.run(spark, cfg, run_id="r1")
    first = consent.run(spark, cfg, run_id="r1", cutoff=CUTOFF)
    snapshot = {
        "admitted": delta_io.read_delta(spark, cfg.tables.admitted).toPandas(),
        "audit": delta_io.read_delta(spark, cfg.tables.consent_audit).toPandas(),
    }
    return cfg, first, snapshot


def test_only_records_with_a_permitted_granted_basis_are_admitted(spark, gate_world):
    _cfg, _, snapshot = gate_world
    actual = (
        spark.createDataFrame(snapshot["audit"])
        .where("attribute = '*'")
        .select("source_record_id", "decision", "reason", "policy_version")
    )
    expected = spark.createDataFrame(
        [
            ("UA-1", "excluded", "consent_withdrawn", "2026-11-01.1"),
            ("UA-2", "admitted", "basis_granted", "2026-11-01.1"),
            ("UA-3", "excluded", "consent_expired", "2026-11-01.1"),
            ("UA-4", "excluded", "no_lawful_basis_recorded", "2026-11-01.1"),
            ("UA-5", "admitted", "basis_granted", "2026-11-01.1"),
            ("UA-6", "excluded", "basis_not_permitted_for_purpose", "2026-11-01.1"),
            ("UA-7", "excluded", "consent_denied", "2026-11-01.1"),
            ("UA-8", "excluded", "consent_denied", "2026-11-01.1"),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_admitted_records_keep_only_the_attributes_their_purposes_allow(spark, gate_world):
    _, _, snapshot = gate_world
    actual = spark.createDataFrame(snapshot["admitted"]).select(
        "source_record_id",
        "email",
        "marketing_email",
        "phone",
        "marketing_phone",
        "unification_basis",
        "permitted_purposes",
    )
    expected = spark.createDataFrame(
        [
            ("UA-2", CANARIES[2], None, CANARIES[4], None, "contract", "profile_unification"),
            (
                "UA-5",
                CANARIES[2],
                CANARIES[2],
                CANARIES[4],
                CANARIES[4],
                "consent",
                "marketing_email,marketing_sms,profile_unification",
            ),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    suppressed = (
        spark.createDataFrame(snapshot["audit"])
        .where("decision = 'suppressed'")
        .select("source_record_id", "attribute", "purpose", "reason")
    )
    assert_df_equality(
        suppressed,
        spark.createDataFrame(
            [
                ("UA-2", "marketing_email", "marketing_email", "purpose_not_permitted"),
                ("UA-2", "marketing_phone", "marketing_sms", "purpose_not_permitted"),
            ],
            suppressed.schema,
        ),
        ignore_row_order=True,
        ignore_nullable=True,
    )


def test_counts_reconcile_bronze_equals_admitted_plus_excluded(spark, gate_world):
    cfg, first, _ = gate_world
    assert first.records == delta_io.read_delta(spark, cfg.tables.bronze).count() == 8
    assert first.admitted == 2
    assert sum(first.excluded.values()) == 6
    assert first.reconciled


def test_invalid_consent_events_are_quarantined_with_reasons(spark, gate_world):
    cfg, first, _ = gate_world
    actual = delta_io.read_delta(spark, cfg.tables.consent_quarantine).select("source_record_id", "reason")
    expected = spark.createDataFrame(
        [
            ("UA-5", "unknown_purpose"),
            ("UA-5", "invalid_lawful_basis"),
            ("UA-5", "invalid_status"),
            ("UA-5", "timestamp_without_time_zone"),
            ("UA-5", "unparseable_timestamp"),
            (None, "malformed_record"),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    assert first.events_read == len(GOOD_EVENTS) + len(BAD_EVENTS)
    assert delta_io.read_delta(spark, cfg.tables.consent_ledger).count() == len(GOOD_EVENTS)
    runs = delta_io.read_delta(spark, cfg.tables.consent_runs).where("run_id = 'r1'").drop("landed_at")
    at_cutoff = dt.datetime(2026, 6, 1, tzinfo=UTC)
    expected = spark.createDataFrame(
        [("r1", "ua_crm", 18, 12, 6, at_cutoff, cfg.policy.fingerprint)], runs.schema
    )  # read = landed + quarantined
    assert_df_equality(runs, expected, ignore_nullable=True)


def test_audit_tables_hold_no_personal_values(spark, gate_world):
    cfg, _, _ = gate_world
    for table in (cfg.tables.consent_audit, cfg.tables.ingest_runs):
        df = delta_io.read_delta(spark, table)
        text_columns = [c for c, t in df.dtypes if t == "string"]
        blob = " ".join(str(v) for row in df.select(*text_columns).collect() for v in row)
        assert not [c for c in CANARIES if c.lower() in blob.lower()], table
        for path in table.rglob("*.parquet"):
            data = path.read_bytes()
            assert not [c for c in CANARIES if c.encode() in data], path
    # The canaries are really in the data tables, so the scan above could have found them.
    silver = delta_io.read_delta(spark, cfg.tables.admitted)
    assert silver.where(F.col("email") == CANARIES[2]).count() == 2


def test_a_consent_event_arriving_in_a_later_run_admits_the_record(spark, gate_world, tmp_path):
    from tests.conftest import copy_lakehouse

    first = gate_world[1]
    cfg = copy_lakehouse(gate_world[0], tmp_path).with_paths(landing=tmp_path / "landing")
    assert first.excluded["no_lawful_basis_recorded"] == 1  # UA-4 has no event yet
    write_consent_feed(cfg, "ua_crm", [*GOOD_EVENTS, *BAD_EVENTS, LATE_EVENT])
    second = consent.run(spark, cfg, run_id="r2", cutoff=CUTOFF)
    assert second.admitted == 3 and "no_lawful_basis_recorded" not in second.excluded
    admitted = delta_io.read_delta(spark, cfg.tables.admitted)
    assert admitted.where("source_record_id = 'UA-4'").select("unification_basis").first()[0] == "consent"


RUN_TIMES = {"consent_runs": "landed_at", "consent_ledger": "landed_at", "consent_audit": "decided_at"}


def recorded_an_hour_ahead(cfg) -> None:
    """Move the times the gate's runs recorded an hour ahead, as a run on a host whose clock ran ahead would."""
    for name, column in RUN_TIMES.items():
        DeltaTable(str(getattr(cfg.tables, name))).update({column: f"{column} + INTERVAL '1 hour'"})


def test_a_run_after_one_whose_host_clock_ran_ahead_is_still_the_latest_run(spark, gate_world, tmp_path):
    """The report, the summary and the gate's suites find the latest run by its recorded time: a run on a host
    whose clock ran an hour ahead (or a run within the same second) must not outrank the runs after it."""
    from tests.conftest import copy_lakehouse

    cfg = copy_lakehouse(gate_world[0], tmp_path).with_paths(landing=tmp_path / "landing")
    recorded_an_hour_ahead(cfg)
    write_consent_feed(cfg, "ua_crm", [*GOOD_EVENTS, *BAD_EVENTS, LATE_EVENT])  # r2 lands one event

    consent.run(spark, cfg, run_id="r2", cutoff=CUTOFF)

    for name, column in RUN_TIMES.items():
        sql = f"SELECT run_id FROM t ORDER BY {column} DESC LIMIT 1"
        assert delta_io.query_delta(sql, t=getattr(cfg.tables, name)).column("run_id").to_pylist() == ["r2"], name


def test_a_refusal_dated_ahead_is_in_force_in_a_run_without_cutoff_after_one_recorded_ahead(
    spark, gate_world, tmp_path
):
    """A refusal dated ahead takes effect when received, its run's time. Without --cutoff, consent is taken as of
    that time: as of the clock, a run recorded after a first run an hour ahead would leave the grant in force."""
    from tests.conftest import copy_lakehouse

    cfg = copy_lakehouse(gate_world[0], tmp_path).with_paths(landing=tmp_path / "landing")
    recorded_an_hour_ahead(cfg)
    withdrawal = event("UA-2", "profile_unification", "contract", "withdrawn", "2205-03-01T10:00:00+02:00")
    write_consent_feed(cfg, "ua_crm", [*GOOD_EVENTS, *BAD_EVENTS, withdrawal])

    consent.run(spark, cfg, run_id="r2")

    decided = delta_io.read_delta(spark, cfg.tables.consent_audit).where(
        "run_id = 'r2' AND source_record_id = 'UA-2' AND attribute = '*'"
    )
    assert [tuple(r) for r in decided.select("decision", "reason").collect()] == [("excluded", "consent_withdrawn")]


def test_a_refusal_dated_ahead_is_in_force_in_the_dag_run_that_lands_it(spark, gate_world, tmp_path):
    """A DAG run's cutoff (its run_after) comes before the time it lands its events, where a refusal dated ahead
    was placed: the record it withdrew was admitted and published for one more run."""
    from tests.conftest import copy_lakehouse

    cfg = copy_lakehouse(gate_world[0], tmp_path).with_paths(landing=tmp_path / "landing")
    withdrawal = event("UA-2", "profile_unification", "contract", "withdrawn", "2205-03-01T10:00:00+02:00")
    write_consent_feed(cfg, "ua_crm", [*GOOD_EVENTS, *BAD_EVENTS, withdrawal])
    run_after = (dt.datetime.now(UTC) - dt.timedelta(seconds=30)).isoformat()

    consent.run(spark, cfg, run_id="r2", cutoff=run_after)

    decided = delta_io.read_delta(spark, cfg.tables.consent_audit).where(
        "run_id = 'r2' AND source_record_id = 'UA-2' AND attribute = '*'"
    )
    assert [tuple(r) for r in decided.select("decision", "reason").collect()] == [("excluded", "consent_withdrawn")]


def test_a_retried_run_replaces_its_first_attempts_decisions_and_a_second_retry_changes_nothing(
    spark, gate_world, tmp_path
):
    from tests.conftest import copy_lakehouse

    cfg = copy_lakehouse(gate_world[0], tmp_path).with_paths(landing=tmp_path / "landing")
    withdrawal = event("UA-5", "profile_unification", "consent", "withdrawn", "2025-07-01T10:00:00+02:00")
    # LATE_EVENT too: the retry decides UA-4, which the first attempt excluded, anew.
    write_consent_feed(cfg, "ua_crm", [*GOOD_EVENTS, *BAD_EVENTS, LATE_EVENT, withdrawal])

    consent.run(spark, cfg, run_id="r1", cutoff=CUTOFF)  # Airflow's retry of the fixture's run, same run id

    audit = delta_io.read_delta(spark, cfg.tables.consent_audit).where("run_id = 'r1'")
    decisions = audit.select("source_record_id", "attribute", "decision", "reason")
    expected = spark.createDataFrame(
        [
            ("UA-1", "*", "excluded", "consent_withdrawn"),
            ("UA-2", "*", "admitted", "basis_granted"),
            ("UA-2", "marketing_email", "suppressed", "purpose_not_permitted"),
            ("UA-2", "marketing_phone", "suppressed", "purpose_not_permitted"),
            ("UA-3", "*", "excluded", "consent_expired"),
            ("UA-4", "*", "admitted", "basis_granted"),
            ("UA-4", "marketing_email", "suppressed", "purpose_not_permitted"),
            ("UA-4", "marketing_phone", "suppressed", "purpose_not_permitted"),
            ("UA-5", "*", "excluded", "consent_withdrawn"),
            ("UA-6", "*", "excluded", "basis_not_permitted_for_purpose"),
            ("UA-7", "*", "excluded", "consent_denied"),
            ("UA-8", "*", "excluded", "consent_denied"),
        ],
        decisions.schema,
    )
    assert_df_equality(decisions, expected, ignore_row_order=True, ignore_nullable=True)
    versions = {t: delta_io.table_version(p) for t, p in cfg.tables.all().items() if delta_io.table_exists(p)}
    consent.run(spark, cfg, run_id="r1", cutoff=CUTOFF)
    assert {t: delta_io.table_version(p) for t, p in cfg.tables.all().items() if delta_io.table_exists(p)} == versions


def test_a_run_that_dies_before_its_decisions_are_written_records_no_policy_or_cutoff(
    spark, gate_world, tmp_path, monkeypatch
):
    """audit/consent_runs is the proof that the gate ran under a policy and cutoff (training checks the policy
    by it): a run killed after landing its events recorded the new policy over records gated under the old."""
    from tests.conftest import copy_lakehouse

    cfg = copy_lakehouse(gate_world[0], tmp_path)
    narrowed = dataclasses.replace(
        cfg.policy,
        version="narrowed",
        purpose_bases={**cfg.policy.purpose_bases, cfg.policy.unification_purpose: ("consent",)},
    )
    cfg = dataclasses.replace(cfg, policy=narrowed)
    assert consent.gating_policy(cfg) not in (None, narrowed.fingerprint)

    def dies(*_args, **_kwargs):
        raise RuntimeError("injected: the job dies before its decisions are written")

    with monkeypatch.context() as patched:
        patched.setattr(consent, "decision_audit", dies)
        with pytest.raises(RuntimeError, match="injected"):
            consent.run(spark, cfg, run_id="r-narrowed", cutoff=CUTOFF)
    runs = delta_io.read_delta(spark, cfg.tables.consent_runs)
    assert runs.where("run_id = 'r-narrowed'").count() == 0
    assert consent.gating_policy(cfg) != narrowed.fingerprint

    consent.run(spark, cfg, run_id="r-narrowed", cutoff=CUTOFF)  # the retry
    assert consent.gating_policy(cfg) == narrowed.fingerprint


def quarantined_in_run(spark, cfg, run_id: str, *more):
    """The consent quarantine's rows of the run: record id, `more` columns, reason."""
    rows = delta_io.read_delta(spark, cfg.tables.consent_quarantine).where(F.col("run_id") == run_id)
    return rows.select("source_record_id", *more, "reason")


def ledger_events_added(spark, cfg, before):
    """The ledger's events not in `before`: record id, event id (an own id's hash as <sha256>), status."""
    ledger = delta_io.read_delta(spark, cfg.tables.consent_ledger)
    return ledger.join(before, ["source_system", "event_id"], "left_anti").select(
        "source_record_id", F.regexp_replace("event_id", "#[0-9a-f]{64}$", "#<sha256>").alias("event_id"), "status"
    )


def test_one_id_carrying_two_events_within_a_delivery_is_quarantined_or_a_refusal_lands_apart(
    spark, gate_world, tmp_path
):
    """Within one delivery (no copy in the ledger): two grants under one id are both quarantined; a grant and a
    withdrawal under one id both land, the withdrawal under an id of its own; an exact replay is one event."""
    from tests.conftest import copy_lakehouse

    cfg = copy_lakehouse(gate_world[0], tmp_path).with_paths(landing=tmp_path / "landing")
    at = "2025-03-01T10:00:00+02:00"
    two_grants = [
        event("UA-4", "marketing_email", "consent", "granted", at, eid="dup-1"),
        event("UA-4", "marketing_email", "legitimate_interest", "granted", at, eid="dup-1"),
    ]
    grant = event("UA-6", "marketing_sms", "consent", "granted", at, eid="dup-2")
    refusal = event("UA-6", "marketing_sms", "consent", "withdrawn", "2025-04-01T10:00:00Z", eid="dup-2")
    write_consent_feed(cfg, "ua_crm", [*GOOD_EVENTS, *two_grants, grant, refusal, grant])
    ledger_before = delta_io.read_delta(spark, cfg.tables.consent_ledger)

    result = consent.run(spark, cfg, run_id="r3", cutoff=CUTOFF)

    assert result.events_quarantined == {"conflicting_event_id": 2}
    quarantined = quarantined_in_run(spark, cfg, "r3", F.get_json_object("raw_record", "$.event_id").alias("event_id"))
    expected = spark.createDataFrame(
        [("UA-4", "dup-1", "conflicting_event_id"), ("UA-4", "dup-1", "conflicting_event_id")], quarantined.schema
    )
    assert_df_equality(quarantined, expected, ignore_nullable=True)
    added = ledger_events_added(spark, cfg, ledger_before)
    expected = spark.createDataFrame(
        [("UA-6", "dup-2", "granted"), ("UA-6", "dup-2#<sha256>", "withdrawn")], added.schema
    )
    assert_df_equality(added, expected, ignore_nullable=True, ignore_row_order=True)
    # The consent ledger suite finds the events a run's counted attempt landed by the time consent_runs records.
    (counted,) = delta_io.read_delta(spark, cfg.tables.consent_runs).where("run_id = 'r3'").collect()
    landed = delta_io.read_delta(spark, cfg.tables.consent_ledger).where("run_id = 'r3'").collect()
    assert {r.landed_at for r in landed} == {counted.landed_at}


def test_a_landed_grant_delivered_again_beside_a_refusal_under_its_id_counts_as_landed(spark, gate_world, tmp_path):
    """An appending source delivers the grant it landed and, under the same id, its withdrawal: the withdrawal
    lands apart and the unchanged grant is the event the ledger holds. It was quarantined as conflicting."""
    from tests.conftest import copy_lakehouse

    cfg = copy_lakehouse(gate_world[0], tmp_path).with_paths(landing=tmp_path / "landing")
    at = "2025-01-01T10:00:00+02:00"
    granted = event("UA-2", "profile_unification", "contract", "granted", at)
    withdrawn = event(
        "UA-2",
        "profile_unification",
        "contract",
        "withdrawn",
        "2025-02-01T10:00:00Z",
        eid=json.loads(granted)["event_id"],
    )
    assert granted in GOOD_EVENTS
    write_consent_feed(cfg, "ua_crm", [*GOOD_EVENTS, withdrawn])

    result = consent.run(spark, cfg, run_id="r3", cutoff=CUTOFF)

    assert result.events_quarantined == {}
    runs = delta_io.read_delta(spark, cfg.tables.consent_runs).where("run_id = 'r3'")
    assert [(r.events_read, r.events_landed, r.events_quarantined) for r in runs.collect()] == [(13, 13, 0)]
    assert delta_io.read_delta(spark, cfg.tables.admitted).where("source_record_id = 'UA-2'").count() == 0


def test_a_landed_grant_delivered_changed_is_quarantined_and_as_a_refusal_lands_apart(spark, gate_world, tmp_path):
    """A source that updates its consent rows in place sends a withdrawal under the id of the grant it landed:
    the withdrawal lands under an id of its own and takes effect; a grant changed in place is quarantined."""
    from tests.conftest import copy_lakehouse

    cfg = copy_lakehouse(gate_world[0], tmp_path).with_paths(landing=tmp_path / "landing")
    at = "2025-01-01T10:00:00+02:00"
    landed_id = f"UA-2-profile_unification-granted-{at}"
    withdrawn = event("UA-2", "profile_unification", "contract", "withdrawn", at, eid=landed_id)
    granted = event("UA-2", "profile_unification", "contract", "granted", at)
    longer_id = f"UA-3-profile_unification-granted-{at}"
    longer = event("UA-3", "profile_unification", "consent", "granted", at, eid=longer_id)  # no expiry any more
    shorter = event("UA-3", "profile_unification", "consent", "granted", at, "2026-01-01T00:00:00Z")
    assert granted in GOOD_EVENTS and shorter in GOOD_EVENTS  # landed events the feed now delivers changed
    write_consent_feed(cfg, "ua_crm", [{granted: withdrawn, shorter: longer}.get(e, e) for e in GOOD_EVENTS])
    ledger_before = delta_io.read_delta(spark, cfg.tables.consent_ledger)

    result = consent.run(spark, cfg, run_id="r3", cutoff=CUTOFF)

    assert result.events_quarantined == {"conflicting_event_id": 1}
    quarantined = quarantined_in_run(spark, cfg, "r3")
    expected = spark.createDataFrame([("UA-3", "conflicting_event_id")], quarantined.schema)
    assert_df_equality(quarantined, expected, ignore_nullable=True)
    added = ledger_events_added(spark, cfg, ledger_before)
    expected = spark.createDataFrame([("UA-2", f"{landed_id}#<sha256>", "withdrawn")], added.schema)
    assert_df_equality(added, expected, ignore_nullable=True)
    ledger = delta_io.read_delta(spark, cfg.tables.consent_ledger)
    assert ledger.where(F.col("event_id") == landed_id).select("status").collect()[0]["status"] == "granted"
    assert delta_io.read_delta(spark, cfg.tables.admitted).where("source_record_id = 'UA-2'").count() == 0

    versions = {t: delta_io.table_version(t) for t in (cfg.tables.consent_ledger, cfg.tables.admitted)}
    consent.run(spark, cfg, run_id="r4", cutoff=CUTOFF)  # the same feed again: nothing new lands
    assert {t: delta_io.table_version(t) for t in versions} == versions


def test_a_run_with_an_earlier_cutoff_does_not_bring_back_consent_a_later_run_saw_withdrawn(
    spark, gate_world, tmp_path
):
    """An older DAG run cleared after a newer one published must not turn a withdrawal back into a grant."""
    from tests.conftest import copy_lakehouse

    cfg = copy_lakehouse(gate_world[0], tmp_path)
    consent.run(spark, cfg, run_id="old-run", cutoff="2025-03-01T00:00:00+00:00")  # before UA-1's withdrawal

    effective = (
        delta_io.read_delta(spark, cfg.tables.effective_consent)
        .where("source_record_id = 'UA-1'")
        .select("source_record_id", "purpose", "effective_status")
    )
    expected = spark.createDataFrame([("UA-1", "profile_unification", "withdrawn")], effective.schema)
    assert_df_equality(effective, expected, ignore_nullable=True)
    assert delta_io.read_delta(spark, cfg.tables.admitted).where("source_record_id = 'UA-1'").count() == 0
    runs = delta_io.read_delta(spark, cfg.tables.consent_runs).where("run_id = 'old-run'").select("cutoff")
    applied = spark.createDataFrame([(dt.datetime(2026, 6, 1, tzinfo=UTC),)], runs.schema)  # the cutoff it applied
    assert_df_equality(runs, applied, ignore_nullable=True)


def test_an_erased_subjects_consent_events_are_not_landed_again(spark, gate_world, tmp_path):
    from jobs import subject_rights
    from tests.conftest import copy_lakehouse

    cfg = copy_lakehouse(gate_world[0], tmp_path).with_paths(landing=tmp_path / "landing")
    subject_rights.run(spark, cfg, run_id="sr-1", action="erase", record=["ua_crm:UA-5"])
    # The feed still delivers the subject's events, one of them on a line joined to another subject's event.
    joined = event("UA-1", "analytics", "consent", "granted", "2025-03-01T10:00:00Z") + event(
        "UA-5", "analytics", "consent", "denied", "2025-03-01T10:00:00Z"
    )
    write_consent_feed(cfg, "ua_crm", [*GOOD_EVENTS, *BAD_EVENTS, joined])
    assert len([e for e in GOOD_EVENTS + BAD_EVENTS if '"subject_id": "UA-5"' in e]) == 8

    result = consent.run(spark, cfg, run_id="r4", cutoff=CUTOFF)

    assert result.events_quarantined == {ingest.ERASED_SUBJECT: 9, "malformed_record": 1}
    assert result.events_read == len(GOOD_EVENTS) + len(BAD_EVENTS) + 1
    runs = delta_io.read_delta(spark, cfg.tables.consent_runs).where("run_id = 'r4'").drop("landed_at")
    expected = spark.createDataFrame(
        [("r4", "ua_crm", 19, 9, 10, dt.datetime(2026, 6, 1, tzinfo=UTC), cfg.policy.fingerprint)], runs.schema
    )
    assert_df_equality(runs, expected, ignore_nullable=True)
    for table in (cfg.tables.consent_ledger, cfg.tables.effective_consent, cfg.tables.consent_quarantine):
        assert delta_io.read_delta(spark, table).where("source_record_id = 'UA-5'").count() == 0, table
    quarantined = (
        delta_io.read_delta(spark, cfg.tables.consent_quarantine)
        .where("run_id = 'r4'")
        .select("source_record_id", "raw_record", "reason")
    )
    expected = spark.createDataFrame([(None, None, ingest.ERASED_SUBJECT)], quarantined.schema)
    assert_df_equality(quarantined, expected, ignore_nullable=True)


def test_a_pseudonym_is_an_attribute_the_gate_suppresses_without_its_purpose(spark):
    from jobs.config import load_config

    base = load_config().policy
    policy = dataclasses.replace(
        base,
        pseudonymized=("national_id",),
        attribute_purposes={**base.attribute_purposes, "national_id_hash": ("analytics",)},
    )
    decided = spark.createDataFrame(
        [("ua_crm", "UA-1", "h1"), ("ua_crm", "UA-2", "h2")],
        "source_system string, source_record_id string, national_id_hash string",
    )
    permitted = spark.createDataFrame(
        [("ua_crm", "UA-1", ["analytics", "profile_unification"]), ("ua_crm", "UA-2", ["profile_unification"])],
        "source_system string, source_record_id string, _permitted array<string>",
    )
    gated = consent.apply_attribute_policy(decided, permitted, policy).collect()
    assert {r["source_record_id"]: (r["national_id_hash"], list(r["_suppressed"])) for r in gated} == {
        "UA-1": ("h1", []),
        "UA-2": (None, ["national_id_hash"]),
    }


def test_a_purpose_the_policy_retired_fails_only_events_the_last_run_landed(spark):
    """The ledger keeps every event: those landed under an earlier policy must not refuse every later run, nor
    those an earlier attempt of the last run landed before the policy changed."""
    from expectations import consent_ledger

    jan, feb, mar = (dt.datetime(2026, m, 1, tzinfo=UTC) for m in (1, 2, 3))
    ledger = spark.createDataFrame(
        [
            ("r1", "s", "profile_unification", jan),
            ("r1", "s", "newsletter", jan),
            ("r2", "s", "profile_unification", feb),
            ("r2", "t", "newsletter", feb),
            ("r3", "s", "marketing_sms", feb),
        ],
        "run_id string, source_system string, purpose string, landed_at timestamp",
    )
    runs = spark.createDataFrame(
        [("r1", "s", jan), ("r2", "s", feb), ("r2", "t", feb)],
        "run_id string, source_system string, landed_at timestamp",
    )
    purposes = ["profile_unification", "marketing_sms"]

    def declared(consent_runs):
        return consent_ledger.with_purpose_checks(ledger, consent_runs, purposes).select(
            "run_id", "source_system", "purpose", "purpose_declared"
        )

    expected = spark.createDataFrame(
        [
            ("r1", "s", "profile_unification", True),
            ("r1", "s", "newsletter", True),  # landed by r1, under the policy of its day
            ("r2", "s", "profile_unification", True),
            ("r2", "t", "newsletter", False),  # the last run landed it: its policy declares no such purpose
            ("r3", "s", "marketing_sms", True),  # not the last consent run's: checked when it landed
        ],
        "run_id string, source_system string, purpose string, purpose_declared boolean",
    )
    assert_df_equality(declared(runs), expected, ignore_row_order=True, ignore_nullable=True)

    # r2 run again in March, after newsletter was retired: t's row is rewritten with the retry's counts, and
    # the events its first attempt landed in February are no longer what the run counts.
    retried = runs.where("source_system = 's'").union(spark.createDataFrame([("r2", "t", mar)], runs.schema))
    expected = spark.createDataFrame(
        [
            ("r1", "s", "profile_unification", True),
            ("r1", "s", "newsletter", True),
            ("r2", "s", "profile_unification", True),
            ("r2", "t", "newsletter", True),  # landed by r2's first attempt, under the policy of its day
            ("r3", "s", "marketing_sms", True),
        ],
        expected.schema,
    )
    assert_df_equality(declared(retried), expected, ignore_row_order=True, ignore_nullable=True)


def test_a_consent_feed_in_csv_lands_with_its_own_delimiter_and_encoding(spark, tmp_path):
    from tests.conftest import config_in

    cfg = config_in(tmp_path)
    path = tmp_path / "consent_events.csv"
    source = cfg.source("ua_crm")
    feed = dataclasses.replace(source.consent_feed, path=path, format="csv", encoding="windows-1251", delimiter=";")
    cfg = dataclasses.replace(cfg, sources=(dataclasses.replace(source, consent_feed=feed),))
    header = "event_id;subject_id;purpose;lawful_basis;status;event_time;recorded_at;method;notice_version;expires_at"
    lines = [
        header,
        "e1;UA-1;profile_unification;consent;granted;2025-01-01T10:00:00+02:00;2025-01-01T10:00:00+02:00;дзвінок;v4;",
        'e2;UA-2;marketing_email;consent;denied;2025-01-01T10:01:00+02:00;;"анкета; паперова";v4;',
        "e3;UA-3;profile_unification;because;granted;2025-01-01T10:00:00+02:00;;web_form;v4;",
    ]
    path.write_bytes("\r\n".join(lines).encode("windows-1251") + b"\r\n")

    feeds, _ = consent.land_consent_events(spark, cfg, "r1", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))

    assert feeds == ["ua_crm"]
    landed = delta_io.read_delta(spark, cfg.tables.consent_ledger)
    actual = landed.select("event_id", "source_record_id", "purpose", "status", "collection_method")
    expected = spark.createDataFrame(
        [
            ("e1", "UA-1", "profile_unification", "granted", "дзвінок"),
            ("e2", "UA-2", "marketing_email", "denied", "анкета; паперова"),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)
    quarantined = delta_io.read_delta(spark, cfg.tables.consent_quarantine)
    assert [(r["source_record_id"], r["reason"]) for r in quarantined.collect()] == [("UA-3", "invalid_lawful_basis")]

    # The same feed written as UTF-8 would land garbled: it fails, naming the feed, before anything is written.
    path.write_bytes("\r\n".join(lines).encode("utf-8") + b"\r\n")
    versions = {name: delta_io.table_version(p) for name, p in cfg.tables.all().items()}
    with pytest.raises(IdresError, match=r"ua_crm consent feed.*set its encoding to UTF-8"):
        consent.land_consent_events(spark, cfg, "r2", dt.datetime(2026, 1, 2, tzinfo=dt.UTC))
    assert {name: delta_io.table_version(p) for name, p in cfg.tables.all().items()} == versions
