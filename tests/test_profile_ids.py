from __future__ import annotations

import datetime as dt

import pytest
from chispa import assert_df_equality

from jobs.profile_ids import EVENTS_SCHEMA, REGISTRY_SCHEMA, assign_stable_profile_ids

T0 = dt.datetime(2026, 1, 1)
T1 = dt.datetime(2026, 1, 2)


@pytest.fixture
def first_run(spark):
    """Run 1 on people A = {a1, a2} and B = {b1}: two new profiles."""
    clusters = spark.createDataFrame([("a1", "k1"), ("a2", "k1"), ("b1", "k2")], "record_id string, cluster_key string")
    empty_prev = spark.createDataFrame([], "record_id string, profile_id string")
    empty_registry = spark.createDataFrame([], REGISTRY_SCHEMA)
    out = assign_stable_profile_ids(clusters, empty_prev, empty_registry, "run1", T0)
    return out.assignments.cache(), out.registry.cache(), out.events


def ids(assignments) -> dict[str, str]:
    return {r["record_id"]: r["profile_id"] for r in assignments.collect()}


def events(out) -> set[tuple]:
    return {(r["event_type"], r["profile_id"], r["related_profile_id"], r["records"]) for r in out.events.collect()}


def test_new_clusters_get_new_ids_and_created_events(spark, first_run):
    assignments, registry, evts = first_run
    a = ids(assignments)
    assert a["a1"] == a["a2"] != a["b1"]
    assert all(p.startswith("pr_") for p in a.values())
    assert {(r["event_type"], r["profile_id"], r["records"]) for r in evts.collect()} == {
        ("created", a["a1"], 2),
        ("created", a["b1"], 1),
    }
    assert {r["status"] for r in registry.collect()} == {"active"}


def test_the_same_clusters_again_keep_every_id_and_change_nothing(spark, first_run):
    assignments, registry, _ = first_run
    clusters = spark.createDataFrame([("a1", "x9"), ("a2", "x9"), ("b1", "x3")], "record_id string, cluster_key string")
    out = assign_stable_profile_ids(clusters, assignments, registry, "run2", T1)
    assert_df_equality(out.assignments, assignments, ignore_row_order=True, ignore_nullable=True)
    assert out.events.count() == 0
    assert_df_equality(out.registry, registry, ignore_row_order=True, ignore_nullable=True)


def test_growing_data_keeps_known_ids_and_new_people_get_new_ones(spark, first_run):
    assignments, registry, _ = first_run
    before = ids(assignments)
    clusters = spark.createDataFrame(
        [("a1", "k1"), ("a2", "k1"), ("a3", "k1"), ("b1", "k2"), ("c1", "k3")], "record_id string, cluster_key string"
    )
    out = assign_stable_profile_ids(clusters, assignments, registry, "run2", T1)
    after = ids(out.assignments)
    assert after["a3"] == after["a1"] == before["a1"] and after["b1"] == before["b1"]
    assert after["c1"] not in before.values()
    assert events(out) == {("created", after["c1"], None, 1)}


def test_a_bridging_record_merges_into_the_larger_profile(spark, first_run):
    assignments, registry, _ = first_run
    before = ids(assignments)
    clusters = spark.createDataFrame(
        [("a1", "k1"), ("a2", "k1"), ("b1", "k1"), ("ab", "k1")], "record_id string, cluster_key string"
    )
    out = assign_stable_profile_ids(clusters, assignments, registry, "run2", T1)
    assert set(ids(out.assignments).values()) == {before["a1"]}  # A overlaps by 2, B by 1
    assert events(out) == {("merged", before["b1"], before["a1"], 1)}
    status = {r["profile_id"]: (r["status"], r["successor_profile_id"]) for r in out.registry.collect()}
    assert status[before["b1"]] == ("merged", before["a1"])


def test_on_equal_overlap_the_oldest_profile_survives(spark):
    registry = spark.createDataFrame(
        [("pr_new", "active", T1, "run0", None, None, None), ("pr_old", "active", T0, "run0", None, None, None)],
        REGISTRY_SCHEMA,
    )
    previous = spark.createDataFrame([("x", "pr_new"), ("y", "pr_old")], "record_id string, profile_id string")
    clusters = spark.createDataFrame([("x", "k"), ("y", "k"), ("z", "k")], "record_id string, cluster_key string")
    out = assign_stable_profile_ids(clusters, previous, registry, "run1", T1)
    assert set(ids(out.assignments).values()) == {"pr_old"}
    assert events(out) == {("merged", "pr_new", "pr_old", 1)}


def test_removing_the_bridge_splits_the_profile_and_the_larger_part_keeps_the_id(spark):
    registry = spark.createDataFrame([("pr_ab", "active", T0, "run0", None, None, None)], REGISTRY_SCHEMA)
    previous = spark.createDataFrame(
        [("a1", "pr_ab"), ("a2", "pr_ab"), ("b1", "pr_ab"), ("ab", "pr_ab")], "record_id string, profile_id string"
    )
    clusters = spark.createDataFrame([("a1", "k1"), ("a2", "k1"), ("b1", "k2")], "record_id string, cluster_key string")
    out = assign_stable_profile_ids(clusters, previous, registry, "run1", T1)
    after = ids(out.assignments)
    assert after["a1"] == after["a2"] == "pr_ab" and after["b1"] != "pr_ab"
    assert events(out) == {("split", after["b1"], "pr_ab", 1)}
    # Rerunning the same run issues the same new id.
    again = assign_stable_profile_ids(clusters, previous, registry, "run1", T1)
    assert ids(again.assignments) == after


def test_a_profile_with_no_records_left_is_retired(spark, first_run):
    assignments, registry, _ = first_run
    before = ids(assignments)
    clusters = spark.createDataFrame([("a1", "k1"), ("a2", "k1")], "record_id string, cluster_key string")
    out = assign_stable_profile_ids(clusters, assignments, registry, "run2", T1)
    assert events(out) == {("retired", before["b1"], None, 0)}
    expected = spark.createDataFrame([("run2", "retired", before["b1"], None, 0, T1)], EVENTS_SCHEMA)
    assert_df_equality(out.events, expected, ignore_nullable=True)
