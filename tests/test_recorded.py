"""The results files of full runs (dgmbook.recorded): what they hold, and which revision they name."""

import json
from pathlib import Path

import pytest

from dgmbook import recorded


def test_write_results_records_the_run(tmp_path):
    path = recorded.write_results("demo", {"lr": 1e-3}, {"loss": 0.5}, 12.34, directory=tmp_path)
    record = json.loads(path.read_text())
    assert path == tmp_path / "demo.json"
    assert record["config"] == {"lr": 1e-3} and record["metrics"] == {"loss": 0.5}
    assert record["wall_seconds"] == 12.3
    assert record["code_revision"] == recorded.code_revision()
    assert {"cpu_threads", "torch"} <= set(record["hardware"])


def test_write_results_names_the_revision_the_run_started_from(tmp_path):
    """A full run lasts hours; the CLI reads the revision when it starts, and that is recorded."""
    path = recorded.write_results("demo", {}, {}, 1.0, directory=tmp_path, revision="abc1234")
    assert json.loads(path.read_text())["code_revision"] == "abc1234"


def test_a_full_run_killed_midway_leaves_no_results_file(tmp_path, monkeypatch):
    """The CLI writes the results file only when the run returns, atomically: a run interrupted
    (Ctrl-C, a killed process) leaves the previous results file as it was, and no partial one."""
    from dgmbook import cli

    def interrupted(progress):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.EXPERIMENTS, "demo", "test_recorded:_interrupted")
    monkeypatch.setattr(recorded, "RESULTS_DIR", tmp_path)
    globals()["_interrupted"] = interrupted
    previous = recorded.write_results("demo", {"run": 1}, {"loss": 0.5}, 1.0)
    before = previous.read_text()
    with pytest.raises(KeyboardInterrupt):
        cli.main(["full", "demo"])
    assert previous.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.json"]


def test_write_results_is_atomic(tmp_path, monkeypatch):
    """A failure halfway through writing (a full disk) leaves the previous file whole."""
    path = recorded.write_results("demo", {}, {"loss": 1.0}, 1.0, directory=tmp_path)
    real_write = Path.write_text

    def half_then_fail(self, text, *args, **kwargs):
        real_write(self, text[: len(text) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        recorded.write_results("demo", {}, {"loss": 2.0}, 1.0, directory=tmp_path)
    monkeypatch.undo()
    assert json.loads(path.read_text())["metrics"] == {"loss": 1.0}
