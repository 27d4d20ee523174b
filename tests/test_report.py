"""The auditor report: a real lakehouse from the demo pipeline, the page rendered by headless Chromium."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections import Counter
from html.parser import HTMLParser

import pyarrow as pa
import pytest
from chispa import assert_df_equality
from deltalake import write_deltalake
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from jobs import delta_io, publication
from jobs import run_queries as q
from jobs.errors import IdresError
from jobs.report import write_auditor_report
from tests.conftest import copy_lakehouse

RUN = "demo"  # the run id the session's `trained` fixture ingested and gated with
SECTIONS = (
    "run-summary",
    "counts",
    "exclusions",
    "consent-coverage",
    "profile-changes",
    "match-distribution",
    "model",
    "quality",
)
FAILED = "profiles: expect_column_values_to_be_in_set(consent_compliant)"
QUALITY = {
    "run_id": RUN,
    "success": False,
    "published": False,
    "data_docs": "data_docs/index.html",
    "failed": [FAILED],
    "suites": [
        {
            "suite": "profiles",
            "table": "gold/profiles",
            "success": False,
            "expectations": [
                {
                    "expectation": "expect_column_values_to_be_in_set",
                    "column": "consent_compliant",
                    "description": "every profile value has a permitting lawful basis",
                    "success": False,
                    "element_count": 120,
                    "unexpected_count": 1,
                },
                {
                    "expectation": "expect_column_values_to_not_be_null",
                    "column": "profile_id",
                    "description": "every profile has an id",
                    "success": True,
                    "element_count": 120,
                    "unexpected_count": 0,
                },
            ],
        }
    ],
}


class RenderedPage(HTMLParser):
    """What a test needs from a DOM: element ids, tag counts, text, and the cells of every table with an id."""

    def __init__(self, dom: str) -> None:
        super().__init__()
        self.ids: dict[str, str] = {}
        self.tags: Counter[str] = Counter()
        self.tables: dict[str, list[list[str]]] = {}
        self.text: list[str] = []
        self.links: list[str] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.feed(dom)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.tags[tag] += 1
        if attributes.get("id"):
            self.ids[attributes["id"]] = tag
        if tag == "a" and attributes.get("href"):
            self.links.append(attributes["href"])
        if tag == "table" and attributes.get("id"):
            self._table = attributes["id"]
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
            self.tables[self._table].append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def rendered_dom(url: str) -> str:
    """The page's DOM after Chromium has loaded and laid it out."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run `make test`, which installs it"
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=90,
        check=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def published(spark, staged_demo, tmp_path_factory):
    """A copy of the staged demo lakehouse with its gold published by RUN."""
    cfg = copy_lakehouse(staged_demo, tmp_path_factory.mktemp("report"))
    publication.publish(cfg, run_id=RUN)
    return cfg


