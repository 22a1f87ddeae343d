"""The published run cache, served by a local HTTP server on 127.0.0.1: a reader's empty cache
fills from it without training; a corrupt, truncated or malicious archive writes nothing."""

import functools
import http.server
import json
import pickle
import shutil
import tarfile
import threading

import pytest
import torch

from dgmbook import runcache
from dgmbook.runcache import remote

from test_runcache import _Payload, toypkg  # noqa: F401  (the toy package fixture)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """Serves ``tmp_path / "site"`` on 127.0.0.1; yields (folder, base URL of its runcache/)."""
    site = tmp_path / "site"
    site.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(_Quiet, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield site, f"http://127.0.0.1:{httpd.server_address[1]}/runcache/"
    httpd.shutdown()


@pytest.fixture
def published(tmp_path, monkeypatch, server, toypkg):  # noqa: F811
    """A CI cache with two entries used by chapter "intro", packed into the served folder; then an
    empty reader's cache pointed at it."""
    site, base = server
    _, mod = toypkg
    ci = tmp_path / "ci-cache"
    monkeypatch.setenv(runcache.CACHE_ENV, str(ci))
    monkeypatch.delenv(runcache.REMOTE_ENV, raising=False)
    monkeypatch.delenv(runcache.RERUN_ENV, raising=False)
    runcache.set_chapter("intro")
    for lr in (1.0, 2.0):
        runcache.cached("toy", {"lr": lr}, mod.train, {"lr": lr})
    runcache.set_chapter(None)
    index = remote.pack(ci, {"intro": runcache.chapter_entries("intro", ci)}, site / "runcache", "abc1234")
    reader = tmp_path / "reader-cache"
    monkeypatch.setenv(runcache.CACHE_ENV, str(reader))
    monkeypatch.setenv(runcache.REMOTE_ENV, base)
    remote._indexes.clear()
    mod.CALLS.clear()
    yield site / "runcache", index, reader, mod
    remote._indexes.clear()


def _entries(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors")) \
        if folder.exists() else []


def test_an_empty_cache_fills_from_the_published_one(published):
    folder, index, reader, mod = published
    out = runcache.cached("toy", {"lr": 2.0}, mod.train, {"lr": 2.0})
    assert torch.equal(out["w"], torch.full((2,), 2.0)) and mod.CALLS == []
    # the whole chapter's archive came with it: the other entry is a hit too
    runcache.cached("toy", {"lr": 1.0}, mod.train, {"lr": 1.0})
    assert mod.CALLS == [] and _entries(reader) == sorted(index["entries"])
    assert index["archives"]["intro"]["file"] == "intro-abc1234.tar.gz"


def test_an_entry_the_published_cache_lacks_is_computed(published):
    _, _, _, mod = published
    runcache.cached("toy", {"lr": 3.0}, mod.train, {"lr": 3.0})
    assert mod.CALLS == [{"lr": 3.0}]


def test_off_means_off(published, monkeypatch):
    _, _, reader, mod = published
    monkeypatch.setenv(runcache.REMOTE_ENV, "off")
    runcache.cached("toy", {"lr": 1.0}, mod.train, {"lr": 1.0})
    assert mod.CALLS == [{"lr": 1.0}] and len(_entries(reader)) == 1


def test_rerun_still_retrains(published, monkeypatch):
    _, _, _, mod = published
    monkeypatch.setenv(runcache.RERUN_ENV, "toy")
    runcache.cached("toy", {"lr": 1.0}, mod.train, {"lr": 1.0})
    assert mod.CALLS == [{"lr": 1.0}]


def test_an_unreachable_published_cache_warns_once_and_computes(published, monkeypatch):
    _, _, _, mod = published
    monkeypatch.setenv(runcache.REMOTE_ENV, "http://127.0.0.1:9/runcache/")  # nothing listens
    with pytest.warns(UserWarning, match="cannot be read.*computed here") as caught:
        runcache.cached("toy", {"lr": 1.0}, mod.train, {"lr": 1.0})
        runcache.cached("toy", {"lr": 2.0}, mod.train, {"lr": 2.0})
    assert len(caught) == 1 and len(mod.CALLS) == 2


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_a_damaged_archive_names_the_file_and_the_sum_and_writes_nothing(published, damage):
    folder, index, reader, mod = published
    info = index["archives"]["intro"]
    path = folder / info["file"]
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(runcache.RemoteCacheError) as err:
        runcache.cached("toy", {"lr": 1.0}, mod.train, {"lr": 1.0})
    assert info["file"] in str(err.value) and info["sha256"] in str(err.value)
    assert "nothing was written" in str(err.value)
    assert _entries(reader) == [] and mod.CALLS == []


def test_a_malicious_entry_with_consistent_sums_is_refused_unexecuted(published, tmp_path):
    """Even a publisher who controls the index cannot make a reader's cache run code."""
    folder, index, reader, mod = published
    marker = tmp_path / "pwned"
    rel = sorted(index["entries"])[0]
    evil = tmp_path / "evil" / rel
    evil.parent.mkdir(parents=True)
    evil.write_bytes(pickle.dumps(_Payload(str(marker))))
    info = index["archives"]["intro"]
    with tarfile.open(folder / info["file"], "w:gz") as tar:
        tar.add(evil, arcname=rel)
    index["entries"] = {rel: {"sha256": remote.sha256_file(evil), "archives": ["intro"]}}
    info["sha256"] = remote.sha256_file(folder / info["file"])
    (folder / remote.INDEX).write_text(json.dumps(index))
    with pytest.raises(runcache.EntryError, match="unreadable"):
        runcache.cached(*_args_for(rel, mod))
    assert not marker.exists() and _entries(reader) == [] and mod.CALLS == []


def _args_for(rel, mod):
    for lr in (1.0, 2.0):
        if runcache.entry_path("toy", {"lr": lr}, mod.train).name == rel.split("/")[1]:
            return "toy", {"lr": lr}, mod.train, {"lr": lr}
    raise AssertionError(rel)


def test_an_index_that_names_paths_outside_the_cache_is_refused(published, tmp_path):
    folder, index, reader, mod = published
    rel = sorted(index["entries"])[0]
    index["entries"]["../../escape/" + rel.split("/")[1]] = dict(index["entries"][rel])
    (folder / remote.INDEX).write_text(json.dumps(index))
    with pytest.raises(runcache.RemoteCacheError, match="unsafe"):
        runcache.cached(*_args_for(rel, mod))
    assert not (tmp_path / "escape").exists() and _entries(reader) == []


def test_pack_skips_entries_that_are_gone_and_refuses_unreadable_ones(tmp_path, published):
    folder, index, reader, mod = published
    ci = tmp_path / "ci-cache"
    rels = sorted(index["entries"])
    out = remote.pack(ci, {"intro": rels + ["toy/" + "0" * 20 + ".safetensors"]}, tmp_path / "o", "r")
    assert sorted(out["entries"]) == rels
    (ci / rels[0]).write_bytes(b"junk")
    with pytest.raises(runcache.EntryError):
        remote.pack(ci, {"intro": rels}, tmp_path / "o2", "r")
    shutil.rmtree(tmp_path / "o")
