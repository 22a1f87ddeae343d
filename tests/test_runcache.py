"""The run cache: hits and misses, keys from the import graph, the safe entry format, and what
a broken, malicious or unwritable cache does."""

import math
import pickle
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from dgmbook import runcache
from dgmbook.runcache import codekey, entry


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv(runcache.CACHE_ENV, str(tmp_path / "runs"))
    monkeypatch.delenv(runcache.RERUN_ENV, raising=False)
    monkeypatch.delenv(runcache.REMOTE_ENV, raising=False)
    runcache.set_chapter(None)
    yield tmp_path / "runs"
    runcache.set_chapter(None)


@pytest.fixture
def toypkg(tmp_path, monkeypatch):
    """A throwaway package whose modules we can edit: ``train`` imports ``helpers`` (at the top)
    and ``late`` (inside the function); ``other`` is imported by nothing."""
    root = tmp_path / "src" / "toypkg"
    root.mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "helpers.py").write_text("SCALE = 1.0\n")
    (root / "late.py").write_text("OFFSET = 0.0\n")
    (root / "other.py").write_text("UNUSED = 1\n")
    (root / "train.py").write_text(textwrap.dedent("""
        import torch
        from . import helpers

        CALLS = []

        def train(cfg):
            from toypkg.late import OFFSET
            CALLS.append(cfg)
            return {"w": torch.ones(2) * cfg["lr"] * helpers.SCALE + OFFSET}

        def fail(cfg):
            raise RuntimeError("diverged")
    """))
    monkeypatch.syspath_prepend(str(root.parent))
    monkeypatch.setitem(codekey.PACKAGES, "toypkg", root)
    import toypkg.train

    yield root, toypkg.train
    for name in [m for m in sys.modules if m.split(".")[0] == "toypkg"]:
        del sys.modules[name]


def _edit(path):
    path.write_text(path.read_text() + "\n# an edit\n")


def test_second_call_loads(cache, toypkg):
    _, mod = toypkg
    a = runcache.cached("toy", {"lr": 0.5}, mod.train, {"lr": 0.5})
    b = runcache.cached("toy", {"lr": 0.5}, mod.train, {"lr": 0.5})
    assert len(mod.CALLS) == 1 and torch.equal(a["w"], b["w"])
    meta = runcache.entry_meta("toy", {"lr": 0.5}, mod.train)
    assert meta["config"] == {"lr": 0.5} and meta["seconds"] >= 0
    assert meta["function"] == "toypkg.train.train"
    assert meta["modules"] == ["toypkg", "toypkg.helpers", "toypkg.late", "toypkg.train"]


def test_config_change_misses(cache, toypkg):
    _, mod = toypkg
    for lr in (0.5, 0.25, 0.5):
        runcache.cached("toy", {"lr": lr}, mod.train, {"lr": lr})
    assert mod.CALLS == [{"lr": 0.5}, {"lr": 0.25}]


@pytest.mark.parametrize("module", ["train.py", "helpers.py", "late.py", "__init__.py"])
def test_editing_a_module_the_run_reaches_invalidates(cache, toypkg, module):
    root, mod = toypkg
    runcache.cached("toy", {}, mod.train, {"lr": 1.0})
    _edit(root / module)
    runcache.cached("toy", {}, mod.train, {"lr": 1.0})
    assert len(mod.CALLS) == 2


def test_editing_an_unrelated_module_does_not(cache, toypkg):
    root, mod = toypkg
    runcache.cached("toy", {}, mod.train, {"lr": 1.0})
    _edit(root / "other.py")
    runcache.cached("toy", {}, mod.train, {"lr": 1.0})
    assert len(mod.CALLS) == 1


def test_the_package_import_graph():
    """The real package: each run reaches its own modules, not its neighbours'."""
    from dgmbook import continual, gan, gan_scores, vae

    assert codekey.modules_reached("dgmbook.gan") == ["dgmbook", "dgmbook.data", "dgmbook.device",
                                                      "dgmbook.gan", "dgmbook.utils"]
    scored = codekey.modules_reached("dgmbook.gan_scores")
    assert {"dgmbook.gan", "dgmbook.digit_classifier"} <= set(scored)
    assert "dgmbook.vae" not in codekey.modules_reached("dgmbook.gan")
    assert not any(m.startswith("dgmbook.runcache") for m in codekey.modules_reached("dgmbook.continual"))
    assert codekey.code_version(gan.train) != codekey.code_version(vae.run_many)
    assert codekey.code_version(gan_scores.final_scores)[1] == scored
    assert callable(continual.cached_run)