def test_the_auditor_report_shows_every_section_with_independent_counts_and_no_personal_data(spark, published):
    cfg = published
    run_dir = cfg.run_report_dir(RUN)
    run_dir.mkdir(parents=True)
    (run_dir / "quality.json").write_text(json.dumps(QUALITY), encoding="utf-8")
    (run_dir / "data_docs").mkdir()
    (run_dir / "data_docs" / "index.html").write_text("<html></html>", encoding="utf-8")
    (run_dir / "model").mkdir()
    (run_dir / "model" / "calibration.html").write_text("<html></html>", encoding="utf-8")  # an earlier model's

    path = write_auditor_report(cfg, RUN, run_dir)

    assert path == run_dir / "index.html"
    dom = rendered_dom(path.as_uri())
    page = RenderedPage(dom)
    text = " ".join(" ".join(page.text).split())
    assert {s: page.ids.get(s) for s in SECTIONS} == {s: "h2" for s in SECTIONS}

    assert "FAILED, not published" in text
    assert FAILED in text
    suite = {row[0]: row[-1] for row in page.tables["suite-profiles"][1:]}
    assert suite == {"expect_column_values_to_be_in_set": "FAIL", "expect_column_values_to_not_be_null": "pass"}

    for chart in ("consent-coverage", "profile-changes", "match-probability", "cluster-size"):
        assert page.ids.get(f"chart-{chart}") == "svg", chart
    assert "records per profile" in text  # chart text stays text
    assert page.tags["iframe"] == 3
    assert {"data_docs/index.html", "model/match_weights.html"} <= set(page.links)
    assert sorted(p.name for p in (run_dir / "model").iterdir()) == [
        "m_u_parameters.html",
        "match_weights.html",
        "unlinkables.html",
    ]

    bronze = delta_io.read_delta(spark, cfg.tables.bronze)
    expected = {
        (r["region"], r["source_system"], str(r["count"]))
        for r in bronze.groupBy("region", "source_system").count().collect()
    }
    header, *rows = page.tables["bronze-rows"]
    assert header == ["region", "source_system", "rows"]
    assert {tuple(r) for r in rows} == expected
    assert {r[0] for r in rows} == {"EU", "RO", "UA"}

    for table_id, expected_rows in independent_counts(spark, cfg).items():
        header, *cells = page.tables.get(table_id) or [list(expected_rows.columns)]  # no rows: no table, says "none"
        assert header == list(expected_rows.columns), table_id
        assert sorted(cells) == sorted(as_cells(expected_rows)), table_id

    html = path.read_text(encoding="utf-8")
    emails = {r["email"] for r in bronze.where(F.col("email").contains("@")).select("email").distinct().collect()}
    profile_ids = {r["profile_id"] for r in delta_io.read_delta(spark, cfg.tables.record_profiles).collect()}
    record_ids = {f"{r['source_system']}:{r['source_record_id']}" for r in bronze.collect()}
    assert len(emails) > 100 and profile_ids and record_ids
    assert [v for v in emails | profile_ids | record_ids if v in html or v in dom] == []


def independent_counts(spark, cfg) -> dict[str, DataFrame]:
    """What the report's count tables of run RUN should show, computed by Spark from the tables themselves."""
    t = cfg.tables
    audit = delta_io.read_delta(spark, t.consent_audit).where(F.col("run_id") == RUN)
    decisions = audit.where("attribute = '*'")
    permissions = delta_io.read_delta(spark, t.profile_permissions)
    record_profiles = delta_io.read_delta(spark, t.record_profiles)
    admitted, excluded = (
        F.sum(F.when(F.col("decision") == d, 1).otherwise(0)).alias(d) for d in ("admitted", "excluded")
    )
    return {
        "quarantine-reasons": delta_io.read_delta(spark, t.quarantine)
        .groupBy("source_system", "reason")
        .agg(F.count("*").alias("rows")),
        "consent-decisions": decisions.groupBy("policy_version", "decision", "reason").agg(
            F.count("*").alias("records")
        ),
        "consent-reconciliation": decisions.agg(
            F.lit(delta_io.read_delta(spark, t.silver).count()).alias("silver_records"), admitted, excluded
        ),
        "consent-records-not-held": consent_events_not_held(spark, cfg),
        "suppressed-attributes": audit.where("decision = 'suppressed'")
        .groupBy("attribute", "purpose")
        .agg(F.count("*").alias("records")),
        "allowed-by-basis": permissions.where("allowed")
        .groupBy("purpose", "lawful_basis")
        .agg(F.count("*").alias("profiles")),
        "identity-events": delta_io.read_delta(spark, t.identity_events)
        .where(F.col("run_id") == RUN)
        .groupBy("event_type")
        .agg(F.countDistinct("profile_id").alias("profiles")),
        "resolution-totals": record_profiles.agg(
            F.lit(delta_io.read_delta(spark, t.pairwise_matches).count()).alias("pairs"),
            F.count("*").alias("records"),
            F.countDistinct("profile_id").alias("profiles"),
        ),
    }


def consent_events_not_held(spark, cfg) -> DataFrame:
    """Per feed, the ledger's events whose record silver lacks, and those records: counted by Spark."""
    return (
        delta_io.read_delta(spark, cfg.tables.consent_ledger)
        .join(delta_io.read_delta(spark, cfg.tables.silver), ["source_system", "source_record_id"], "left_anti")
        .groupBy("source_system")
        .agg(F.count("*").alias("events"), F.countDistinct("source_record_id").alias("records"))
    )


