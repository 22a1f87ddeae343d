"""The results files of full runs (dgmbook.recorded): what they hold, and which revision they name."""

import json

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