def test_only_package_functions_run(cache, toypkg):
    _, mod = toypkg
    with pytest.raises(runcache.NotAPackageFunction, match="lambda"):
        runcache.cached("toy", {}, lambda: mod.train({"lr": 1.0}))

    def local():
        return 1

    with pytest.raises(runcache.NotAPackageFunction, match="local"):
        runcache.cached("toy", {}, local)
    with pytest.raises(runcache.NotAPackageFunction, match="numpy"):
        runcache.cached("toy", {}, np.ones, 3)


def test_rerun_setting(cache, toypkg, monkeypatch):
    _, mod = toypkg
    run = lambda: runcache.cached("toy", {}, mod.train, {"lr": 1.0})  # noqa: E731
    run()
    monkeypatch.setenv(runcache.RERUN_ENV, "other,toy")
    run()
    monkeypatch.setenv(runcache.RERUN_ENV, "other")
    run()
    monkeypatch.setenv(runcache.RERUN_ENV, "1")
    run()
    assert len(mod.CALLS) == 3
    monkeypatch.delenv(runcache.RERUN_ENV)
    runcache.cached("toy", {}, mod.train, {"lr": 1.0}, force=True)
    assert len(mod.CALLS) == 4


def test_failed_run_leaves_no_entry(cache, toypkg):
    _, mod = toypkg
    with pytest.raises(RuntimeError, match="diverged"):
        runcache.cached("toy", {}, mod.fail, {})
    assert not list(cache.rglob("*")) or not list(cache.rglob("*.safetensors"))


def test_the_chapter_records_its_entries(cache, toypkg):
    _, mod = toypkg
    runcache.set_chapter("intro")
    runcache.cached("toy", {"lr": 1}, mod.train, {"lr": 1})
    runcache.cached("toy", {"lr": 1}, mod.train, {"lr": 1})  # a hit is recorded once
    runcache.cached("toy", {"lr": 2}, mod.train, {"lr": 2})
    used = runcache.chapter_entries("intro")
    assert len(used) == 2 and all((cache / rel).is_file() for rel in used)


# --- a broken cache ---------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_entry_is_reported_and_recomputed(cache, toypkg, damage):
    _, mod = toypkg
    runcache.cached("toy", {}, mod.train, {"lr": 1.0})
    path = runcache.entry_path("toy", {}, mod.train)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00\xff" * 64,
                      "empty": b""}[damage])
    with pytest.warns(runcache.RunCacheWarning, match="unreadable") as caught:
        out = runcache.cached("toy", {}, mod.train, {"lr": 1.0})
    assert str(path) in str(caught[0].message) and "running 'toy' again" in str(caught[0].message)
    assert len(mod.CALLS) == 2 and torch.equal(out["w"], torch.ones(2))
    assert torch.equal(entry.load(path)[0]["w"], torch.ones(2))  # the entry was written again