def as_cells(df: DataFrame) -> list[list[str]]:
    """The rows as the page's cells show them: numbers as digits, booleans as yes / NO, nulls empty."""
    cell = {True: "yes", False: "NO", None: ""}
    return [[cell[v] if v is None or isinstance(v, bool) else str(v) for v in row] for row in df.collect()]


def test_a_run_without_tables_or_quality_results_says_so(cfg):
    path = write_auditor_report(cfg, RUN, cfg.run_report_dir(RUN))
    page = RenderedPage(path.read_text(encoding="utf-8"))
    text = " ".join(" ".join(page.text).split())
    assert {s: page.ids.get(s) for s in SECTIONS} == {s: "h2" for s in SECTIONS}
    assert text.count("not available for this run") >= 10
    assert "No quality results (quality.json) for this run" in text
    assert page.tables == {}


def test_the_run_summary_ends_with_the_gate_verdict_and_the_report_of_the_latest_run(cfg):
    from jobs.report import REPORT_FILE
    from jobs.summary import summary_sections

    run_dir = cfg.run_report_dir(RUN)
    run_dir.mkdir(parents=True)
    (run_dir / "quality.json").write_text(json.dumps({"success": True, "published": True}), encoding="utf-8")
    (run_dir / REPORT_FILE).write_text("<html></html>", encoding="utf-8")

    assert summary_sections(cfg)[-2:] == [
        "Quality gate of the last run: passed, published",
        f"Auditor report: {(run_dir / REPORT_FILE).as_uri()}",
    ]
    # A quality.json that is not UTF-8 text, or cut short (a disk filled), leaves the other sections to show.
    (run_dir / "quality.json").write_bytes(b'{"success": "\xff"}')
    assert summary_sections(cfg)[-2] == (
        f"Quality gate of the last run: unknown ({run_dir / 'quality.json'}: cannot be read (UnicodeDecodeError))"
    )
    (run_dir / "quality.json").write_text('{"success": tr', encoding="utf-8")
    assert summary_sections(cfg)[-2] == (
        f"Quality gate of the last run: unknown ({run_dir / 'quality.json'}: not valid JSON (line 1))"
    )


def test_the_report_command_refuses_a_run_id_that_names_no_folder_without_a_traceback(cfg, monkeypatch, capsys):
    from jobs import report

    monkeypatch.setenv("IDRES_LAKEHOUSE", str(cfg.lakehouse))
    with pytest.raises(SystemExit) as exited:
        report.main(["--run-id", ".."])
    assert (exited.value.code, capsys.readouterr().err) == (2, "report: run id '..' cannot name a report folder\n")


@pytest.mark.parametrize("command", ["report", "summary", "query"])
def test_the_commands_run_by_hand_name_a_config_folder_that_is_not_there_without_a_traceback(command, tmp_path, capsys):
    import importlib

    main = importlib.import_module(f"jobs.{command}").main
    args = {"report": ["--run-id", "r"], "summary": [], "query": ["SELECT 1"]}[command]
    with pytest.raises(SystemExit) as exited:
        main(["--conf", str(tmp_path / "no-conf"), *args])
    printed = capsys.readouterr().err
    assert (exited.value.code, printed.startswith(f"{command}: "), "no-conf" in printed) == (2, True, True)


def test_the_summarys_last_run_is_the_one_the_gate_validated_last_not_a_report_written_again(cfg):
    """The summary took the newest index.html, so `python -m jobs.report` for an old run made it the last."""
    import os

    from jobs.report import REPORT_FILE, latest_auditor_report

    old, last = cfg.run_report_dir("old"), cfg.run_report_dir("last")
    for age, run_dir in ((200, old), (100, last)):
        run_dir.mkdir(parents=True)
        for name in ("quality.json", REPORT_FILE):
            (run_dir / name).write_text("{}", encoding="utf-8")
            os.utime(run_dir / name, (0, 10_000 - age))
    (old / REPORT_FILE).write_text("<html>written again</html>", encoding="utf-8")  # now: the newest page
    assert latest_auditor_report(cfg) == last / REPORT_FILE


