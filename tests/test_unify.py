"""Golden profiles: survivorship, lineage, consent-driven permissions, withdrawal and idempotent publishing."""

from __future__ import annotations

import dataclasses
import datetime as dt

from chispa import assert_df_equality
from pyspark.sql import functions as F

from jobs import consent, delta_io, publication, resolve, unify
from jobs.config import SurvivorshipConfig, SurvivorshipRule
from tests.test_resolve import BRIDGE, IRYNA, PEOPLE, bronze_rows, silver_rows

D, T = dt.date, dt.datetime

# Each strategy's winner is not the record the fallback order (smallest record id) would pick, so a strategy that
# stopped ranking would change the result: the priority is the reverse of the ids' order, the most frequent first
# name is not the top-priority record's, the most recent email is the larger id's.
SURVIVORSHIP = SurvivorshipConfig(
    source_priority=("ua_crm", "ro_shop", "eu_loyalty"),
    rules=(
        SurvivorshipRule("first_name", ("first_name", "first_name_native"), "most_frequent", ("source_priority",)),
        SurvivorshipRule("email", ("email",), "most_recent", ()),
        SurvivorshipRule("address", ("street", "city"), "most_complete", ("most_recent",)),
        SurvivorshipRule("date_of_birth", ("date_of_birth",), "source_priority", ()),
        SurvivorshipRule("marketing_email", ("marketing_email",), "most_recent", ()),
    ),
)
ADMITTED_SCHEMA = (
    "source_system string, source_record_id string, region string, updated_at timestamp, first_name string, "
    "first_name_native string, email string, street string, city string, date_of_birth date, "
    "marketing_email string, permitted_purposes string, unification_basis string, unification_event_id string"
)
UNIFICATION = "profile_unification"
# P1: Olena, three records in three regions; P2: Ivan, one record.
ADMITTED = [
    ("ua_crm", "1", "UA", T(2026, 4, 1), "Elena", "Олена", "a@x.ua", None, "Kyiv", D(1990, 1, 1), "a@x.ua",
     "marketing_email,profile_unification", "consent", "e-a1"),
    ("ro_shop", "2", "RO", T(2026, 3, 1), "Olena", "Olena", "b@x.ro", "Str 1", "Iasi", D(1990, 1, 2), None,
     "profile_unification", "contract", "e-b1"),
    ("eu_loyalty", "3", "EU", T(2026, 5, 1), "Olena", "Olena", None, None, None, D(1990, 1, 1), None,
     "profile_unification", "consent", "e-c1"),
    ("ua_crm", "4", "UA", T(2026, 2, 1), "Ivan", "Іван", "i@x.ua", None, None, None, "i@x.ua",
     "marketing_email,profile_unification", "contract", "e-d1"),
]  # fmt: skip
RECORD_PROFILES = [("ua_crm:1", "P1"), ("ro_shop:2", "P1"), ("eu_loyalty:3", "P1"), ("ua_crm:4", "P2")]
EFFECTIVE_SCHEMA = (
    "source_system string, source_record_id string, purpose string, lawful_basis string, effective_status string, "
    "is_granted boolean, deciding_event_id string, event_time timestamp, expires_at timestamp, recorded_at timestamp"
)
EFFECTIVE = [
    ("ua_crm", "1", UNIFICATION, "consent", "granted", True, "e-a1", T(2026, 1, 1), None),
    ("ua_crm", "1", "marketing_email", "consent", "granted", True, "e-a2", T(2026, 2, 1), None),
    ("ro_shop", "2", UNIFICATION, "contract", "granted", True, "e-b1", T(2026, 1, 2), None),
    ("eu_loyalty", "3", UNIFICATION, "consent", "granted", True, "e-c1", T(2026, 1, 3), None),
    # Olena withdrew marketing email in the EU after granting it in Ukraine: the profile may not be mailed.
    ("eu_loyalty", "3", "marketing_email", "consent", "withdrawn", False, "e-c2", T(2026, 4, 1), None),
    ("ua_crm", "4", UNIFICATION, "contract", "granted", True, "e-d1", T(2026, 1, 1), None),
    ("ua_crm", "4", "marketing_email", "consent", "granted", True, "e-d2", T(2026, 2, 1), None),
    ("ua_crm", "4", "marketing_sms", "contract", "granted", True, "e-d3", T(2026, 2, 1), None),
]


