from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from jobs import demo_data
from jobs.config import load_config
from jobs.errors import IdresError
from jobs.runner import lakehouse_lock
from tests.conftest import config_in, edited_conf


def _digest(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    a, b, c = (config_in(tmp_path / name) for name in "abc")
    demo_data.generate(a, people=80, seed=1)
    demo_data.generate(b, people=80, seed=1)
    demo_data.generate(c, people=80, seed=2)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


@pytest.mark.parametrize(("people", "corrupt"), [(1, False), (3, True)])
def test_too_few_people_for_a_source_fails_naming_it_and_leaves_the_landing_as_it_was(tmp_path, people, corrupt):
    """With no row to take its header from, or too few to copy its bad rows from, a source crashed its write
    after the sources before it were rewritten: the next ingest read a landing of two generations."""
    cfg = config_in(tmp_path)
    demo_data.generate(cfg, people=80, seed=1, corrupt=True)
    before = _digest(tmp_path)
    with pytest.raises(IdresError, match=rf"--people {people} gives source \w+ .*ask for more people"):
        demo_data.generate(cfg, people=people, seed=42, corrupt=corrupt)
    assert _digest(tmp_path) == before


def test_people_recur_across_regions_scripts_and_within_one_source(tmp_path):
    cfg = config_in(tmp_path)
    summary = demo_data.generate(cfg, people=300, seed=3)
    with (cfg.ground_truth / "records.csv").open(encoding="utf-8") as fh:
        truth = list(csv.DictReader(fh))
    assert len(truth) == sum(summary.records.values())
    sources_per_person: dict[str, set[str]] = {}
    for row in truth:
        sources_per_person.setdefault(row["person_id"], set()).add(row["source_system"])
    assert sum(len(s) >= 2 for s in sources_per_person.values()) > 60
    assert sum(len(s) == 3 for s in sources_per_person.values()) > 3
    per_source_person = Counter((r["source_system"], r["person_id"]) for r in truth)
    assert sum(n > 1 for n in per_source_person.values()) > 5  # duplicates inside one source

    ua = (cfg.source("ua_crm").path).read_text(encoding="utf-8")
    assert any("\u0400" <= ch <= "\u04ff" for ch in ua)  # Cyrillic in the Ukrainian CRM
    ro = [json.loads(line) for line in cfg.source("ro_shop").path.read_text(encoding="utf-8").splitlines()]
    assert any(ch in "șțăîâşţ" for r in ro for ch in r.get("nume", "") + r.get("prenume", ""))


def test_the_ground_truth_is_kept_apart_from_the_landing_zone(tmp_path):
    cfg = config_in(tmp_path)
    demo_data.generate(cfg, people=20, seed=4)
    assert not cfg.ground_truth.is_relative_to(cfg.landing)
    assert not list(cfg.landing.rglob("records.csv"))
    for s in cfg.sources:
        assert s.consent_feed is not None and s.consent_feed.path.is_file()


def test_the_demo_extracts_are_not_rewritten_while_a_job_holds_the_lakehouse(tmp_path, capsys):
    """The DAG's demo task rewrote the extracts beside a CLI ingest holding the lock, which could land half a file."""
    conf = edited_conf(
        tmp_path,
        "pipeline.yaml",
        (("paths", "lakehouse"), str(tmp_path / "lake")),
        (("concurrency", "lock_timeout_seconds"), 0),
    )
    args = ["--conf", str(conf), "--people", "5", "--landing", str(tmp_path / "landing")]
    args += ["--ground-truth", str(tmp_path / "truth")]
    cfg = load_config(conf)
    with lakehouse_lock(cfg, "ingest"), pytest.raises(SystemExit) as exited:
        demo_data.main(args)
    assert exited.value.code == 2 and "_idres.lock" in capsys.readouterr().err
    assert not (tmp_path / "landing").exists()
    assert demo_data.main(args).people == 5


def test_a_config_problem_ends_the_demo_task_with_exit_code_2_naming_it_like_every_job(tmp_path, capsys):
    conf = edited_conf(tmp_path, "pipeline.yaml", (("spark", "shuffle_partitions"), 0))
    with pytest.raises(SystemExit) as exited:
        demo_data.main(["--conf", str(conf), "--people", "5", "--landing", str(tmp_path / "landing")])
    assert exited.value.code == 2
    assert "pipeline.yaml: spark.shuffle_partitions: must be a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "landing").exists()


def test_a_real_extract_at_a_configured_source_path_is_never_overwritten(tmp_path):
    """The generator wrote wherever the sources were configured: `make run` over a config pointed at a real landing
    zone replaced its extracts with demo data."""
    cfg = config_in(tmp_path)
    extract = cfg.source("ro_shop").path
    extract.parent.mkdir(parents=True)
    extract.write_bytes(b'{"id_client": "1", "nume": "real"}\n')
    before = _digest(tmp_path)
    with pytest.raises(IdresError, match=rf"{extract} exists and is not a file the demo generator wrote"):
        demo_data.generate(cfg, people=20, seed=1)
    assert _digest(tmp_path) == before


def test_the_generator_rewrites_its_own_files_but_not_one_changed_since(tmp_path):
    cfg = config_in(tmp_path)
    demo_data.generate(cfg, people=20, seed=1)
    demo_data.generate(cfg, people=30, seed=2)  # its own files, as it wrote them
    truth = cfg.ground_truth / "records.csv"
    truth.write_text(truth.read_text(encoding="utf-8") + "eu_loyalty,LM1,someone\n", encoding="utf-8")
    before = _digest(tmp_path)
    with pytest.raises(IdresError, match=rf"{truth} exists and is not a file the demo generator wrote"):
        demo_data.generate(cfg, people=20, seed=1)
    assert _digest(tmp_path) == before


def test_a_generation_that_died_midway_neither_blocks_the_next_nor_lets_a_real_extract_be_overwritten(
    tmp_path, monkeypatch
):
    cfg = config_in(tmp_path)
    demo_data.generate(cfg, people=20, seed=1)
    written = []

    def dies_at_the_second_file(path, content):
        if written:
            raise KeyboardInterrupt  # a file is renamed into place whole: the second is as it was
        written.append(path)
        path.write_bytes(content)

    with monkeypatch.context() as patched:
        patched.setattr(demo_data, "_write_bytes", dies_at_the_second_file)
        with pytest.raises(KeyboardInterrupt):
            demo_data.generate(cfg, people=30, seed=2)
    real = cfg.source("eu_loyalty").path
    real.write_bytes(b"a real extract")
    with pytest.raises(IdresError, match=rf"{real} exists and is not a file the demo generator wrote"):
        demo_data.generate(cfg, people=30, seed=2)
    assert real.read_bytes() == b"a real extract"
    real.unlink()
    demo_data.generate(cfg, people=30, seed=2)
    fresh = config_in(tmp_path / "fresh")
    demo_data.generate(fresh, people=30, seed=2)
    assert _digest(tmp_path / "fresh") == {k: v for k, v in _digest(tmp_path).items() if not k.startswith("fresh/")}


def test_moving_the_landing_zone_does_not_disown_the_ground_truth(tmp_path):
    cfg = config_in(tmp_path)
    demo_data.generate(cfg, people=20, seed=1)
    demo_data.generate(cfg.with_paths(landing=tmp_path / "landing2"), people=20, seed=1)


def test_another_generation_over_demo_data_the_lakehouse_ingested_is_refused(tmp_path):
    """Generations number their records from the same ids: `make run PEOPLE=500` after `make run` gave the ingested
    ids to other people, mixing both in bronze and the consent ledger, and every later gate refused the churn."""
    cfg = config_in(tmp_path)
    demo_data.generate(cfg, people=20, seed=1)
    demo_data.generate(cfg, people=30, seed=1)  # nothing ingested yet: any generation
    write_deltalake(str(cfg.tables.bronze), pa.table({"source_record_id": ["UA-1000000"]}))
    before = _digest(tmp_path)

    for people, seed in ((20, 1), (30, 2)):
        with pytest.raises(
            IdresError,
            match=rf"--people {people} --seed {seed} makes other people than the demo data the lakehouse has ingested",
        ):
            demo_data.generate(cfg, people=people, seed=seed)
    assert _digest(tmp_path) == before

    demo_data.generate(cfg, people=30, seed=1)  # the same again
    assert _digest(tmp_path) == before