def test_the_summary_shows_text_as_it_is_and_a_run_that_decided_nothing_as_zeros(cfg):
    from jobs import run_queries as q
    from jobs.summary import _table

    assert "1.10" in _table("Policy:", pa.table({"version": ["1.10"]}))  # tabulate printed 1.1
    write_deltalake(str(cfg.tables.silver), pa.table({"source_record_id": ["a", "b"]}))
    audit = pa.schema(
        [(c, pa.string()) for c in ("run_id", "decision", "attribute")] + [("decided_at", pa.timestamp("us"))]
    )
    write_deltalake(str(cfg.tables.consent_audit), audit.empty_table())
    assert q.CONSENT_RECONCILIATION.execute(cfg.tables, run_id="r1").to_pylist() == [
        {"silver_records": 2, "admitted": 0, "excluded": 0}
    ]


def test_a_report_written_again_shows_its_runs_purposes_and_thresholds_not_todays(cfg):
    """It listed the policy's purposes now, so a purpose retired since left the coverage table, and it drew the
    thresholds configured now."""
    from jobs.report import report_context

    permissions = pa.table(
        {
            "profile_id": ["pr_1", "pr_2"],
            "purpose": [cfg.policy.purposes[0], "retired_purpose"],
            "allowed": [True, True],
            "lawful_basis": ["consent", "contract"],
        }
    )
    delta_io.overwrite_delta(permissions, cfg.tables.profile_permissions, run_id=RUN, job="quality_gate")
    matches = pa.table({"match_probability": [0.999, 0.95], "model_version": ["v1", "v1"]})
    delta_io.overwrite_delta(matches, cfg.tables.pairwise_matches, run_id=RUN, job="quality_gate")
    published = {"run_id": [RUN], **{c: [0] for c in ("profiles", "inserted", "updated", "retired", "lineage_rows")}}
    delta_io.merge_delta(
        pa.table(published), cfg.tables.unify_runs, keys=["run_id"], run_id=RUN, job=publication.JOB, once_per_run=True
    )
    run_dir = cfg.run_report_dir(RUN)
    run_dir.mkdir(parents=True)
    thresholds = {"match_probability": 0.9, "cluster_probability": 0.9123}
    (run_dir / "quality.json").write_text(json.dumps({"success": True, "thresholds": thresholds}), encoding="utf-8")

    context = report_context(cfg, RUN, run_dir)
    assert [row[0] for row in context["coverage"][0].rows] == [*cfg.policy.purposes, "retired_purpose"]
    assert "cluster threshold 0.9123" in context["match_chart"]


def test_a_report_written_again_keeps_the_model_charts_it_copied_once_the_models_folder_is_gone(cfg):
    from jobs.report import copy_model_charts

    run_dir = cfg.run_report_dir(RUN)
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "model" / "weights.html").write_text("<html></html>", encoding="utf-8")
    assert copy_model_charts(cfg, "20261201T000000Z-abc", run_dir) == ["model/weights.html"]
    assert (run_dir / "model" / "weights.html").is_file()


def test_a_dollar_sign_in_a_purposes_name_is_shown_as_text_not_read_as_a_formula():
    from jobs.report import consent_chart

    svg = consent_chart(["a$\\foo$b", "marketing"], {"marketing": {"consent": 3}}, {"a$\\foo$b": 1})
    assert "a$\\foo$b" in svg


