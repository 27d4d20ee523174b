from __future__ import annotations

import stat
import threading

from jobs.files import write_whole


def test_two_writers_of_one_file_each_write_it_whole_and_a_reader_finds_one_text_or_the_other(tmp_path):
    """The quality gate and the report command can write one run's report at once."""
    path = tmp_path / "index.html"
    texts = {"a": "a" * 2_000_000, "b": "b" * 2_000_000}
    errors: list[BaseException] = []
    read: set[str] = set()

    def write(text: str) -> None:
        try:
            for _ in range(20):
                write_whole(path, text)
        except BaseException as error:
            errors.append(error)

    writers = [threading.Thread(target=write, args=(text,)) for text in texts.values()]
    for writer in writers:
        writer.start()
    while any(writer.is_alive() for writer in writers):
        if path.exists():
            read.add(path.read_text(encoding="utf-8"))
    for writer in writers:
        writer.join()
    assert errors == []
    assert read <= set(texts.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.html"]  # no draft left


def test_a_private_file_is_readable_by_its_owner_only(tmp_path):
    path = write_whole(tmp_path / "export.json", "{}", private=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
