"""Stable profile ids, on both engines: the same SQL must give the same ids and events on Spark and DuckDB."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pytest
from chispa import assert_df_equality

from jobs.engines import ENGINES, SqlEngine, open_engine
from jobs.profile_ids import (
    ASSIGNMENTS_SCHEMA,
    CLUSTERS_SCHEMA,
    EVENTS_SCHEMA,
    REGISTRY_SCHEMA,
    assign_stable_profile_ids,
    first_profile_id,
    with_event_ids,
)

T0 = dt.datetime(2026, 1, 1)
T1 = dt.datetime(2026, 1, 2)


@pytest.fixture(params=ENGINES)
def db(request, spark):
    with open_engine(spark, request.param) as engine:
        yield engine


@dataclass
class Outcome:
    assignments: pa.Table
    registry: pa.Table
    events: pa.Table


def arrow(rows, schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(schema.names, r, strict=True)) for r in rows], schema)


def assign(
    db: SqlEngine, clusters, previous=(), registry: pa.Table | None = None, run_id: str = "run1", now=T0
) -> Outcome:
    """assign_stable_profile_ids on the engine, with the inputs given as rows (or Arrow, a previous outcome's)."""
    out = assign_stable_profile_ids(
        db,
        db.register("clusters", arrow(clusters, CLUSTERS_SCHEMA)),
        db.register("previous", previous if isinstance(previous, pa.Table) else arrow(previous, ASSIGNMENTS_SCHEMA)),
        db.register("registry", REGISTRY_SCHEMA.empty_table() if registry is None else registry),
        run_id,
        now,
    )
    return Outcome(*(db.to_arrow(table) for table in (out.assignments, out.registry, out.events)))


@pytest.fixture
def first_run(db) -> Outcome:
    """Run 1 on people A = {a1, a2} and B = {b1}: two new profiles."""
    return assign(db, [("a1", "k1"), ("a2", "k1"), ("b1", "k2")])


def ids(out: Outcome) -> dict[str, str]:
    return {r["record_id"]: r["profile_id"] for r in out.assignments.to_pylist()}


def events(out: Outcome) -> set[tuple]:
    return {(r["event_type"], r["profile_id"], r["related_profile_id"], r["records"]) for r in out.events.to_pylist()}


def assert_same_rows(spark, actual: pa.Table, expected: pa.Table) -> None:
    assert_df_equality(
        spark.createDataFrame(actual), spark.createDataFrame(expected), ignore_row_order=True, ignore_nullable=True
    )


def test_new_clusters_get_new_ids_and_created_events(first_run):
    a = ids(first_run)
    assert a["a1"] == a["a2"] != a["b1"]
    # A new id is derived from the run id and the cluster's smallest record id (computed here independently).
    assert a["a1"] == "pr_" + hashlib.sha256(b"run1:a1").hexdigest()[:20]
    assert first_profile_id("run1", "b1") == a["b1"]  # as the erasure finds a profile made for one record
    assert events(first_run) == {("created", a["a1"], None, 2), ("created", a["b1"], None, 1)}
    assert {r["status"] for r in first_run.registry.to_pylist()} == {"active"}
    assert {r["created_at"] for r in first_run.registry.to_pylist()} == {T0.replace(tzinfo=dt.UTC)}


def test_the_same_clusters_again_keep_every_id_and_change_nothing(spark, db, first_run):
    out = assign(db, [("a1", "x9"), ("a2", "x9"), ("b1", "x3")], first_run.assignments, first_run.registry, "run2", T1)
    assert_same_rows(spark, out.assignments, first_run.assignments)
    assert out.events.num_rows == 0
    assert_same_rows(spark, out.registry, first_run.registry)


def test_growing_data_keeps_known_ids_and_new_people_get_new_ones(db, first_run):
    before = ids(first_run)
    clusters = [("a1", "k1"), ("a2", "k1"), ("a3", "k1"), ("b1", "k2"), ("c1", "k3")]
    out = assign(db, clusters, first_run.assignments, first_run.registry, "run2", T1)
    after = ids(out)
    assert after["a3"] == after["a1"] == before["a1"] and after["b1"] == before["b1"]
    assert after["c1"] not in before.values()
    assert events(out) == {("created", after["c1"], None, 1)}


def test_a_run_published_and_run_again_with_its_run_id_gives_a_part_it_splits_off_an_id_of_its_own(db):
    """run1 created X for {a1, b1, b2}, its id derived from run1 and a1. Run again with its run id after a fix,
    it parts a1 off: X follows {b1, b2}, and {a1} cannot take X's id again. It takes the next 20 hex digits of
    a hash with the instant of this resolve."""
    first = assign(db, [("a1", "k1"), ("b1", "k1"), ("b2", "k1")], run_id="run1", now=T0)
    x = ids(first)["a1"]
    again = assign(db, [("a1", "a1"), ("b1", "b1"), ("b2", "b1")], first.assignments, first.registry, "run1", T1)
    reissued = "pr_" + hashlib.sha256(f"run1:a1:{T1.isoformat()}".encode()).hexdigest()[20:40]
    assert ids(again) == {"a1": reissued, "b1": x, "b2": x}
    assert events(again) == {("split", reissued, x, 1)}
    assert sorted(r["profile_id"] for r in again.registry.to_pylist()) == sorted([x, reissued])


def test_a_reissued_id_is_neither_a_new_records_id_nor_one_an_earlier_attempt_issued(db):
    """Record ids hold colons: {crm:A}'s id reissued with a count of the run's ids ("run1:crm:A:1") was the first
    choice of a new record crm:A:1. And that count falls when an erasure drops a registry row: the next attempt
    reissued an id the registry still held, merged."""
    first = assign(db, [("crm:A", "k1"), ("crm:B", "k1"), ("crm:C", "k1")], run_id="run1", now=T0)
    x = ids(first)["crm:A"]
    parted = [("crm:A", "k1"), ("crm:B", "k2"), ("crm:C", "k2"), ("crm:A:1", "k3")]
    again = assign(db, parted, first.assignments, first.registry, "run1", T1)
    assert len(set(ids(again).values())) == 3 and ids(again)["crm:B"] == x

    # run1 issues X for {a, b} and Y for {s}; run again, it parts a off as R; run2 merges R back into X
    first = assign(db, [("a", "k1"), ("b", "k1"), ("s", "k2")], run_id="run1", now=T0)
    again = assign(db, [("a", "k9"), ("b", "k1"), ("s", "k2")], first.assignments, first.registry, "run1", T1)
    merged = assign(db, [("a", "k1"), ("b", "k1"), ("s", "k2")], again.assignments, again.registry, "run2", T1)
    reissued = ids(again)["a"]
    assert {r["profile_id"]: r["status"] for r in merged.registry.to_pylist()}[reissued] == "merged"
    # the erasure of s drops Y's registry row; run1 is run again and parts a off once more
    y = ids(merged)["s"]
    kept = [r for r in merged.registry.to_pylist() if r["profile_id"] != y]
    registry = pa.Table.from_pylist(kept, REGISTRY_SCHEMA)
    held = [r for r in merged.assignments.to_pylist() if r["record_id"] != "s"]
    previous = pa.Table.from_pylist(held, ASSIGNMENTS_SCHEMA)
    third = assign(db, [("a", "k9"), ("b", "k1")], previous, registry, "run1", T1 + dt.timedelta(hours=1))
    assert ids(third)["a"] not in {r["profile_id"] for r in kept}
    assert len({r["profile_id"] for r in third.registry.to_pylist()}) == third.registry.num_rows


def test_a_bridging_record_merges_into_the_larger_profile(db, first_run):
    before = ids(first_run)
    clusters = [("a1", "k1"), ("a2", "k1"), ("b1", "k1"), ("ab", "k1")]
    out = assign(db, clusters, first_run.assignments, first_run.registry, "run2", T1)
    assert set(ids(out).values()) == {before["a1"]}  # A overlaps by 2, B by 1
    assert events(out) == {("merged", before["b1"], before["a1"], 1)}
    status = {r["profile_id"]: (r["status"], r["successor_profile_id"]) for r in out.registry.to_pylist()}
    assert status[before["b1"]] == ("merged", before["a1"])


def test_on_equal_overlap_the_oldest_profile_survives(db):
    registry = arrow(
        [("pr_new", "active", T1, "run0", None, None, None), ("pr_old", "active", T0, "run0", None, None, None)],
        REGISTRY_SCHEMA,
    )
    out = assign(db, [("x", "k"), ("y", "k"), ("z", "k")], [("x", "pr_new"), ("y", "pr_old")], registry, now=T1)
    assert set(ids(out).values()) == {"pr_old"}
    assert events(out) == {("merged", "pr_new", "pr_old", 1)}


def test_removing_the_bridge_splits_the_profile_and_the_larger_part_keeps_the_id(db):
    registry = arrow([("pr_ab", "active", T0, "run0", None, None, None)], REGISTRY_SCHEMA)
    previous = [("a1", "pr_ab"), ("a2", "pr_ab"), ("b1", "pr_ab"), ("ab", "pr_ab")]
    clusters = [("a1", "k1"), ("a2", "k1"), ("b1", "k2")]
    out = assign(db, clusters, previous, registry, now=T1)
    after = ids(out)
    assert after["a1"] == after["a2"] == "pr_ab" and after["b1"] != "pr_ab"
    assert events(out) == {("split", after["b1"], "pr_ab", 1)}
    # Rerunning the same run issues the same new id.
    assert ids(assign(db, clusters, previous, registry, now=T1)) == after


def test_records_that_change_between_two_kept_profiles_are_moved_events(spark, db):
    """Undoing a wrong merge moves the bridging record back: both ids stay, and each move is an event."""
    registry = arrow(
        [("pr_p", "active", T0, "run0", None, None, None), ("pr_q", "active", T0, "run0", None, None, None)],
        REGISTRY_SCHEMA,
    )
    previous = [("a", "pr_p"), ("b", "pr_p"), ("c", "pr_p"), ("f", "pr_p"), ("d", "pr_q"), ("e", "pr_q")]
    clusters = [("a", "k1"), ("b", "k1"), ("c", "k2"), ("d", "k2"), ("e", "k2"), ("f", "k3")]
    out = assign(db, clusters, previous, registry, "run2", T1)
    assert ids(out) == {"a": "pr_p", "b": "pr_p", "c": "pr_q", "d": "pr_q", "e": "pr_q", "f": ids(out)["f"]}
    at = T1.replace(tzinfo=dt.UTC)
    new = "pr_" + hashlib.sha256(b"run2:f").hexdigest()[:20]
    expected = arrow([("run2", "moved", "pr_q", "pr_p", 1, at), ("run2", "split", new, "pr_p", 1, at)], EVENTS_SCHEMA)
    assert_same_rows(spark, out.events, expected)
    assert_same_rows(
        spark,
        out.registry,
        pa.concat_tables([registry, arrow([(new, "active", at, "run2", None, None, None)], REGISTRY_SCHEMA)]),
    )


@pytest.mark.parametrize("bridge", ["p1", "p9"])  # the bridging record's id sorts before, or after, p2
def test_a_profile_split_evenly_keeps_its_id_with_the_records_no_other_profile_keeps(spark, db, bridge):
    """P = {bridge, p2} was a wrong merge: the bridge is Q's person. When the next run puts it with Q's records
    and leaves p2 alone, P keeps its id on p2 and the bridge moves to Q, however the record ids sort."""
    registry = arrow(
        [("pr_p", "active", T0, "run0", None, None, None), ("pr_q", "active", T0, "run0", None, None, None)],
        REGISTRY_SCHEMA,
    )
    previous = [(bridge, "pr_p"), ("p2", "pr_p"), ("q1", "pr_q"), ("q2", "pr_q"), ("q3", "pr_q")]
    # Splink's cluster key: the cluster's smallest record id.
    clusters = [(bridge, min(bridge, "q1")), ("q1", min(bridge, "q1")), ("q2", min(bridge, "q1"))]
    clusters += [("q3", min(bridge, "q1")), ("p2", "p2")]
    out = assign(db, clusters, previous, registry, "run2", T1)
    assert ids(out) == {bridge: "pr_q", "p2": "pr_p", "q1": "pr_q", "q2": "pr_q", "q3": "pr_q"}
    expected = arrow([("run2", "moved", "pr_q", "pr_p", 1, T1.replace(tzinfo=dt.UTC))], EVENTS_SCHEMA)
    assert_same_rows(spark, out.events, expected)
    assert_same_rows(spark, out.registry, registry)


def test_two_profiles_that_trade_records_evenly_both_keep_their_ids(spark, db):
    """P = {p1, p2} and Q = {q1, q2} swap a record each: the next run clusters {p1, q1} and {p2, q2}. P would keep
    its id in either (it is older); Q, which would merge into P in the first, keeps its own in the second."""
    registry = arrow(
        [("pr_p", "active", T0, "run0", None, None, None), ("pr_q", "active", T1, "run1", None, None, None)],
        REGISTRY_SCHEMA,
    )
    previous = [("p1", "pr_p"), ("p2", "pr_p"), ("q1", "pr_q"), ("q2", "pr_q")]
    clusters = [("p1", "p1"), ("q1", "p1"), ("p2", "p2"), ("q2", "p2")]
    out = assign(db, clusters, previous, registry, "run2", T1)
    assert ids(out) == {"p1": "pr_p", "q1": "pr_p", "p2": "pr_q", "q2": "pr_q"}
    at = T1.replace(tzinfo=dt.UTC)
    expected = arrow(
        [("run2", "moved", "pr_p", "pr_q", 1, at), ("run2", "moved", "pr_q", "pr_p", 1, at)], EVENTS_SCHEMA
    )
    assert_same_rows(spark, out.events, expected)
    assert_same_rows(spark, out.registry, registry)
    # Three profiles trading around a ring: each keeps its id (the merged ones take the clusters no one follows).
    registry = arrow([(f"pr_{x}", "active", T0, "run0", None, None, None) for x in "abc"], REGISTRY_SCHEMA)
    previous = [(f"{x}{i}", f"pr_{x}") for x in "abc" for i in (1, 2)]
    clusters = [("a1", "k1"), ("b1", "k1"), ("b2", "k2"), ("c1", "k2"), ("c2", "k3"), ("a2", "k3")]
    out = assign(db, clusters, previous, registry, "run2", T1)
    assert sorted(set(ids(out).values())) == ["pr_a", "pr_b", "pr_c"]
    assert {e[0] for e in events(out)} == {"moved"}


def test_a_profile_with_no_records_left_is_retired(spark, db, first_run):
    before = ids(first_run)
    out = assign(db, [("a1", "k1"), ("a2", "k1")], first_run.assignments, first_run.registry, "run2", T1)
    assert_same_rows(spark, out.events, arrow([("run2", "retired", before["b1"], None, 0, T1)], EVENTS_SCHEMA))
    retired = [r for r in out.registry.to_pylist() if r["profile_id"] == before["b1"]]
    assert [(r["status"], r["ended_run_id"], r["ended_at"]) for r in retired] == [
        ("retired", "run2", T1.replace(tzinfo=dt.UTC))
    ]


def test_a_cluster_made_of_parts_of_two_profiles_is_one_split_with_the_records_from_each(spark, db, tmp_path):
    from deltalake import write_deltalake

    from jobs import run_queries
    from tests.conftest import config_in

    registry = arrow(
        [("pr_a", "active", T0, "run0", None, None, None), ("pr_b", "active", T0, "run0", None, None, None)],
        REGISTRY_SCHEMA,
    )
    previous = [("a1", "pr_a"), ("a2", "pr_a"), ("a3", "pr_a"), ("b1", "pr_b"), ("b2", "pr_b"), ("b3", "pr_b")]
    clusters = [("a1", "k1"), ("a2", "k1"), ("a3", "k2"), ("b3", "k2"), ("b1", "k3"), ("b2", "k3")]
    out = assign(db, clusters, previous, registry, "run2", T1)
    new = "pr_" + hashlib.sha256(b"run2:a3").hexdigest()[:20]
    at = T1.replace(tzinfo=dt.UTC)
    expected = arrow([("run2", "split", new, "pr_a", 1, at), ("run2", "split", new, "pr_b", 1, at)], EVENTS_SCHEMA)
    assert_same_rows(spark, out.events, expected)

    # The run's report counts one profile split, not one per profile it came from.
    cfg = config_in(tmp_path)
    write_deltalake(str(cfg.tables.identity_events), out.events)
    counts = run_queries.IDENTITY_EVENTS.execute(cfg.tables, "run2").to_pylist()
    assert counts == [{"run_id": "run2", "event_type": "split", "profiles": 1}]


def test_an_event_repeated_by_a_later_publication_of_the_run_gets_its_own_id(db):
    moved = arrow([("run1", "moved", "p2", "p1", 1, T0)], EVENTS_SCHEMA)
    staged = {at: db.to_arrow(with_event_ids(db, db.register("moved", moved), at)) for at in (T0, T1)}
    ids_at = {at: table.column("event_id").to_pylist() for at, table in staged.items()}
    assert ids_at == {
        at: [hashlib.sha256(f"run1|{at.isoformat()}|moved|p2|p1".encode()).hexdigest()] for at in (T0, T1)
    }
    assert staged[T0].drop_columns("event_id") == moved