class _Payload:
    """What a malicious pickle runs when it is loaded: it writes a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_malicious_pickle_is_never_executed(cache, toypkg, tmp_path):
    _, mod = toypkg
    path = runcache.entry_path("toy", {}, mod.train)
    path.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps({"result": _Payload(str(marker))}))
    torch.save({"result": _Payload(str(marker))}, tmp_path / "also.pt")  # the old format's way
    path.with_name("x.safetensors").write_bytes((tmp_path / "also.pt").read_bytes())
    with pytest.warns(runcache.RunCacheWarning, match="never loaded"):
        runcache.cached("toy", {}, mod.train, {"lr": 1.0})
    with pytest.raises(entry.EntryError, match="unreadable"):
        entry.load(path.with_name("x.safetensors"))
    assert not marker.exists()
    assert len(mod.CALLS) == 1


def test_a_read_only_cache_still_returns_the_result(cache, toypkg):
    _, mod = toypkg
    cache.mkdir(parents=True)
    cache.chmod(0o500)
    try:
        if _can_write(cache):
            pytest.skip("running as a user who can write into a read-only folder (root)")
        with pytest.warns(runcache.RunCacheWarning, match="could not keep 'toy'.*DGMBOOK_CACHE"):
            out = runcache.cached("toy", {}, mod.train, {"lr": 1.0})
        assert torch.equal(out["w"], torch.ones(2))
    finally:
        cache.chmod(0o700)


def _can_write(folder):
    try:
        (folder / ".probe").write_text("")
        (folder / ".probe").unlink()
        return True
    except OSError:
        return False


def test_an_unwritable_cache_path_still_returns_the_result(monkeypatch, tmp_path, toypkg):
    """A cache 'directory' that is a file cannot be written, whoever runs the test."""
    _, mod = toypkg
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv(runcache.CACHE_ENV, str(blocker))
    monkeypatch.delenv(runcache.REMOTE_ENV, raising=False)
    with pytest.warns(runcache.RunCacheWarning, match="could not keep"):
        out = runcache.cached("toy", {}, mod.train, {"lr": 1.0})
    assert torch.equal(out["w"], torch.ones(2))


# --- the entry format ---------------------------------------------------------------------------

def test_entries_keep_every_supported_type(tmp_path):
    result = {
        "state_dict": {"w": torch.randn(3, 2), "b": torch.zeros(0), "n": torch.tensor(7)},
        "bf16": torch.ones(2, dtype=torch.bfloat16), "mask": torch.tensor([True, False]),
        "curve": [0.5, float("nan"), float("inf"), -float("inf")],
        "by_step": {0: 1.0, 250: 2.0},
        "by_tuple": {("init", (3.0, -1.0), "none"): {"mse": 0.1}},
        "pair": (1, "a", None, True),
        "array": np.arange(6, dtype=np.int32).reshape(2, 3),
        "scalar": np.float64(0.25), "count": np.int64(4), "flag": np.bool_(True),
        "text": ["a summary", ""], "__dunder": 1,
    }
    path = tmp_path / "e.safetensors"
    entry.save(path, result, {"name": "x"})
    back, meta = entry.load(path)
    assert meta == {"name": "x"} and entry.read_meta(path) == {"name": "x"}
    assert set(back) == set(result)
    for k in ("w", "b", "n"):
        assert torch.equal(back["state_dict"][k], result["state_dict"][k])
    assert back["bf16"].dtype == torch.bfloat16 and back["mask"].dtype == torch.bool
    assert back["curve"][0] == 0.5 and math.isnan(back["curve"][1])
    assert back["curve"][2:] == [math.inf, -math.inf]
    assert back["by_step"] == {0: 1.0, 250: 2.0}
    assert back["by_tuple"] == {("init", (3.0, -1.0), "none"): {"mse": 0.1}}
    assert back["pair"] == (1, "a", None, True)
    assert isinstance(back["array"], np.ndarray) and np.array_equal(back["array"], result["array"])
    assert type(back["scalar"]) is np.float64 and type(back["count"]) is np.int64
    assert type(back["flag"]) is np.bool_
    assert back["text"] == ["a summary", ""] and back["__dunder"] == 1


def test_unsupported_types_are_refused_before_writing(tmp_path):
    with pytest.raises(TypeError, match=r"result\['model'\].*Linear.*state_dict"):
        entry.save(tmp_path / "e.safetensors", {"model": torch.nn.Linear(2, 2)}, {})
    assert not list(tmp_path.iterdir())


def test_shared_and_strided_tensors_are_stored_whole(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    result = {"a": base, "view": base[:, 1], "t": base.T}
    entry.save(tmp_path / "e.safetensors", result, {})
    back, _ = entry.load(tmp_path / "e.safetensors")
    for k in result:
        assert torch.equal(back[k], result[k])


def test_no_warning_on_a_hit(cache, toypkg):
    _, mod = toypkg
    runcache.cached("toy", {}, mod.train, {"lr": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        runcache.cached("toy", {}, mod.train, {"lr": 1.0})


def test_no_training_raises_instead_of_running(cache, toypkg, monkeypatch):
    _, mod = toypkg
    runcache.cached("toy", {"lr": 1}, mod.train, {"lr": 1})
    monkeypatch.setenv(runcache.NO_TRAINING_ENV, "1")
    runcache.cached("toy", {"lr": 1}, mod.train, {"lr": 1})  # a hit is fine
    with pytest.raises(runcache.NotCached, match="'toy'.*DGMBOOK_NO_TRAINING"):
        runcache.cached("toy", {"lr": 2}, mod.train, {"lr": 2})
    assert mod.CALLS == [{"lr": 1}]
