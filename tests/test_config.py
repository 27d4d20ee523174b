from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.config import DEFAULT_CONF_DIR, ResolveConfig, load_config
from jobs.errors import ConfigError, IdresError
from tests.conftest import edited_conf


def test_the_project_config_loads():
    cfg = load_config()
    assert [s.name for s in cfg.sources] == ["ua_crm", "ro_shop", "eu_loyalty"]
    assert {s.format for s in cfg.sources} == {"csv", "jsonl", "parquet"}
    assert cfg.source("ua_crm").columns["source_record_id"] == "kod_kliienta"


def _broken_conf(tmp_path: Path) -> Path:
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    data = yaml.safe_load((conf / "sources.yaml").read_text(encoding="utf-8"))
    data["sources"][0]["format"] = "xml"
    data["sources"][1]["columns"]["shoe_size"] = "marime"
    del data["sources"][2]["date_format"]
    data["sources"][2]["default_country"] = "Germany"
    (conf / "sources.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    broken_spark = (
        "spark:\n  shuffle_partitions: -3\n  rows_per_shuffle_partition: true\n  small_input_rows: -1\n"
        "  conf:\n    spark.driver.extraJavaOptions: -Xss4m\n"
    )
    (conf / "pipeline.yaml").write_text(broken_spark, encoding="utf-8")
    launch = {"spark.driver.memory": 4, "driver.cores": "2", "spark.driver.extraJavaOptions": "-XX:+UseParallelGC"}
    (conf / "spark-submit.json").write_text(json.dumps(launch), encoding="utf-8")
    return conf


def test_every_problem_is_reported_at_once_naming_file_and_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(_broken_conf(tmp_path))
    assert sorted(err.value.problems) == sorted(
        [
            "sources.yaml: sources[0] (ua_crm).format: must be one of csv, jsonl, parquet, got 'xml'",
            "sources.yaml: sources[1] (ro_shop).columns.shoe_size: is not a known column (allowed: "
            "source_record_id, first_name, middle_name, last_name, date_of_birth, gender, email, phone, street, city, "
            "postcode, country, national_id, health_note, updated_at)",
            "sources.yaml: sources[2] (eu_loyalty).date_format: is required",
            "sources.yaml: sources[2] (eu_loyalty).default_country: must be an ISO 3166-1 alpha-2 code, got 'Germany'",
            "pipeline.yaml: spark.shuffle_partitions: must be a positive integer",
            "pipeline.yaml: spark.rows_per_shuffle_partition: must be a positive integer",
            "pipeline.yaml: spark.small_input_rows: must be a non-negative integer",
            "spark-submit.json: spark.driver.memory: must be a string, got int",
            "spark-submit.json: driver.cores: is not a Spark property (spark.*)",
            "spark-submit.json: spark.driver.extraJavaOptions: is set in pipeline.yaml spark.conf too; "
            "set it in one place",
        ]
    )
    assert isinstance(err.value, ValueError)