def test_a_run_report_folder_is_named_safely_from_the_run_id(cfg):
    folder = cfg.run_report_dir("manual__2026-11-22T08:21:18.831069+00:00")
    assert folder == cfg.reports / "runs" / "manual__2026-11-22T08_21_18.831069_00_00-e61a9326"
    assert cfg.run_report_dir("test_1") == cfg.reports / "runs" / "test_1"  # a safe run id names it as it is
    assert cfg.run_report_dir("test 1") != cfg.run_report_dir("test_1")
    # a folder named before the hash was added stays the run's own, when its quality results name the run
    legacy = cfg.reports / "runs" / "test_2"
    legacy.mkdir(parents=True)
    (legacy / "quality.json").write_text('{"run_id": "test 2", "success": true}', encoding="utf-8")
    assert (cfg.run_report_dir("test 2"), cfg.run_report_dir("test:2")) == (legacy, legacy.with_name("test_2-8be23e91"))
    with pytest.raises(IdresError, match="run id"):
        cfg.run_report_dir("..")
    # Airflow allows run ids of 250 characters: with its hash, the folder's name still fits in 255 bytes.
    longest = "manual__" + "2026-12-06T05:00:00+00:00" * 9 + "x" * 17
    assert len(longest) == 250
    folder = cfg.run_report_dir(longest)
    folder.mkdir(parents=True)
    digest = hashlib.sha256(longest.encode()).hexdigest()[:8]
    assert (len(folder.name), folder.name.endswith(f"-{digest}")) == (255, True)
    assert cfg.run_report_dir(longest[:-1] + "y") != folder
    safe_but_long = "r" * 300  # a run id given by hand: no character replaced, and still cut
    assert len(cfg.run_report_dir(safe_but_long).name) == 255


def test_a_report_regenerated_after_later_runs_shows_the_tables_as_its_run_left_them(spark, published, tmp_path):
    cfg = copy_lakehouse(published, tmp_path)
    bronze = delta_io.read_delta(spark, cfg.tables.bronze)
    as_run_left_them = {
        (r["region"], r["source_system"], str(r["count"]))
        for r in bronze.groupBy("region", "source_system").count().collect()
    }
    eu_only = bronze.where("region = 'EU'").toArrow()
    delta_io.overwrite_delta(eu_only, cfg.tables.bronze, run_id="later", job="ingest")

    def report(run_id: str) -> dict[str, list[list[str]]]:
        page = RenderedPage(write_auditor_report(cfg, run_id, cfg.run_report_dir(run_id)).read_text(encoding="utf-8"))
        return page.tables

    def bronze_rows(run_id: str) -> set[tuple[str, ...]] | None:
        tables = report(run_id)
        return {tuple(r) for r in tables["bronze-rows"][1:]} if "bronze-rows" in tables else None

    assert bronze_rows(RUN) == as_run_left_them
    assert bronze_rows("later") == {r for r in as_run_left_them if r[0] == "EU"}
    assert {r[0] for r in as_run_left_them} == {"EU", "RO", "UA"}
    # "later" published no resolution and staged none: RUN's published profiles are not its own
    assert "resolution-totals" in report(RUN) and "resolution-totals" not in report("later")
    assert report("no-such-run") == {}  # a mistyped run id: none of the current figures as its own

    for path in cfg.tables.all().values():  # what an erasure does to every table
        if delta_io.table_exists(path):
            delta_io.purge_history(path, run_id="erasure-1", job="erase")
    assert bronze_rows(RUN) is None  # its versions are gone: not available, never the current ones


def test_consent_events_for_records_no_source_delivered_are_counted_per_feed(spark, published, tmp_path):
    cfg = copy_lakehouse(published, tmp_path)
    t = cfg.tables
    before = {r["source_system"]: (r["events"], r["records"]) for r in consent_events_not_held(spark, cfg).collect()}
    template = delta_io.read_delta(spark, t.consent_ledger).where("source_system = 'ua_crm'").limit(1)
    arrivals = spark.createDataFrame(
        [("not-held-1", "r-not-yet-delivered"), ("not-held-2", "r-not-yet-delivered"), ("not-held-3", "r-other")],
        "new_event_id string, new_record_id string",
    )
    early = template.crossJoin(arrivals).withColumns(
        {"event_id": F.col("new_event_id"), "source_record_id": F.col("new_record_id")}
    )
    delta_io.merge_delta(
        early.drop("new_event_id", "new_record_id"),
        t.consent_ledger,
        keys=("source_system", "event_id"),
        run_id="later",
        job="consent_gate",
    )

    counted = spark.createDataFrame(
        q.CONSENT_FOR_RECORDS_NOT_HELD.execute(t).to_pylist(), "source_system string, events long, records long"
    )
    assert_df_equality(counted, consent_events_not_held(spark, cfg), ignore_row_order=True, ignore_nullable=True)
    events, records = before.get("ua_crm", (0, 0))
    assert {r["source_system"]: (r["events"], r["records"]) for r in counted.collect()}["ua_crm"] == (
        events + 3,
        records + 2,
    )
    page = RenderedPage(write_auditor_report(cfg, "later", cfg.run_report_dir("later")).read_text(encoding="utf-8"))
    header, *cells = page.tables["consent-records-not-held"]
    assert header == ["source_system", "events", "records"]
    assert sorted(cells) == sorted(as_cells(counted))
    assert "r-not-yet-delivered" not in " ".join(page.text)  # counts only, no record ids


