"""The run cache: hits, misses on config or code change, forced re-runs, atomic entries."""

import importlib
import sys
import textwrap

import pytest
import torch

from dgmbook import runcache


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv(runcache.CACHE_ENV, str(tmp_path / "runs"))
    monkeypatch.delenv(runcache.RERUN_ENV, raising=False)
    return tmp_path / "runs"


@pytest.fixture
def trainer(tmp_path, monkeypatch):
    """A throwaway 'training module' whose source we can edit."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "toy_trainer.py").write_text("def train(cfg):\n    return {'w': torch.ones(2) * cfg['lr']}\nimport torch\n")
    monkeypatch.syspath_prepend(str(src))
    mod = importlib.import_module("toy_trainer")
    yield mod
    sys.modules.pop("toy_trainer", None)


def test_second_call_loads(cache, trainer):
    calls = []

    def run():
        calls.append(1)
        return trainer.train({"lr": 0.5})

    a = runcache.cached("toy", {"lr": 0.5}, run, code=[trainer])
    b = runcache.cached("toy", {"lr": 0.5}, run, code=[trainer])
    assert len(calls) == 1
    assert torch.equal(a["w"], b["w"])
    meta = runcache.entry_meta("toy", {"lr": 0.5}, [trainer])
    assert meta["config"] == {"lr": 0.5} and meta["seconds"] >= 0


def test_config_change_misses(cache, trainer):
    calls = []
    for lr in (0.5, 0.25, 0.5):
        runcache.cached("toy", {"lr": lr}, lambda: calls.append(lr) or lr, code=[trainer])
    assert calls == [0.5, 0.25]


def test_code_change_invalidates(cache, trainer):
    calls = []
    runcache.cached("toy", {}, lambda: calls.append(1), code=[trainer])
    path = trainer.__file__
    with open(path, "a") as f:
        f.write("\n# a change to the training code\n")
    runcache.cached("toy", {}, lambda: calls.append(2), code=[trainer])
    assert calls == [1, 2]


def test_rerun_setting(cache, trainer, monkeypatch):
    calls = []
    runcache.cached("toy", {}, lambda: calls.append(1), code=[trainer])
    monkeypatch.setenv(runcache.RERUN_ENV, "other,toy")
    runcache.cached("toy", {}, lambda: calls.append(2), code=[trainer])
    monkeypatch.setenv(runcache.RERUN_ENV, "other")
    runcache.cached("toy", {}, lambda: calls.append(3), code=[trainer])
    monkeypatch.setenv(runcache.RERUN_ENV, "1")
    runcache.cached("toy", {}, lambda: calls.append(4), code=[trainer])
    assert calls == [1, 2, 4]
    runcache.cached("toy", {}, lambda: calls.append(5), code=[trainer], force=True)
    assert calls[-1] == 5


def test_failed_run_leaves_no_entry(cache, trainer):
    def boom():
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError):
        runcache.cached("toy", {}, boom, code=[trainer])
    assert not list(cache.rglob("*.pt"))


def test_package_hash_covers_its_modules():
    import dgmbook

    assert runcache.code_version([dgmbook]) != runcache.code_version([runcache])
    assert len(runcache.code_version([runcache.cached])) == 16  # a function stands for its module