def test_a_misspelled_key_in_any_file_is_named_instead_of_ignored(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    files = ("pipeline.yaml", "sources.yaml", "policy.yaml", "splink.yaml", "survivorship.yaml")
    pipeline, sources, policy, splink, survivorship = (
        yaml.safe_load((conf / name).read_text(encoding="utf-8")) for name in files
    )
    pipeline["qualty"] = {}
    pipeline["paths"]["lakehose"] = "/mnt/x"
    pipeline["spark"]["mastr"] = "local[2]"
    sources["sources"][0].update({"schema-drift": "allow", "delimiter": ";;"})
    sources["sources"][1]["consent_feed"]["encodng"] = "UTF-8"
    sources["sources"][0]["consent_feed"].update({"format": "csv", "encoding": "cp1251", "delimiter": "||"})
    sources["sources"][2]["consent_feed"]["encoding"] = "latin2"  # a jsonl feed
    policy["sensitve"] = ["national_id"]
    policy["purposes"]["analytics"]["basis"] = []
    splink["training"].update(em_max_pair=5, seed="x")
    splink["thresholds"]["match"] = 0.5
    survivorship["attributes"]["email"]["tie_breaker"] = ["most_recent"]
    for name, data in zip(files, (pipeline, sources, policy, splink, survivorship), strict=True):
        (conf / name).write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert sorted(err.value.problems) == [
        "pipeline.yaml: paths.lakehose: is not a known key",
        "pipeline.yaml: qualty: is not a known key",
        "pipeline.yaml: spark.mastr: is not a known key",
        "policy.yaml: purposes.analytics.basis: is not a known key",
        "policy.yaml: sensitve: is not a known key",
        "sources.yaml: sources[0] (ua_crm).consent_feed.delimiter: must be one character other than a quote or line "
        "break, got '||'",
        "sources.yaml: sources[0] (ua_crm).delimiter: must be one character other than a quote or line break, got ';;'",
        "sources.yaml: sources[0] (ua_crm).schema-drift: is not a known key",
        "sources.yaml: sources[1] (ro_shop).consent_feed.encodng: is not a known key",
        "sources.yaml: sources[2] (eu_loyalty).consent_feed.encoding: must be UTF-8 for jsonl (RFC 8259), got 'latin2'",
        "splink.yaml: thresholds.match: is not a known key",
        "splink.yaml: training.em_max_pair: is not a known key",
        "splink.yaml: training.seed: must be a non-negative integer",
        "survivorship.yaml: attributes.email.tie_breaker: is not a known key",
    ]


def test_spark_submit_json_is_read_as_json_and_joins_the_session_conf(tmp_path):
    assert {k: v for k, v in load_config().spark.conf.items() if k.startswith("spark.driver.")} == {
        "spark.driver.maxResultSize": "0",
        "spark.driver.memory": "4g",
        "spark.driver.extraJavaOptions": "-XX:+UseParallelGC",
    }
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    (conf / "spark-submit.json").write_text("{\n  spark.driver.memory: 4g\n}\n", encoding="utf-8")  # YAML, not JSON
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert err.value.problems == [
        "spark-submit.json: line 2: invalid JSON (Expecting property name enclosed in double quotes)"
    ]


def test_the_resolve_engine_ships_as_auto_and_a_bad_one_is_named(tmp_path):
    assert load_config().resolve == ResolveConfig(engine="auto", duckdb_max_records=3_000_000)
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    pipeline = yaml.safe_load((conf / "pipeline.yaml").read_text(encoding="utf-8"))
    pipeline["resolve"] = {"engine": "pandas", "duckdb_max_records": "many", "engines": "spark"}
    (conf / "pipeline.yaml").write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert sorted(err.value.problems) == [
        "pipeline.yaml: resolve.duckdb_max_records: must be a non-negative integer",
        "pipeline.yaml: resolve.engine: must be one of spark, duckdb, auto, got 'pandas'",
        "pipeline.yaml: resolve.engines: is not a known key",
    ]
    pipeline["resolve"] = {"engine": "duckdb"}
    (conf / "pipeline.yaml").write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    assert load_config(conf).resolve == ResolveConfig(engine="duckdb", duckdb_max_records=3_000_000)


def test_a_missing_file_is_named(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert [p for p in err.value.problems if "<file>" in p] == [
        f"{name}: <file>: not found in {conf}"
        for name in (
            "pipeline.yaml",
            "spark-submit.json",
            "sources.yaml",
            "policy.yaml",
            "splink.yaml",
            "survivorship.yaml",
        )
    ]


def test_adding_a_region_is_a_config_change(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    data = yaml.safe_load((conf / "sources.yaml").read_text(encoding="utf-8"))
    data["sources"].append(
        {
            "name": "pl_store",
            "region": "PL",
            "system": "Polish store",
            "format": "csv",
            "path": "pl/clients.csv",
            "date_format": "yyyy-MM-dd",
            "timestamp_format": "yyyy-MM-dd HH:mm:ss",
            "default_country": "PL",
            "columns": {"source_record_id": "id", "last_name": "nazwisko", "first_name": "imie"},
        }
    )
    (conf / "sources.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    cfg = load_config(conf)
    assert cfg.source("pl_store").path == cfg.landing / "pl" / "clients.csv"


def test_a_source_time_zone_is_an_iana_name_for_timestamps_without_an_offset(tmp_path):
    cfg = load_config()
    assert [s.time_zone for s in cfg.sources] == ["Europe/Kyiv", "UTC", "UTC"]  # ro_shop: the default
    conf = edited_conf(
        tmp_path,
        "sources.yaml",
        (("sources", 0, "time_zone"), "Europe/Kiyv"),
        (("sources", 1, "time_zone"), "Europe/Bucharest"),  # ro_shop's format reads each value's offset
        (("sources", 2, "time_zone"), 2),
    )
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert sorted(err.value.problems) == [
        "sources.yaml: sources[0] (ua_crm).time_zone: is not an IANA time zone name (such as Europe/Kyiv), "
        "got 'Europe/Kiyv'",
        "sources.yaml: sources[1] (ro_shop).time_zone: applies only to timestamps without an offset; "
        "timestamp_format 'yyyy-MM-dd'T'HH:mm:ssXXX' reads each value's",
        "sources.yaml: sources[2] (eu_loyalty).time_zone: is not an IANA time zone name (such as Europe/Kyiv), got '2'",
    ]


def _policy_conf(tmp_path: Path, **changes: Any) -> Path:
    return edited_conf(tmp_path, "policy.yaml", *(((key,), value) for key, value in changes.items()))


def test_pseudonymizing_a_national_id_is_off_by_default_and_checked_when_on(tmp_path):
    policy = load_config().policy
    assert policy.pseudonymized == () and "national_id_hash" not in policy.silver_attributes
    with pytest.raises(ConfigError) as err:
        load_config(_policy_conf(tmp_path / "bad", pseudonymized_for_matching=["national_id", "health_note"]))
    assert sorted(err.value.problems) == [
        "policy.yaml: attributes.national_id_hash: is missing: every silver attribute needs its purposes",
        "policy.yaml: pseudonymized_for_matching.health_note: has no pseudonym (allowed: national_id)",
    ]
    attributes = yaml.safe_load((DEFAULT_CONF_DIR / "policy.yaml").read_text(encoding="utf-8"))["attributes"]
    attributes["national_id_hash"] = ["profile_unification"]
    on = load_config(_policy_conf(tmp_path / "on", pseudonymized_for_matching=["national_id"], attributes=attributes))
    assert on.policy.pseudonymized == ("national_id",) and "national_id_hash" in on.policy.silver_attributes
    # Held in silver for matching, the pseudonym is still no profile value for analysts to query.
    _policy_conf(tmp_path / "gold", pseudonymized_for_matching=["national_id"], attributes=attributes)
    survivorship = (("attributes", "national_id_hash"), {"strategy": "most_frequent"})
    with pytest.raises(ConfigError) as err:
        load_config(edited_conf(tmp_path / "gold", "survivorship.yaml", survivorship))
    assert err.value.problems == [
        "survivorship.yaml: attributes.national_id_hash.columns: 'national_id_hash' only helps matching (a key, code, "
        "flag or pseudonym): no profile value"
    ]
    with pytest.raises(
        ConfigError, match=r"pseudonymized_for_matching\.national_id: must also be listed under sensitive"
    ):
        load_config(
            _policy_conf(
                tmp_path / "raw",
                pseudonymized_for_matching=["national_id"],
                attributes=attributes,
                sensitive=["health_note"],
            )
        )


def test_quality_bounds_are_checked(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    (conf / "pipeline.yaml").write_text(
        "quality:\n  max_cluster_size: 0\n  max_profile_id_churn: 1.5\n  pandas_max_rows: -1\n  max_chaos: 3\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert sorted(err.value.problems) == [
        "pipeline.yaml: quality.max_chaos: is not a known key",
        "pipeline.yaml: quality.max_cluster_size: must be a positive integer",
        "pipeline.yaml: quality.max_profile_id_churn: must be a share between 0 and 1",
        "pipeline.yaml: quality.pandas_max_rows: must be a whole number of rows, 0 or more",
    ]
    assert load_config().quality.max_profile_id_churn == 0.05


def test_the_lakehouse_lock_timeout_is_checked(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    (conf / "pipeline.yaml").write_text("concurrency:\n  lock_timeout_seconds: -1\n  lock_path: x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert sorted(err.value.problems) == [
        "pipeline.yaml: concurrency.lock_path: is not a known key",
        "pipeline.yaml: concurrency.lock_timeout_seconds: must be a non-negative number of seconds",
    ]
    assert load_config().concurrency.lock_timeout_seconds == 600


def test_the_splink_training_sample_sizes_are_checked(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    splink = yaml.safe_load((conf / "splink.yaml").read_text(encoding="utf-8"))
    splink["training"].update(u_max_pairs=10, em_max_pairs=-1)
    (conf / "splink.yaml").write_text(yaml.safe_dump(splink), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert sorted(err.value.problems) == [
        "splink.yaml: training.em_max_pairs: must be a non-negative integer (0: every pair)",
        "splink.yaml: training.u_max_pairs: must be an integer of at least 1000",
    ]
    assert (load_config().linkage.u_max_pairs, load_config().linkage.em_max_pairs) == (1_000_000, 2_000_000)
    del splink["training"]["em_max_pairs"], splink["training"]["u_max_pairs"]
    (conf / "splink.yaml").write_text(yaml.safe_dump(splink), encoding="utf-8")
    assert (load_config(conf).linkage.u_max_pairs, load_config(conf).linkage.em_max_pairs) == (1_000_000, 0)
    splink["link_type"] = "link_and_dedupe"  # Splink would need a source_dataset column and a table per dataset
    (conf / "splink.yaml").write_text(yaml.safe_dump(splink), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert err.value.problems == [
        "splink.yaml: link_type: must be dedupe_only (all admitted records as one table), got 'link_and_dedupe'"
    ]


def test_sources_that_are_not_a_list_and_survivorship_of_columns_silver_does_not_hold_are_named(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    (conf / "sources.yaml").write_text("sources: 1\n", encoding="utf-8")
    survivorship = yaml.safe_load((conf / "survivorship.yaml").read_text(encoding="utf-8"))
    survivorship["attributes"]["national_id_hash"] = {"strategy": "most_recent"}  # pseudonyms are off by default
    (conf / "survivorship.yaml").write_text(yaml.safe_dump(survivorship, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    not_held = (
        "is not held in silver under policy.yaml (derived from a sensitive column, or a pseudonym that "
        "pseudonymized_for_matching does not enable)"
    )
    assert sorted(err.value.problems) == [
        "sources.yaml: sources: must be a non-empty list",
        f"survivorship.yaml: attributes.national_id_hash.columns: 'national_id_hash' {not_held}",
    ]


def test_sources_none_of_which_has_a_consent_feed_are_refused(tmp_path):
    """The consent gate admits a record on a lawful basis from its source's consent feed: with no feed at all,
    nothing could be admitted, and the gate had no ledger to read."""
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    sources = yaml.safe_load((conf / "sources.yaml").read_text(encoding="utf-8"))
    for source in sources["sources"]:
        del source["consent_feed"]
    (conf / "sources.yaml").write_text(yaml.safe_dump(sources, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert err.value.problems == [
        "sources.yaml: sources: no source has a consent_feed: no record could be admitted (each needs a lawful "
        "basis on record)"
    ]


def test_splink_comparisons_whose_args_do_not_fit_or_name_no_linkage_column_are_named(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    splink = yaml.safe_load((conf / "splink.yaml").read_text(encoding="utf-8"))
    splink["comparisons"] += [
        {"function": "ExactMatch", "args": {"col_name": "emial"}},
        {"function": "JaroWinklerAtThresholds", "args": {"col_name": "city", "score_thresholds": [0.9]}},
    ]
    splink["blocking_rules_to_generate_predictions"].append(["first_name_key", "surname"])
    (conf / "splink.yaml").write_text(yaml.safe_dump(splink, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    n, rules = len(splink["comparisons"]), len(splink["blocking_rules_to_generate_predictions"])
    assert sorted(err.value.problems) == [
        f"splink.yaml: blocking_rules_to_generate_predictions[{rules - 1}]: 'surname' is not a linkage column",
        f"splink.yaml: comparisons[{n - 2}].args.col_name: 'emial' is not a linkage column",
        f"splink.yaml: comparisons[{n - 1}].args: do not fit JaroWinklerAtThresholds: "
        "got an unexpected keyword argument 'score_thresholds'",
    ]


def test_splink_comparisons_splink_cannot_make_or_that_share_a_name_are_named(tmp_path):
    """Both loaded, and Splink rejected them in train, after ingest, standardize and the consent gate had run."""
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    splink = yaml.safe_load((conf / "splink.yaml").read_text(encoding="utf-8"))
    first_name = next(i for i, c in enumerate(splink["comparisons"]) if c.get("name") == "first_name")
    splink["comparisons"] += [
        {"function": "JaroWinklerAtThresholds", "args": {"col_name": "city", "score_threshold_or_thresholds": "x"}},
        {"function": "ExactMatch", "args": {"col_name": "first_name"}},
        {"name": "First name", "levels": [{"function": "ExactMatchLevel", "args": {"col_name": "email"}}] * 2},
        {"name": "halves", "levels": [{"function": "CustomLevel", "args": {"sql_condition": "city_l // 2 = 1"}}] * 2},
    ]
    (conf / "splink.yaml").write_text(yaml.safe_dump(splink, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    n = len(splink["comparisons"])
    problems = err.value.problems
    assert problems[:3] == [
        f"splink.yaml: comparisons[{n - 4}]: Splink cannot make it for duckdb: TypeError: 'distance_threshold' must "
        "be numeric, but received type <class 'str'>",
        f"splink.yaml: comparisons[{n - 3}]: compares as 'first_name', as comparisons[{first_name}] does; names must "
        "differ",
        f"splink.yaml: comparisons[{n - 2}]: compares as 'first_name', as comparisons[{first_name}] does; names must "
        "differ",
    ]
    assert len(problems) == 4 and problems[3].startswith(f"splink.yaml: comparisons[{n - 1}]: Splink cannot make it ")


@pytest.mark.parametrize(
    ("file", "key_path", "value", "problem"),
    [
        ("policy.yaml", ("sensitive",), [["email"], "health_note"], "sensitive[0]: must be a string"),
        ("policy.yaml", ("attributes", "email"), [["profile_unification"]], "attributes.email[0]: must be a string"),
        (
            "policy.yaml",
            ("pseudonymized_for_matching",),
            [["national_id"]],
            "pseudonymized_for_matching[0]: must be a string",
        ),
        (
            "policy.yaml",
            ("purposes", "analytics", "lawful_bases"),
            ["consent", {"basis": "contract"}],
            "purposes.analytics.lawful_bases[1]: must be a string",
        ),
        (
            "survivorship.yaml",
            ("attributes", "email", "columns"),
            [["email"]],
            "attributes.email.columns[0]: must be a string",
        ),
        (
            "survivorship.yaml",
            ("attributes", "email", "tie_breakers"),
            [["source_priority"]],
            "attributes.email.tie_breakers[0]: must be a string",
        ),
        (
            "survivorship.yaml",
            ("source_priority",),
            ["eu_loyalty", ["ro_shop"]],
            "source_priority[1]: must be a string",
        ),
    ],
)
def test_a_list_item_that_is_itself_a_list_or_mapping_is_named_instead_of_crashing(
    tmp_path, file, key_path, value, problem
):
    with pytest.raises(ConfigError) as err:
        load_config(edited_conf(tmp_path, file, (key_path, value)))
    assert err.value.problems == [f"{file}: {problem}"]


def test_a_source_name_holding_the_record_id_separator_is_named(tmp_path):
    """Source a's record b:1 and source a:b's record 1 would share the record id a:b:1."""
    conf = edited_conf(tmp_path, "sources.yaml", (("sources", 2, "name"), "eu:loyalty"))
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert "sources.yaml: sources[2] (eu:loyalty).name: must not contain ':': it ends the name in record ids" in (
        err.value.problems
    )


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        (
            "spark.sql.session.timeZone",
            "Europe/Kyiv",
            "must be UTC (event ids hash times formatted in it, and unzoned source times are UTC), got 'Europe/Kyiv'",
        ),
        (
            "spark.sql.variable.substitute",
            "true",
            "must be false (SQL quotes ids and run ids, in which ${...} is text), got 'true'",
        ),
        (
            "spark.master",
            "local[1]",
            "is not set here: the master is pipeline.yaml's spark.master (IDRES_SPARK_MASTER), or Airflow's --master",
        ),
    ],
)
@pytest.mark.parametrize("where", ["pipeline.yaml", "spark-submit.json"])
def test_a_spark_property_idres_fixes_is_named_in_either_file(tmp_path, where, name, value, problem):
    """Set in spark-submit.json, a session time zone other than UTC reached every job (ingest read unzoned source
    times in it, the consent gate hashed times formatted in it into event ids), and a master replaced Airflow's."""
    if where == "pipeline.yaml":
        conf = edited_conf(tmp_path, "pipeline.yaml", (("spark", "conf", name), value))
        key = f"pipeline.yaml: spark.conf.{name}"
    else:
        conf = edited_conf(tmp_path, "pipeline.yaml")
        launch = json.loads((conf / "spark-submit.json").read_text(encoding="utf-8"))
        (conf / "spark-submit.json").write_text(json.dumps({**launch, name: value}), encoding="utf-8")
        key = f"spark-submit.json: {name}"
    if name == "spark.sql.session.timeZone" and where == "spark-submit.json":  # pipeline.yaml sets UTC: drop it there
        pipeline = yaml.safe_load((conf / "pipeline.yaml").read_text(encoding="utf-8"))
        del pipeline["spark"]["conf"][name]
        (conf / "pipeline.yaml").write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert err.value.problems == [f"{key}: {problem}"]


def test_a_country_no_iso_list_holds_a_source_name_record_ids_cannot_carry_and_an_unset_variable_are_named(
    tmp_path, monkeypatch
):
    """UK passed as a code (GB's), and every national phone went null; ro.shop loaded, though the subject_requests
    DAG cannot name its records; ${VAR} unset became a folder named so, which the job read and wrote."""
    monkeypatch.delenv("IDRES_TEST_UNSET", raising=False)
    conf = edited_conf(
        tmp_path,
        "sources.yaml",
        (("sources", 0, "default_country"), "UK"),
        (("sources", 1, "name"), "ro.shop"),
        (("sources", 2, "path"), "${IDRES_TEST_UNSET}/eu/members.jsonl"),
    )
    pipeline = yaml.safe_load((conf / "pipeline.yaml").read_text(encoding="utf-8"))
    pipeline["paths"]["lakehouse"] = "$IDRES_TEST_UNSET/lakehouse"
    (conf / "pipeline.yaml").write_text(yaml.safe_dump(pipeline), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    for problem in (
        "sources.yaml: sources[0] (ua_crm).default_country: must be an ISO 3166-1 alpha-2 code, got 'UK'",
        "sources.yaml: sources[1] (ro.shop).name: must be letters, digits, '_' or '-' (record ids name it)",
        "sources.yaml: sources[2] (eu_loyalty).path: names environment variable(s) that are not set: IDRES_TEST_UNSET",
        "pipeline.yaml: paths.lakehouse: names environment variable(s) that are not set: IDRES_TEST_UNSET",
    ):
        assert problem in err.value.problems
    monkeypatch.setenv("IDRES_TEST_UNSET", str(tmp_path))
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert not [p for p in err.value.problems if "environment" in p]


def test_a_source_listed_twice_in_source_priority_is_named(tmp_path):
    """The later position would win silently, against the order the file shows first."""
    priority = ["eu_loyalty", "ro_shop", "eu_loyalty", "ua_crm"]
    with pytest.raises(ConfigError) as err:
        load_config(edited_conf(tmp_path, "survivorship.yaml", (("source_priority",), priority)))
    assert err.value.problems == [
        "survivorship.yaml: source_priority: 'eu_loyalty' is listed more than once: the order would be ambiguous"
    ]


@pytest.mark.parametrize("file", ["pipeline.yaml", "policy.yaml", "splink.yaml"])
def test_a_conf_file_that_is_not_utf8_is_named(tmp_path, file):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    text = (conf / file).read_text(encoding="utf-8")
    last_line = text.count("\n") + 1
    (conf / file).write_bytes(text.encode("utf-8") + "# café\n".encode("cp1252"))  # as a Windows editor saves it
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert [p for p in err.value.problems if p.startswith(f"{file}: line ")] == [
        f"{file}: line {last_line}: not UTF-8 (save the file as UTF-8)"
    ]


def test_a_conf_file_that_cannot_be_read_is_named_with_the_other_problems(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    (conf / "policy.yaml").unlink()
    (conf / "policy.yaml").symlink_to("/proc/self/mem")  # a regular file every read of which fails (EIO), even as root
    (conf / "splink.yaml").unlink()
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert "policy.yaml: <file>: cannot be read (Input/output error)" in err.value.problems
    assert any(p.startswith("splink.yaml: <file>: not found") for p in err.value.problems)


def test_splink_configure_options_and_a_unique_id_other_than_record_id_are_named(tmp_path):
    splink = yaml.safe_load((DEFAULT_CONF_DIR / "splink.yaml").read_text(encoding="utf-8"))
    phone = next(i for i, c in enumerate(splink["comparisons"]) if c.get("args", {}).get("col_name") == "phone")
    conf = edited_conf(
        tmp_path,
        "splink.yaml",
        (("unique_id_column",), "customer_id"),
        (("comparisons", phone, "configure"), {"term_frequency_adjustment": True}),
        (("comparisons", 0, "levels", 1, "configure"), {"m_probabilities": [0.9]}),
        (("comparisons", phone, "args"), {"col_name": "phone", 1: "x"}),
    )
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert sorted(err.value.problems) == [
        "splink.yaml: comparisons[0].levels[1].configure: do not fit ExactMatchLevel.configure: "
        "got an unexpected keyword argument 'm_probabilities'",
        f"splink.yaml: comparisons[{phone}].args: do not fit ExactMatch: keywords must be strings",
        f"splink.yaml: comparisons[{phone}].configure: do not fit ExactMatch.configure: "
        "got an unexpected keyword argument 'term_frequency_adjustment'",
        "splink.yaml: unique_id_column: must be record_id: the pipeline keys records as record_id (resolve, "
        "profile ids, expectations)",
    ]


def test_a_key_repeated_in_a_mapping_is_named_instead_of_the_last_one_silently_winning(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    policy = (conf / "policy.yaml").read_text(encoding="utf-8")
    held = "  gender: [profile_unification]\n"
    assert held in policy
    (conf / "policy.yaml").write_text(policy.replace(held, held + "  gender: [marketing_email]\n"), encoding="utf-8")
    line = policy[: policy.index(held)].count("\n") + 2
    (conf / "spark-submit.json").write_text(
        '{"spark.driver.memory": "4g", "spark.driver.memory": "1g", "spark.eventLog.enabled": "false"}',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert sorted(err.value.problems) == [
        f"policy.yaml: line {line}: key 'gender' is repeated (only one may be given)",
        "spark-submit.json: <file>: key 'spark.driver.memory' is repeated (only one may be given)",
    ]


def test_a_profile_column_survivorship_forgets_is_named_unless_it_is_left_out_of_gold_on_purpose(tmp_path):
    """Forgotten, it was dropped from gold without a word."""
    survivorship = yaml.safe_load((DEFAULT_CONF_DIR / "survivorship.yaml").read_text(encoding="utf-8"))
    del survivorship["attributes"]["gender"]
    survivorship["attributes"]["address"]["columns"].remove("postcode")
    conf = edited_conf(tmp_path / "forgot", "survivorship.yaml", (("attributes",), survivorship["attributes"]))
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert err.value.problems == [
        f"survivorship.yaml: attributes: silver column '{c}' is in no attribute: give it one, or list it in "
        "left_out_of_gold"
        for c in ("gender", "postcode")
    ]
    attributes = (("attributes",), survivorship["attributes"])
    conf = edited_conf(
        tmp_path / "on_purpose", "survivorship.yaml", attributes, (("left_out_of_gold",), ["gender", "postcode"])
    )
    assert not {"gender", "postcode"} & set(load_config(conf).survivorship.columns)
    conf = edited_conf(
        tmp_path / "wrong", "survivorship.yaml", attributes, (("left_out_of_gold",), ["city", "last_name_key"])
    )
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert err.value.problems == [
        "survivorship.yaml: left_out_of_gold: 'city' is supplied by attribute 'address'",
        "survivorship.yaml: left_out_of_gold: 'last_name_key' is not a silver column that could be a profile value",
        *(
            f"survivorship.yaml: attributes: silver column '{c}' is in no attribute: give it one, or list it in "
            "left_out_of_gold"
            for c in ("gender", "postcode")
        ),
    ]


def test_survivorship_with_no_attributes_names_every_profile_column_silver_holds(tmp_path):
    """`attributes: {}` loaded, and gold held no values at all."""
    conf = edited_conf(tmp_path / "conf", "survivorship.yaml", (("attributes",), {}))
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    held_by_the_default_policy = (
        "city country date_of_birth email first_name first_name_native gender last_name last_name_native "
        "marketing_email marketing_phone middle_name middle_name_native phone postcode street"
    )
    assert err.value.problems == [
        f"survivorship.yaml: attributes: silver column '{c}' is in no attribute: give it one, or list it in "
        "left_out_of_gold"
        for c in held_by_the_default_policy.split()
    ]


def test_an_em_training_rule_on_a_column_the_policy_keeps_out_of_silver_is_named(tmp_path):
    policy = yaml.safe_load((DEFAULT_CONF_DIR / "policy.yaml").read_text(encoding="utf-8"))
    conf = edited_conf(tmp_path, "policy.yaml", (("sensitive",), [*policy["sensitive"], "date_of_birth"]))
    survivorship = yaml.safe_load((conf / "survivorship.yaml").read_text(encoding="utf-8"))
    del survivorship["attributes"]["date_of_birth"]
    (conf / "survivorship.yaml").write_text(yaml.safe_dump(survivorship, allow_unicode=True), encoding="utf-8")
    splink = yaml.safe_load((conf / "splink.yaml").read_text(encoding="utf-8"))
    dob = splink["training"]["em_blocking_rules"].index(["date_of_birth"])
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert err.value.problems == [
        f"splink.yaml: training.em_blocking_rules[{dob}]: 'date_of_birth' is not held in silver under policy.yaml "
        "(a sensitive column, or a pseudonym pseudonymized_for_matching does not enable): EM would find no pair to "
        "train on"
    ]


@pytest.mark.parametrize("error", ["ENOSYS", "ENOLCK"])  # a FUSE or SMB mount; NFS without its lock service
def test_a_lakehouse_on_a_file_system_without_flock_fails_instead_of_taking_a_marker_lock(cfg, monkeypatch, error):
    import errno
    import fcntl

    from jobs.errors import LakehouseLockUnsupportedError
    from jobs.runner import lakehouse_lock, lakehouse_lock_path

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(getattr(errno, error), error)

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(LakehouseLockUnsupportedError, match="does not support flock"), lakehouse_lock(cfg, "ingest"):
        pass
    marker_left = [p.name for p in lakehouse_lock_path(cfg).parent.iterdir() if p.name != "_idres.lock"]
    assert marker_left == []


def test_the_block_size_limit_ships_and_a_limit_that_pairs_nothing_is_named(tmp_path):
    assert load_config().linkage.max_block_records == 10_000
    for value in (1, -5, "many", True):
        with pytest.raises(ConfigError) as err:
            load_config(edited_conf(tmp_path / str(value), "splink.yaml", (("thresholds", "max_block_records"), value)))
        assert err.value.problems == [
            "splink.yaml: thresholds.max_block_records: must be 0 (no limit) or an integer of at least 2"
        ], value
    unlimited = edited_conf(tmp_path / "zero", "splink.yaml", (("thresholds", "max_block_records"), 0))
    assert load_config(unlimited).linkage.max_block_records == 0


def test_values_a_job_would_misread_are_named_not_silently_replaced(tmp_path):
    """An empty path or master, a conf value left empty, a feed without a path, a misspelt comparison key: each
    loaded as something else (the project root as lakehouse, the master 'None', a source without consent)."""
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    files = ("pipeline.yaml", "sources.yaml", "splink.yaml")
    pipeline, sources, splink = (yaml.safe_load((conf / name).read_text(encoding="utf-8")) for name in files)
    pipeline["paths"].update(lakehouse="", models=None)
    pipeline["spark"]["master"] = None
    pipeline["spark"]["conf"].update({"spark.sql.session.timeZone": None, "sql.ansi.enabled": "true"})
    pipeline["quality"] = []
    pipeline["concurrency"] = {"lock_timeout_seconds": float("nan")}
    sources["sources"][0]["consent_feed"]["path"] = ""
    sources["sources"][1]["name"] = " "
    sources["sources"][0]["delimiter"] = '"'
    sources["sources"][2]["default_country"] = False  # NO (Norway) unquoted
    splink["blocking_rules_to_generate_predictions"].append([""])
    phone = next(c for c in splink["comparisons"] if c.get("args", {}).get("col_name") == "phone")
    phone["configur"] = phone.pop("configure")
    splink["comparisons"][0]["levels"][1]["term_frequency_adjustments"] = True
    for name, data in zip(files, (pipeline, sources, splink), strict=True):
        (conf / name).write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    phone_at = splink["comparisons"].index(phone)
    empty_rule_at = len(splink["blocking_rules_to_generate_predictions"]) - 1
    assert sorted(err.value.problems) == sorted(
        [
            "pipeline.yaml: paths.lakehouse: must be a folder path, got ''",
            "pipeline.yaml: paths.models: must be a folder path, got None",
            "pipeline.yaml: spark.master: must be a Spark master URL (local[*]), got None",
            "pipeline.yaml: spark.conf.spark.sql.session.timeZone: must be a value, got None",
            "pipeline.yaml: spark.conf.sql.ansi.enabled: is not a Spark property (spark.*)",
            "pipeline.yaml: quality: must be a mapping, got list",
            "pipeline.yaml: concurrency.lock_timeout_seconds: must be a non-negative number of seconds",
            "sources.yaml: sources[0] (ua_crm).consent_feed.path: must not be empty",
            "sources.yaml: sources[1].name: must not be empty",
            "survivorship.yaml: source_priority: 'ro_shop' is not a source in sources.yaml",  # its name is blank now
            f"splink.yaml: comparisons[{phone_at}].configur: is not a known key",
            "sources.yaml: sources[0] (ua_crm).delimiter: must be one character other than a quote or line break, "
            "got '\"'",
            "sources.yaml: sources[2] (eu_loyalty).default_country: must be a str, got bool (quote it: YAML reads "
            "yes, no, on, off, true and false unquoted as booleans)",
            f"splink.yaml: blocking_rules_to_generate_predictions[{empty_rule_at}]: must be a list of column names or "
            "a SQL string",
            "splink.yaml: comparisons[0].levels[1].term_frequency_adjustments: is not a known key",
        ]
    )


def test_a_section_left_empty_takes_its_defaults_and_one_that_is_not_a_mapping_is_named(tmp_path):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    (conf / "pipeline.yaml").write_text("paths:\nspark: ''\nquality:\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert err.value.problems == ["pipeline.yaml: spark: must be a mapping, got str"]
    (conf / "pipeline.yaml").write_text("paths:\nquality:\n", encoding="utf-8")
    assert load_config(conf).lakehouse == conf.parent / "lakehouse"


def test_moving_the_landing_zone_moves_each_source_under_it_and_names_one_outside_it(tmp_path):
    cfg = load_config()
    assert cfg.with_paths(lakehouse=tmp_path).sources == cfg.sources
    moved = cfg.with_paths(landing=tmp_path / "landing")
    assert moved.source("ua_crm").path == tmp_path / "landing" / cfg.source("ua_crm").path.relative_to(cfg.landing)
    outside = dataclasses.replace(cfg, sources=(dataclasses.replace(cfg.sources[0], path=Path("/srv/ua.csv")),))
    assert outside.with_paths(lakehouse=tmp_path).sources == outside.sources  # the landing zone stays
    with pytest.raises(IdresError, match="source ua_crm: its path is outside the landing zone"):
        outside.with_paths(landing=tmp_path / "landing")


def test_columns_named_in_splink_sql_rules_and_level_conditions_are_checked_like_column_lists(tmp_path):
    """Written as SQL, a rule or level on a column Splink is not given (middle_name), or an EM rule on one the
    policy keeps out of silver (the national id's pseudonym, not enabled), loaded cleanly and failed every train."""
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    splink = yaml.safe_load((conf / "splink.yaml").read_text(encoding="utf-8"))
    middle = {"function": "CustomLevel", "args": {"sql_condition": "middle_name_l = middle_name_r"}}
    splink["comparisons"].append({"name": "middle", "levels": [middle, {"function": "ElseLevel"}]})
    splink["blocking_rules_to_generate_predictions"].append("l.middle_name = r.middle_name AND l.city = r.city")
    splink["training"]["em_blocking_rules"].append("l.national_id_hash = r.national_id_hash")
    (conf / "splink.yaml").write_text(yaml.safe_dump(splink, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    n, rules = len(splink["comparisons"]), len(splink["blocking_rules_to_generate_predictions"])
    em = len(splink["training"]["em_blocking_rules"])
    assert sorted(err.value.problems) == [
        f"splink.yaml: blocking_rules_to_generate_predictions[{rules - 1}]: 'middle_name' is not a linkage column",
        f"splink.yaml: comparisons[{n - 1}].levels[0].args.sql_condition: 'middle_name' is not a linkage column",
        f"splink.yaml: training.em_blocking_rules[{em - 1}]: 'national_id_hash' is not held in silver under "
        "policy.yaml (a sensitive column, or a pseudonym pseudonymized_for_matching does not enable): EM would find "
        "no pair to train on",
    ]


def test_a_policy_without_its_version_is_still_checked_against_survivorship_and_em_rules(tmp_path):
    sensitive = yaml.safe_load((DEFAULT_CONF_DIR / "policy.yaml").read_text(encoding="utf-8"))["sensitive"]
    conf = edited_conf(tmp_path, "policy.yaml", (("sensitive",), [*sensitive, "date_of_birth"]))
    policy = yaml.safe_load((conf / "policy.yaml").read_text(encoding="utf-8"))
    del policy["version"]
    (conf / "policy.yaml").write_text(yaml.safe_dump(policy, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(conf)
    assert err.value.problems == [
        "policy.yaml: version: is required",
        "survivorship.yaml: attributes.date_of_birth.columns: 'date_of_birth' is not held in silver under policy.yaml "
        "(derived from a sensitive column, or a pseudonym that pseudonymized_for_matching does not enable)",
        "splink.yaml: training.em_blocking_rules[1]: 'date_of_birth' is not held in silver under policy.yaml (a "
        "sensitive column, or a pseudonym pseudonymized_for_matching does not enable): EM would find no pair to "
        "train on",
    ]


def test_the_spark_master_comes_from_idres_spark_master_also_when_pipeline_yaml_sets_no_spark(tmp_path, monkeypatch):
    conf = tmp_path / "conf"
    shutil.copytree(DEFAULT_CONF_DIR, conf)
    (conf / "pipeline.yaml").write_text("paths:\n", encoding="utf-8")
    monkeypatch.setenv("IDRES_SPARK_MASTER", "spark://127.0.0.1:7077")
    assert load_config(conf).spark.master == "spark://127.0.0.1:7077"


def test_a_config_folder_that_is_not_there_is_one_problem_naming_it(tmp_path):
    """It was 35 problems, one per file and key the folder would hold, the folder itself named in none."""
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "no-conf")
    assert raised.value.problems == [f"{tmp_path / 'no-conf'}: no such config folder (--conf, IDRES_CONF)"]