def test_a_run_left_each_table_at_its_own_last_commit_or_at_its_end(tmp_path):
    import time

    import pyarrow as pa

    bronze, gold, later = (tmp_path / name for name in ("bronze", "gold", "later"))

    def commit(path, run_id: str) -> None:
        time.sleep(0.01)  # commit times are in milliseconds
        delta_io.overwrite_delta(pa.table({"run": [run_id]}), path, run_id=run_id, job="test")

    commit(bronze, "A")  # bronze v0
    commit(gold, "A")  # gold v0
    commit(bronze, "B")  # bronze v1: the next run began
    commit(gold, "A")  # gold v1: B's gate completes A's interrupted publication
    commit(later, "B")
    commit(bronze, "D")  # bronze v2: the run after B
    commit(gold, "D")  # gold v2
    tables = [bronze, gold, later]

    assert delta_io.versions_as_run_left(tables, "A") == {bronze: 0, gold: 1, later: None}
    # B ended after completing A's publication, with gold as that left it
    assert delta_io.versions_as_run_left(tables, "B") == {bronze: 1, gold: 1, later: 0}
    assert delta_io.versions_as_run_left(tables, "D") == {bronze: 2, gold: 2, later: 0}
    # committed nothing, or a mistyped run id: its versions are not known, the current ones are not its own
    assert delta_io.versions_as_run_left(tables, "C") == {bronze: None, gold: None, later: None}


def test_the_report_command_refuses_a_run_no_table_or_quality_result_records_and_keeps_the_folder_it_names(
    published, tmp_path, monkeypatch, capsys
):
    """A mistyped run id wrote an empty report, and a run's report folder name given as its id rewrote that run's
    report with nothing but its quality results."""
    from jobs import report

    cfg = copy_lakehouse(published, tmp_path)
    monkeypatch.setenv("IDRES_LAKEHOUSE", str(cfg.lakehouse))
    monkeypatch.setenv("IDRES_REPORTS", str(cfg.reports))
    airflow_run = "manual__2026-12-06T09:44:03+00:00"
    folder = cfg.run_report_dir(airflow_run)
    folder.mkdir(parents=True)
    (folder / "quality.json").write_text(json.dumps({**QUALITY, "run_id": airflow_run}), encoding="utf-8")
    (folder / report.REPORT_FILE).write_text("the run's report", encoding="utf-8")

    for run_id in ("typo-run", folder.name):
        with pytest.raises(SystemExit) as exited:
            report.main(["--run-id", run_id])
        assert exited.value.code == 2
        assert f"no table's log and no quality results record run '{run_id}'" in capsys.readouterr().err
    assert sorted(p.name for p in (cfg.reports / "runs").iterdir()) == [folder.name]
    assert (folder / report.REPORT_FILE).read_text(encoding="utf-8") == "the run's report"

    assert report.main(["--run-id", RUN]) == cfg.run_report_dir(RUN) / report.REPORT_FILE  # the tables' logs hold it
    assert report.main(["--run-id", airflow_run]) == folder / report.REPORT_FILE  # its quality results name it
    # a run that stopped after its ingest, whose commits an erasure's purge took from the logs: its audit row stays
    counted = delta_io.arrow_dataset(cfg.tables.ingest_runs).to_table().slice(0, 1)
    stopped = counted.set_column(counted.schema.get_field_index("run_id"), "run_id", pa.array(["stopped-run"]))
    write_deltalake(str(cfg.tables.ingest_runs), stopped, mode="append")
    assert "stopped-run" not in {c.get("run_id") for c in delta_io.history(cfg.tables.ingest_runs)}
    assert report.main(["--run-id", "stopped-run"]) == cfg.run_report_dir("stopped-run") / report.REPORT_FILE