def effective_frame(spark, rows):
    """Effective consent of rows: EFFECTIVE_SCHEMA but its last column, recorded_at, which is left null."""
    return spark.createDataFrame([(*r, None) for r in rows], EFFECTIVE_SCHEMA)


def hand_gold(spark, policy):
    record_profiles = spark.createDataFrame(
        [(r, p, *r.split(":")) for r, p in RECORD_PROFILES],
        "record_id string, profile_id string, source_system string, source_record_id string",
    )
    pairs = spark.createDataFrame(
        [("ro_shop:2", "ua_crm:1", 12.5, 0.9998), ("eu_loyalty:3", "ua_crm:1", 8.0, 0.996)],
        "record_id_l string, record_id_r string, match_weight double, match_probability double",
    )
    return unify.build_gold(
        record_profiles,
        spark.createDataFrame(ADMITTED, ADMITTED_SCHEMA),
        pairs,
        effective_frame(spark, EFFECTIVE),
        SURVIVORSHIP,
        policy,
    )


def test_survivorship_strategies_pick_the_expected_record_per_attribute(spark, cfg):
    gold = hand_gold(spark, cfg.policy)
    # first_name: Olena (2 records) beats Elena; between the two, ro_shop outranks eu_loyalty, and the native
    # form travels with it. email: the most recent. address: the most complete record (not the more recent).
    # date_of_birth: the most trusted source. marketing_email: dropped, the latest decision withdrew it.
    rows = [
        ("P1", "Olena", "Olena", "a@x.ua", "Str 1", "Iasi", D(1990, 1, 1), None, ["EU", "RO", "UA"], 3,
         ["eu_loyalty", "ro_shop", "ua_crm"], 3, T(2026, 5, 1)),
        ("P2", "Ivan", "Іван", "i@x.ua", None, None, None, "i@x.ua", ["UA"], 1, ["ua_crm"], 1, T(2026, 2, 1)),
    ]  # fmt: skip
    expected = spark.createDataFrame(
        rows,
        "profile_id string, first_name string, first_name_native string, email string, street string, city string, "
        "date_of_birth date, marketing_email string, regions array<string>, region_count int, "
        "source_systems array<string>, record_count long, last_updated_at timestamp",
    )
    assert_df_equality(gold.profiles, expected, ignore_row_order=True, ignore_nullable=True)


def test_every_value_has_lineage_to_its_record_rule_and_lawful_basis(spark, cfg):
    lineage = hand_gold(spark, cfg.policy).profile_lineage
    picked = lineage.select("profile_id", "column", "source_record_id", "purpose", "lawful_basis", "consent_event_id")
    u, m = UNIFICATION, "marketing_email"
    expected = spark.createDataFrame(
        [
            ("P1", "first_name", "2", u, "contract", "e-b1"),
            ("P1", "first_name_native", "2", u, "contract", "e-b1"),
            ("P1", "email", "1", u, "consent", "e-a1"),
            ("P1", "street", "2", u, "contract", "e-b1"),
            ("P1", "city", "2", u, "contract", "e-b1"),
            ("P1", "date_of_birth", "1", u, "consent", "e-a1"),
            ("P2", "first_name", "4", u, "contract", "e-d1"),
            ("P2", "first_name_native", "4", u, "contract", "e-d1"),
            ("P2", "email", "4", u, "contract", "e-d1"),
            ("P2", "marketing_email", "4", m, "consent", "e-d2"),
        ],
        "profile_id string, column string, source_record_id string, purpose string, lawful_basis string, "
        "consent_event_id string",
    )
    assert_df_equality(picked, expected, ignore_row_order=True, ignore_nullable=True)
    p1 = lineage.where("profile_id = 'P1'").collect()
    rules = {r["column"]: r["rule"] for r in p1}
    assert rules["street"] == "most_complete > most_recent > record_id"
    assert rules["date_of_birth"] == "source_priority > record_id"
    # the policy attribute whose purposes justify the value (conf/policy.yaml), not the survivorship rule's name
    assert {r["column"]: r["attribute"] for r in p1 if r["column"] in ("street", "city", "first_name_native")} == {
        "street": "street",
        "city": "city",
        "first_name_native": "first_name",
    }


def test_a_value_whose_records_decision_is_no_grant_has_no_lawful_basis_in_its_lineage(spark, cfg):
    # The records were admitted for these purposes, and then a withdrawal of record 3's marketing email
    # consent landed (effective consent newer than the admitted records): the withdrawal justifies nothing.
    cells = spark.createDataFrame(
        [
            ("P1", "email", "ua_crm:1", "ua_crm", "1", "email", "most_recent > record_id", UNIFICATION),
            (
                "P1",
                "marketing_email",
                "eu_loyalty:3",
                "eu_loyalty",
                "3",
                "marketing_email",
                "most_recent",
                "marketing_email",
            ),
        ],
        "profile_id string, column string, record_id string, source_system string, source_record_id string, "
        "attribute string, rule string, purpose string",
    )
    lineage = unify.profile_lineage(cells, effective_frame(spark, EFFECTIVE), cfg.policy)
    actual = lineage.select("column", "record_id", "purpose", "lawful_basis", "consent_event_id")
    expected = spark.createDataFrame(
        [
            ("email", "ua_crm:1", UNIFICATION, "consent", "e-a1"),
            ("marketing_email", "eu_loyalty:3", "marketing_email", None, None),
        ],
        actual.schema,
    )
    assert_df_equality(actual, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_value_several_purposes_cover_is_held_for_the_first_the_record_and_profile_are_permitted(spark, cfg):
    # Record 4 (P2) and its profile are permitted marketing_email and profile_unification; record 1, which
    # supplies P1's email, is permitted both too, but its profile only profile_unification.
    u, m = UNIFICATION, "marketing_email"
    for purposes, p2_email in (((m, u), (m, "consent", "e-d2")), ((u, m), (u, "contract", "e-d1"))):
        policy = dataclasses.replace(
            cfg.policy, attribute_purposes={**cfg.policy.attribute_purposes, "email": purposes}
        )
        lineage = hand_gold(spark, policy).profile_lineage.where("column = 'email'")
        expected = spark.createDataFrame(
            [("P1", u, "consent", "e-a1"), ("P2", *p2_email)],
            "profile_id string, purpose string, lawful_basis string, consent_event_id string",
        )
        picked = lineage.select("profile_id", "purpose", "lawful_basis", "consent_event_id")
        assert_df_equality(picked, expected, ignore_row_order=True, ignore_nullable=True)


def one_profile_gold(spark, admitted, effective, rules, policy):
    """Gold of the admitted records (ADMITTED_SCHEMA rows) as one profile P, unmatched pairwise."""
    return unify.build_gold(
        spark.createDataFrame(
            [(f"{s}:{i}", "P", s, i) for s, i, *_ in admitted],
            "record_id string, profile_id string, source_system string, source_record_id string",
        ),
        spark.createDataFrame(admitted, ADMITTED_SCHEMA),
        spark.createDataFrame(
            [], "record_id_l string, record_id_r string, match_weight double, match_probability double"
        ),
        effective_frame(spark, effective),
        rules,
        policy,
    )


def test_most_frequent_counts_only_records_that_may_supply_the_value(spark, cfg):
    """A and B hold x@x under analytics alone, which the profile may not use (E withdrew it): they may not supply
    it, so they do not vote. C (x@x) and D (y@x) tie, and the most recent, D, wins."""
    u, m, a = UNIFICATION, "marketing_email", "analytics"
    policy = dataclasses.replace(
        cfg.policy, attribute_purposes={**cfg.policy.attribute_purposes, "marketing_email": (m, a)}
    )
    rules = SurvivorshipConfig(
        (), (SurvivorshipRule("marketing_email", ("marketing_email",), "most_frequent", ("most_recent",)),)
    )
    admitted = [
        ("ua_crm", "A", "UA", T(2026, 1, 1), None, None, None, None, None, None, "x@x", f"{a},{u}", "consent", "eA"),
        ("ua_crm", "B", "UA", T(2026, 1, 1), None, None, None, None, None, None, "x@x", f"{a},{u}", "consent", "eB"),
        ("ro_shop", "C", "RO", T(2026, 1, 1), None, None, None, None, None, None, "x@x", f"{m},{u}", "consent", "eC"),
        ("ro_shop", "D", "RO", T(2026, 5, 1), None, None, None, None, None, None, "y@x", f"{m},{u}", "consent", "eD"),
        ("eu_loyalty", "E", "EU", T(2026, 1, 1), None, None, None, None, None, None, None, u, "consent", "eE"),
    ]  # fmt: skip
    granted = [(s, i, p, "consent", "granted", True, f"{e}-{p}", T(2026, 1, 1), None) for s, i, *_, e in admitted
               for p in (u, m if s == "ro_shop" else a)]  # fmt: skip
    withdrawn = ("eu_loyalty", "E", a, "consent", "withdrawn", False, "eE-w", T(2026, 6, 1), None)
    gold = one_profile_gold(spark, admitted, [*granted, withdrawn], rules, policy)
    survivor = gold.profiles.join(gold.profile_lineage, "profile_id").select(
        "profile_id", "marketing_email", "record_id"
    )
    expected = spark.createDataFrame([("P", "y@x", "ro_shop:D")], survivor.schema)
    assert_df_equality(survivor, expected, ignore_nullable=True)


def test_most_frequent_counts_no_missing_value_and_no_source_priority_ranks_sources_alike(spark, cfg):
    """Address, most complete then most frequent: every record holds one of street and city. Two agree on a
    street; the three without one do not outvote them. Email, by source priority with none listed: every source
    ranks alike, so the smallest record id decides."""
    u = UNIFICATION
    rules = SurvivorshipConfig(
        (),
        (
            SurvivorshipRule("address", ("street", "city"), "most_complete", ("most_frequent",)),
            SurvivorshipRule("email", ("email",), "source_priority", ()),
        ),
    )
    admitted = [
        ("ua_crm", "1", "UA", T(2026, 1, 1), None, None, None, None, "Lviv", None, None, u, "consent", "e1"),
        ("ua_crm", "2", "UA", T(2026, 1, 1), None, None, None, None, "Odesa", None, None, u, "consent", "e2"),
        ("ua_crm", "3", "UA", T(2026, 1, 1), None, None, None, None, "Kharkiv", None, None, u, "consent", "e3"),
        ("ua_crm", "4", "UA", T(2026, 1, 1), None, None, "b@x", "Str 1", None, None, None, u, "consent", "e4"),
        ("ro_shop", "5", "RO", T(2026, 1, 1), None, None, "a@x", "Str 1", None, None, None, u, "consent", "e5"),
    ]  # fmt: skip
    effective = [(s, i, u, "consent", "granted", True, e, T(2026, 1, 1), None) for s, i, *_, e in admitted]
    gold = one_profile_gold(spark, admitted, effective, rules, cfg.policy)
    profiles = gold.profiles.select("profile_id", "street", "city", "email")
    expected = spark.createDataFrame([("P", "Str 1", None, "a@x")], profiles.schema)
    assert_df_equality(profiles, expected, ignore_nullable=True)


def test_the_survivor_is_the_best_record_that_may_supply_the_value_to_its_profile(spark, cfg):
    """The newest marketing email is held under analytics alone, which the profile may not use (another record
    withdrew it): the older one, held under marketing_email consent, survives instead of the profile losing it."""
    u, m, a = UNIFICATION, "marketing_email", "analytics"
    policy = dataclasses.replace(
        cfg.policy, attribute_purposes={**cfg.policy.attribute_purposes, "marketing_email": (m, a)}
    )
    rules = SurvivorshipConfig((), (SurvivorshipRule("marketing_email", ("marketing_email",), "most_recent", ()),))
    admitted = [
        ("ua_crm", "A", "UA", T(2026, 5, 1), None, None, None, None, None, None, "new@x", f"{a},{u}", "consent", "eA"),
        ("ro_shop", "B", "RO", T(2026, 1, 1), None, None, None, None, None, None, "old@x", f"{m},{u}", "consent", "eB"),
        ("eu_loyalty", "C", "EU", T(2026, 1, 1), None, None, None, None, None, None, None, u, "consent", "eC"),
    ]  # fmt: skip
    effective = [
        ("ua_crm", "A", u, "consent", "granted", True, "eA", T(2026, 1, 1), None),
        ("ua_crm", "A", a, "consent", "granted", True, "eA2", T(2026, 1, 1), None),
        ("ro_shop", "B", u, "consent", "granted", True, "eB", T(2026, 1, 1), None),
        ("ro_shop", "B", m, "consent", "granted", True, "eB2", T(2026, 1, 1), None),
        ("eu_loyalty", "C", u, "consent", "granted", True, "eC", T(2026, 1, 1), None),
        ("eu_loyalty", "C", a, "consent", "withdrawn", False, "eC2", T(2026, 3, 1), None),
    ]
    gold = one_profile_gold(spark, admitted, effective, rules, policy)
    lineage = gold.profile_lineage.select(
        "profile_id", "column", "record_id", "purpose", "lawful_basis", "consent_event_id"
    )
    expected = spark.createDataFrame([("P", "marketing_email", "ro_shop:B", m, "consent", "eB2")], lineage.schema)
    assert_df_equality(lineage, expected, ignore_nullable=True)
    profiles = gold.profiles.select("profile_id", "marketing_email")
    assert_df_equality(profiles, spark.createDataFrame([("P", "old@x")], profiles.schema), ignore_nullable=True)


def test_permissions_follow_the_latest_decision_across_the_profiles_records(spark, cfg):
    permissions = hand_gold(spark, cfg.policy).profile_permissions.select(
        "profile_id", "purpose", "allowed", "status", "lawful_basis", "deciding_source_record_id", "deciding_event_id"
    )
    expected = spark.createDataFrame(
        [
            ("P1", UNIFICATION, True, "granted", "consent", "3", "e-c1"),
            ("P1", "marketing_email", False, "withdrawn", "consent", "3", "e-c2"),
            ("P1", "marketing_sms", False, "none_recorded", None, None, None),
            ("P1", "analytics", False, "none_recorded", None, None, None),
            ("P2", UNIFICATION, True, "granted", "contract", "4", "e-d1"),
            ("P2", "marketing_email", True, "granted", "consent", "4", "e-d2"),
            # granted, but on a basis the policy does not accept for SMS marketing
            ("P2", "marketing_sms", False, "granted", "contract", "4", "e-d3"),
            ("P2", "analytics", False, "none_recorded", None, None, None),
        ],
        "profile_id string, purpose string, allowed boolean, status string, lawful_basis string, "
        "deciding_source_record_id string, deciding_event_id string",
    )
    assert_df_equality(permissions, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_withdrawal_beats_a_grant_at_the_same_time_and_a_lapsed_grant_decides_nothing_across_records(spark, cfg):
    # P3: record 5 granted marketing email and record 6 withdrew it at the same instant; the grant's event id
    # sorts first, so only the status decides the tie. P4: record 7's newer marketing grant has lapsed, record 8's
    # older one is still in force.
    contributors = spark.createDataFrame(
        [("P3", "ua_crm", "5"), ("P3", "ro_shop", "6"), ("P4", "ua_crm", "7"), ("P4", "eu_loyalty", "8")],
        "profile_id string, source_system string, source_record_id string",
    )
    effective = effective_frame(
        spark,
        [
            ("ua_crm", "5", UNIFICATION, "consent", "granted", True, "e-u5", T(2026, 1, 1), None),
            ("ua_crm", "5", "marketing_email", "consent", "granted", True, "e-m5", T(2026, 3, 1), None),
            ("ro_shop", "6", UNIFICATION, "contract", "granted", True, "e-u6", T(2026, 1, 2), None),
            ("ro_shop", "6", "marketing_email", "consent", "withdrawn", False, "e-m6", T(2026, 3, 1), None),
            ("ua_crm", "7", UNIFICATION, "consent", "granted", True, "e-u7", T(2026, 1, 1), None),
            ("ua_crm", "7", "marketing_email", "consent", "expired", False, "e-m7", T(2026, 4, 1), T(2026, 5, 1)),
            ("eu_loyalty", "8", UNIFICATION, "consent", "granted", True, "e-u8", T(2026, 1, 3), None),
            ("eu_loyalty", "8", "marketing_email", "consent", "granted", True, "e-m8", T(2026, 1, 1), None),
        ],
    )
    permissions = unify.profile_permissions(contributors, effective, cfg.policy).select(
        "profile_id", "purpose", "allowed", "status", "lawful_basis", "deciding_source_record_id", "deciding_event_id"
    )
    expected = spark.createDataFrame(
        [
            ("P3", UNIFICATION, True, "granted", "contract", "6", "e-u6"),
            ("P3", "marketing_email", False, "withdrawn", "consent", "6", "e-m6"),
            ("P3", "marketing_sms", False, "none_recorded", None, None, None),
            ("P3", "analytics", False, "none_recorded", None, None, None),
            ("P4", UNIFICATION, True, "granted", "consent", "8", "e-u8"),
            ("P4", "marketing_email", True, "granted", "consent", "8", "e-m8"),
            ("P4", "marketing_sms", False, "none_recorded", None, None, None),
            ("P4", "analytics", False, "none_recorded", None, None, None),
        ],
        permissions.schema,
    )
    assert_df_equality(permissions, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_tie_across_a_profiles_records_follows_the_effective_consent_rule_the_later_recorded_decides(spark, cfg):
    """Two records grant SMS marketing at the same instant: record 1 on a contract (which the policy does not
    accept for it), record 2 on consent, recorded a day later. Within one record the later recorded decides;
    across the profile's records so does it, not the event id that sorts first."""
    u, sms = UNIFICATION, "marketing_sms"
    t0, t1 = T(2026, 1, 1, tzinfo=dt.UTC), T(2026, 3, 1, tzinfo=dt.UTC)
    events = [
        ("ua_crm", "1", "a-u", u, "consent", "granted", t0, t0, "web", "v1", None),
        ("ro_shop", "2", "b-u", u, "consent", "granted", t0, t0, "web", "v1", None),
        ("ua_crm", "1", "a-sms", sms, "contract", "granted", t1, T(2026, 3, 1, 8, tzinfo=dt.UTC), "web", "v1", None),
        ("ro_shop", "2", "b-sms", sms, "consent", "granted", t1, T(2026, 3, 2, 8, tzinfo=dt.UTC), "web", "v1", None),
    ]
    schema = ledger(spark, []).schema
    cutoff = T(2026, 11, 1, tzinfo=dt.UTC)
    one_record = [("ua_crm", "1", *e[2:]) for e in events]
    within = consent.effective_consent(spark.createDataFrame(one_record, schema), cutoff).where(F.col("purpose") == sms)
    assert [r["deciding_event_id"] for r in within.collect()] == ["b-sms"]
    contributors = spark.createDataFrame(
        [("P", "ua_crm", "1"), ("P", "ro_shop", "2")],
        "profile_id string, source_system string, source_record_id string",
    )
    effective = consent.effective_consent(spark.createDataFrame(events, schema), cutoff)
    permissions = unify.profile_permissions(contributors, effective, cfg.policy).where(F.col("purpose") == sms)
    actual = permissions.select(
        "profile_id", "allowed", "lawful_basis", "deciding_source_record_id", "deciding_event_id"
    )
    expected = spark.createDataFrame([("P", True, "consent", "2", "b-sms")], actual.schema)
    assert_df_equality(actual, expected, ignore_nullable=True)


def test_profile_sources_carry_the_match_evidence(spark, cfg):
    sources = hand_gold(spark, cfg.policy).profile_sources.select(
        "profile_id", "record_id", "best_match_record_id", "best_match_probability"
    )
    expected = spark.createDataFrame(
        [
            ("P1", "ua_crm:1", "ro_shop:2", 0.9998),
            ("P1", "ro_shop:2", "ua_crm:1", 0.9998),
            ("P1", "eu_loyalty:3", "ua_crm:1", 0.996),
            ("P2", "ua_crm:4", None, None),
        ],
        "profile_id string, record_id string, best_match_record_id string, best_match_probability double",
    )
    assert_df_equality(sources, expected, ignore_row_order=True, ignore_nullable=True)


def test_a_records_best_match_is_one_of_its_own_profiles_records(spark):
    """Taken across profiles, a record in two profiles named the other profile's record as its match in both."""
    contributors = spark.createDataFrame(
        [
            ("PA", "ua_crm:1", "ua_crm", "1"),
            ("PA", "ro_shop:2", "ro_shop", "2"),
            ("PB", "ua_crm:1", "ua_crm", "1"),
            ("PB", "eu_loyalty:3", "eu_loyalty", "3"),
        ],
        "profile_id string, record_id string, source_system string, source_record_id string",
    ).select(
        "*", *[F.lit(None).cast("string").alias(c) for c in ("region", "unification_basis", "unification_event_id")]
    )
    pairs = spark.createDataFrame(
        [("ua_crm:1", "ro_shop:2", 5.0, 0.90), ("ua_crm:1", "eu_loyalty:3", 9.0, 0.99)],
        "record_id_l string, record_id_r string, match_weight double, match_probability double",
    )
    sources = unify.profile_sources(contributors, pairs).select("profile_id", "record_id", "best_match_record_id")
    expected = spark.createDataFrame(
        [
            ("PA", "ua_crm:1", "ro_shop:2"),
            ("PA", "ro_shop:2", "ua_crm:1"),
            ("PB", "ua_crm:1", "eu_loyalty:3"),
            ("PB", "eu_loyalty:3", "ua_crm:1"),
        ],
        sources.schema,
    )
    assert_df_equality(sources, expected, ignore_row_order=True, ignore_nullable=True)


def unlineaged_cells(spark, cfg) -> int:
    """Non-null profile cells that no lineage row explains."""
    profiles = delta_io.read_delta(spark, cfg.tables.profiles)
    columns = cfg.survivorship.columns
    cells = profiles.select(
        "profile_id",
        F.explode(F.array(*[F.struct(F.lit(c).alias("column"), F.col(c).isNotNull().alias("set")) for c in columns])),
    ).where("col.set")
    lineage = delta_io.read_delta(spark, cfg.tables.profile_lineage)
    return cells.select("profile_id", "col.column").join(lineage, ["profile_id", "column"], "left_anti").count()


def ledger(spark, rows: list[tuple[str, str, str, str, str]]):
    """Consent events (source, record id, purpose, status, time) as the ledger holds them."""
    return spark.createDataFrame(
        [
            (s, r, f"ev-{s}-{r}-{p}-{st}", p, "consent", st, T.fromisoformat(at), None, "web", "v1", None)
            for s, r, p, st, at in rows
        ],
        "source_system string, source_record_id string, event_id string, purpose string, lawful_basis string, "
        "status string, event_time timestamp, recorded_at timestamp, collection_method string, "
        "notice_version string, expires_at timestamp",
    )


HAND = [*PEOPLE, *IRYNA, BRIDGE]
GRANTS = [(r["source_system"], r["source_record_id"], UNIFICATION, "granted", "2026-01-01T00:00:00") for r in HAND]
GOLD = ("profiles", "profile_sources", "profile_lineage", "profile_permissions")


def publish(spark, cfg, population, population_consent, events, run_id, hand=HAND, population_ledger=None):
    """Land the hand records (bronze, silver) among the demo population, gate them with their consent events
    (landed in the ledger after the population's ledger events, when given), then resolve, unify and publish
    (the gate's validation is tested in test_quality_gate)."""
    silver = population.unionByName(silver_rows(spark, cfg, hand))
    delta_io.merge_delta(
        bronze_rows(spark, hand),
        cfg.tables.bronze,
        keys=("source_system", "source_record_id"),
        run_id=run_id,
        job="test",
    )
    delta_io.merge_delta(
        silver,
        cfg.tables.silver,
        keys=("source_system", "source_record_id"),
        run_id=run_id,
        job="test",
        update_changed=True,
        delete_missing=True,
    )
    effective = population_consent.unionByName(
        consent.effective_consent(ledger(spark, events), T(2026, 11, 1, tzinfo=dt.UTC))
    )
    gated = consent.gate(silver, effective, cfg.policy)
    admitted = consent.admitted_records(gated, silver.columns, cfg.policy)
    delta_io.overwrite_delta(admitted, cfg.tables.admitted, run_id=run_id, job="test")
    delta_io.overwrite_delta(effective, cfg.tables.effective_consent, run_id=run_id, job="test")
    landed = ledger(spark, events)
    if population_ledger is not None:
        landed = population_ledger.select(*landed.columns).unionByName(landed)
    delta_io.overwrite_delta(landed, cfg.tables.consent_ledger, run_id=run_id, job="test")
    resolve.run(spark, cfg, run_id=run_id)
    unify.run(spark, cfg, run_id=run_id)
    return publication.publish(cfg, run_id=run_id)


def test_withdrawal_removes_values_and_splits_a_bridged_profile_and_reruns_change_nothing(spark, trained, tmp_path):
    population = delta_io.read_delta(spark, trained.tables.silver).select(*trained.policy.silver_columns)
    population_consent = delta_io.read_delta(spark, trained.tables.effective_consent)
    cfg = dataclasses.replace(trained.with_paths(lakehouse=tmp_path / "lake"), models=trained.models)
    iryna = [f"{r['source_system']}:{r['source_record_id']}" for r in [*IRYNA, BRIDGE]]

    first = publish(spark, cfg, population, population_consent, GRANTS, "run-1")
    assert first.inserted == first.profiles > 0
    sources = delta_io.read_delta(spark, cfg.tables.profile_sources)
    bridged = sources.where(F.col("record_id").isin(*iryna)).select("profile_id").distinct().collect()
    assert len(bridged) == 1
    assert unlineaged_cells(spark, cfg) == 0
    versions = {t: delta_io.table_version(getattr(cfg.tables, t)) for t in GOLD}
    snapshot = {t: delta_io.read_delta(spark, getattr(cfg.tables, t)).collect() for t in GOLD}

    unify.run(spark, cfg, run_id="run-1")
    again = publication.publish(cfg, run_id="run-1")
    assert again.skipped_tables == list(GOLD)
    assert {t: delta_io.table_version(getattr(cfg.tables, t)) for t in GOLD} == versions
    rerun = publish(spark, cfg, population, population_consent, GRANTS, "run-2")
    assert (rerun.inserted, rerun.updated, rerun.retired) == (0, 0, 0)
    assert {t: delta_io.table_version(getattr(cfg.tables, t)) for t in GOLD} == versions
    for t in GOLD:
        assert sorted(delta_io.read_delta(spark, getattr(cfg.tables, t)).collect()) == sorted(snapshot[t])

    withdrawal = ("ua_crm", "UA-9", UNIFICATION, "withdrawn", "2026-06-01T00:00:00")
    after = publish(spark, cfg, population, population_consent, [*GRANTS, withdrawal], "run-3")
    assert after.retired == 0 and after.inserted == 1  # one profile became two
    sources = delta_io.read_delta(spark, cfg.tables.profile_sources)
    assert sources.where("record_id = 'ua_crm:UA-9'").count() == 0
    split = sources.where(F.col("record_id").isin(*iryna)).select("record_id", "profile_id").collect()
    assert len({r["profile_id"] for r in split}) == 2
    lineage = delta_io.read_delta(spark, cfg.tables.profile_lineage)
    assert lineage.where("record_id = 'ua_crm:UA-9'").count() == 0
    assert unlineaged_cells(spark, cfg) == 0
    history = delta_io.history(cfg.tables.profiles)
    assert history[0]["run_id"] == "run-3"
    old = delta_io.read_delta(spark, cfg.tables.profiles, version=versions["profiles"])
    assert old.count() == first.profiles  # the earlier state stays in Delta history until retention
